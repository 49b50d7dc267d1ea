"""`HookedCLIP`: the hooked text tower + the image tower (hooked where it is a ViT) + the logit scale.

Its loaders are thin: a loader (:mod:`hooked_clip.loaders`) reads a checkpoint into configs and state dicts,
and :meth:`HookedCLIP.from_checkpoint` builds the towers from them."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint

from hooked_clip import names
from hooked_clip.config import resolve_dtype
from hooked_clip.devices import resolve_device
from hooked_clip.fingerprint import Fingerprint, compute_fingerprint, fingerprint
from hooked_clip.loaders.checkpoint import Checkpoint, ReferenceVision, VisionCheckpoint
from hooked_clip.loaders.convert import load_converted
from hooked_clip.loaders.open_clip import read_open_clip
from hooked_clip.loaders.transformers import load_hf_pretrained, read_hf
from hooked_clip.similarity import logit_parameters, paired_similarity, similarity
from hooked_clip.text.config import CLIPTextConfig
from hooked_clip.text.tower import HookedCLIPText
from hooked_clip.tower import FORWARD_OPTIONS, pop_forward_options
from hooked_clip.tokenizers.base import Text
from hooked_clip.vision.reference import ReferenceVisionTower
from hooked_clip.vision.tower import HookedCLIPVision
from hooked_clip.weights import TOWER_WEIGHTS
from hooked_clip.weight_processing import process_weights


class HookedCLIP(nn.Module):
    """A CLIP model whose towers are hooked.

    - ``text``: :class:`HookedCLIPText` (a TransformerLens ``HookedRootModule``);
    - ``vision``: :class:`HookedCLIPVision` where the checkpoint's image tower is a ViT (transformers
      CLIP/SigLIP, open_clip ``VisionTransformer``); else :class:`ReferenceVisionTower` wrapping the reference
      image tower (ResNet, timm), which encodes images but refuses hooks naming the reason; ``None`` for a
      text-only checkpoint;
    - ``logit_scale``: stored in log space as in both references; similarity = ``exp(logit_scale) * cos``
      (+ ``logit_bias`` for checkpoints that have one).

    ``run_with_hooks``, ``run_with_cache``, ``hooks`` and ``to_tokens`` act on the text tower, as TL
    users expect, unless given images (a second positional argument that is not a ``return_type`` string,
    or ``images=``): then they run both towers and return the similarity [n_text, n_image]; hook names are
    then ``text.<name>`` / ``vision.<name>`` plus ``hook_text_embed(_normalized)`` and
    ``hook_image_embed(_normalized)`` at the top (see :mod:`hooked_clip.names`); ``hook_dict`` and
    ``mod_dict`` list them. In such a run every name must name its tower: an unprefixed name, an unknown one,
    an opt-in hook whose flag is off or a listed hook that did not fire is an error naming the fix. Hook lists
    that use those names work in ``hooks()`` too, so ``encode_image`` and ``forward`` see them.
    """

    def __init__(
        self,
        text: HookedCLIPText,
        vision: Union[HookedCLIPVision, ReferenceVisionTower, None] = None,
        logit_scale: Optional[float] = None,
        logit_bias: Optional[float] = None,
    ):
        super().__init__()
        self.text = text
        self.vision = vision
        device = text.W_E.device
        self.logit_scale = None if logit_scale is None else nn.Parameter(torch.tensor(float(logit_scale), device=device))
        self.logit_bias = None if logit_bias is None else nn.Parameter(torch.tensor(float(logit_bias), device=device))
        self.eval()

    def __getattr__(self, name: str):
        """nn.Module's lookup; a TransformerLens weight accessor (``W_Q``, ``OV``, ``blocks``, ...) is an error
        naming the tower to read it from: the two towers have different weights, and guessing one would hand
        an image-side analysis the text tower's (an ``AttributeError``, so ``hasattr`` stays False)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in TOWER_WEIGHTS:
                raise
        patches = " (the image tower embeds patches: model.vision.embed.W_patch)" if name == "W_E" else ""
        raise AttributeError(f"HookedCLIP has two towers with their own weights: use model.text.{name} or "
                             f"model.vision.{name}{patches}.") from None

    # ----------------------------------------------------------------------------- text-tower delegates
    @property
    def cfg(self) -> CLIPTextConfig:
        return self.text.cfg

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def to_tokens(self, text: Text, **kwargs) -> Int[Tensor, "batch pos"]:
        return self.text.to_tokens(text, **kwargs)

    def to_str_tokens(self, text, **kwargs) -> list[str]:
        return self.text.to_str_tokens(text, **kwargs)

    def pool_positions(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch"]:
        return self.text.pool_positions(tokens)

    def run_with_hooks(self, *args, images: Any = None, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **kwargs):
        """The text tower's ``run_with_hooks``; with images, both towers (returns the similarity)."""
        args, images = _split_images(args, images)
        if images is None and not names.names_both_towers([*fwd_hooks, *bwd_hooks]):
            return self.text.run_with_hooks(*args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks,
                                            reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts, **kwargs)
        with self._both_hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            if images is None:
                if any(isinstance(n, str) and names.own_name(n)[0] == "vision" for n, _ in [*fwd_hooks, *bwd_hooks]):
                    raise ValueError("vision hooks need images: pass them as the second argument or images=...")
                return self.text(*args, **kwargs)
            return self._both(args, images, kwargs)

    def run_with_cache(self, *args, images: Any = None, names_filter=None, **kwargs):
        """The text tower's ``run_with_cache``; with images, both towers: (similarity [n_text, n_image], one
        ``ActivationCache`` with ``text.``/``vision.`` names and the top-level embedding names). Listed names
        are checked as a tower checks its own: they must exist, be able to fire, and fire."""
        args, images = _split_images(args, images)
        if images is None:
            return self.text.run_with_cache(*args, names_filter=names_filter, **kwargs)
        towers = {"text": self.text, "vision": self._hooked_vision()}
        keep, filters, listed = names.cache_filters(names_filter)
        for name, tower in towers.items() if listed is not None else ():
            tower.check_hook_names(listed[name])
        caches: dict[str, dict] = {}
        with ExitStack() as stack:
            for name, tower in towers.items():
                caches[name] = {}
                stack.enter_context(tower.hooks(fwd_hooks=[(filters[name], _saver(caches[name]))]))
            out = self._both(args, images, kwargs)
        for name, tower in towers.items() if listed is not None else ():
            tower.check_fired(listed[name], caches[name], kwargs)
        return out, ActivationCache(names.merge_caches(keep, caches), self)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point of both towers by its name in a run over both towers (``text.blocks.0.hook_resid_pre``,
        ``vision.hook_pooled``, ...), plus the top-level embedding names."""
        out = {}
        for tower_name, tower in self._hooked_towers().items():
            out.update({names.prefixed(tower_name, k): v for k, v in tower.hook_dict.items()})
        for alias, (tower_name, own) in names.ALIASES.items():
            if names.prefixed(tower_name, own) in out:
                out[alias] = out[names.prefixed(tower_name, own)]
        return out

    @property
    def mod_dict(self) -> dict[str, nn.Module]:
        """Every module of both hooked towers by its prefixed name (TransformerLens's ``mod_dict``)."""
        return {names.prefixed(t, k): v for t, tower in self._hooked_towers().items() for k, v in tower.mod_dict.items()}

    def _hooked_towers(self) -> dict:
        hooked = {"text": self.text}
        if isinstance(self.vision, HookedCLIPVision):
            hooked["vision"] = self.vision
        return hooked

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Context manager attaching hooks (TransformerLens's ``hooks``); two-tower names are routed to
        their tower."""
        if not names.names_both_towers([*fwd_hooks, *bwd_hooks]):
            return self.text.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)
        return self._both_hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    @contextmanager
    def _both_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
        fwd, bwd = names.split_hooks(fwd_hooks), names.split_hooks(bwd_hooks)
        with ExitStack() as stack:
            for name, tower in (("text", self.text), ("vision", self.vision)):
                if fwd[name] or bwd[name]:
                    tower = self._hooked_vision() if name == "vision" else tower
                    stack.enter_context(tower.hooks(fwd[name], bwd[name], reset_hooks_end, clear_contexts))
            yield self

    def set_options(self, **options) -> "HookedCLIP":
        """Set forward options (``use_attn_result``, ``use_split_qkv_input``, ``use_fused_attn``) on every hooked
        tower at once, as TransformerLens's ``set_use_attn_result``; an option a tower lacks is an error."""
        bad = sorted(set(options) - set(FORWARD_OPTIONS))
        if bad:
            raise ValueError(f"set_options sets only {FORWARD_OPTIONS}, not {bad}.")
        for tower in self._hooked_towers().values():
            for key, value in options.items():
                if not isinstance(value, bool):
                    raise TypeError(f"{key} must be True or False, got {value!r}.")
                setattr(tower.cfg, key, value)
        return self

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """TransformerLens's name: ``hook_result`` (per-head outputs) fires on both towers."""
        self.set_options(use_attn_result=use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """TransformerLens's name: per-head ``hook_q_input``/``hook_k_input``/``hook_v_input`` on both towers."""
        self.set_options(use_split_qkv_input=use_split_qkv_input)

    def reset_hooks(self, *args, **kwargs):
        if isinstance(self.vision, HookedCLIPVision):
            self.vision.reset_hooks(*args, **kwargs)
        return self.text.reset_hooks(*args, **kwargs)

    def _hooked_vision(self) -> HookedCLIPVision:
        if self.vision is None:
            raise ValueError("This model has no image tower (text-only checkpoint); there is nothing to hook or run.")
        if not isinstance(self.vision, HookedCLIPVision):
            raise self.vision.not_hooked_error()
        return self.vision

    def _both(self, args: tuple, images: Any, text_kwargs: dict) -> Float[Tensor, "n_text n_image"]:
        if len(args) != 1:
            raise TypeError(f"a run over both towers takes (texts, images), got {len(args) + 1} positional arguments.")
        return self.similarity(self.encode_text(args[0], **text_kwargs), self.encode_image(images))

    # ------------------------------------------------------------------------------------------ encode
    def encode_text(
        self, text: Union[Text, Int[Tensor, "batch pos"]], normalize: bool = True, *, truncate: bool = False, **kwargs
    ) -> Float[Tensor, "batch d_proj"]:
        """Text embeddings [batch, d_proj] (unit norm if ``normalize``) through the hooked tower: hooks
        attached with ``hooks()`` act here too. ``truncate``: texts over the context length are cut as the
        model's reference tokenizer cuts them (otherwise they are an error)."""
        if not isinstance(text, Tensor):
            text = self.to_tokens(text, truncate=truncate)
        return self.text(text, return_type="normalized" if normalize else "embed", **kwargs)

    def encode_image(self, images: Any, normalize: bool = True) -> Float[Tensor, "batch d_proj"]:
        """Image embeddings [batch, d_proj] from PIL images (preprocessed as the reference does) or an
        already preprocessed pixel tensor [batch, 3, H, W]."""
        if self.vision is None:
            raise ValueError(
                "This model has no image tower (it was loaded from a text-only checkpoint); load a full "
                "CLIP checkpoint (transformers CLIPModel or an open_clip model) to encode images."
            )
        if isinstance(self.vision, HookedCLIPVision):
            return self.vision.encode(images, normalize=normalize)
        emb = self.vision.encode(images)
        return F.normalize(emb, dim=-1) if normalize else emb

    def similarity(
        self, text_embeds: Float[Tensor, "n_text d_proj"], image_embeds: Float[Tensor, "n_image d_proj"]
    ) -> Float[Tensor, "n_text n_image"]:
        """``exp(logit_scale) * cos(text, image)`` (+ ``logit_bias`` if the checkpoint has one), in logit
        units (100 x cosine for OpenAI CLIP), every text with every image. Inputs need not be normalised."""
        return similarity(text_embeds, image_embeds, *logit_parameters(self))

    def paired_similarity(
        self, text_embeds: Float[Tensor, "... batch d_proj"], image_embeds: Float[Tensor, "batch d_proj"]
    ) -> Float[Tensor, "... batch"]:
        """As :meth:`similarity`, text b with image b only (broadcast over leading text dimensions)."""
        return paired_similarity(text_embeds, image_embeds, *logit_parameters(self))

    def forward(self, text, images: Any = None) -> Tensor:
        """Similarity of every text with every image [n_text, n_image]; without images, the texts' normalised
        embeddings [n_text, d_proj] (``model(texts)`` runs the text tower, as ``run_with_cache(texts)`` does)."""
        if images is None:
            return self.encode_text(text)
        return self.similarity(self.encode_text(text), self.encode_image(images))

    @property
    def fingerprint(self) -> Fingerprint:
        """What this model is, whatever its file format or name: :func:`hooked_clip.fingerprint.fingerprint`."""
        return fingerprint(self)

    # ----------------------------------------------------------------------------------------- loaders
    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, fold_ln: bool = False, center_writing_weights: bool = False,
                        fold_value_biases: bool = False) -> "HookedCLIP":
        """Build the towers from what a loader read (:class:`~hooked_clip.loaders.checkpoint.Checkpoint`): the
        one place a loaded checkpoint becomes a model. ``fold_ln``, ``center_writing_weights`` and
        ``fold_value_biases`` (every loader takes them; default off, so every hook holds what HF/open_clip
        compute) apply :mod:`hooked_clip.weight_processing` to the text tower."""
        text = HookedCLIPText(checkpoint.text.cfg, tokenizer=checkpoint.text.tokenizer)
        load_converted(text, checkpoint.text.state_dict)
        vision = build_vision(checkpoint.vision, text.cfg.device, text.cfg.dtype)
        model = cls(text, vision, checkpoint.logit_scale, checkpoint.logit_bias)
        if fold_ln or center_writing_weights or fold_value_biases:  # the weights as loaded name the model
            model._fingerprint = compute_fingerprint(model)
        process_weights(text, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases)
        return model

    @classmethod
    def from_hf(cls, hf_model: nn.Module, device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                image_processor: Any = None, *, tokenizer: Any = None, fold_ln: bool = False,
                center_writing_weights: bool = False, fold_value_biases: bool = False,
                **cfg_overrides) -> "HookedCLIP":
        """From an in-memory transformers model of a family in the table (:mod:`hooked_clip.loaders.families`:
        ``CLIPModel``, ``CLIPTextModelWithProjection``, ``CLIPTextModel`` (no projection: ``d_proj=None``),
        SigLIP/SigLIP2, MetaCLIP 2, OWL-ViT/OWLv2, X-CLIP, CLIPSeg models and text models; ChineseCLIP, AltCLIP
        and ALIGN (BERT/RoBERTa post-LN towers; text only: their image towers are not reimplemented)).
        ``tokenizer``: the checkpoint's tokenizer: a :class:`~hooked_clip.tokenizers.TextTokenizer`, or a
        directory holding the transformers tokenizer files (see :func:`hooked_clip.tokenizers.resolve_tokenizer`);
        default CLIP's BPE for a CLIP-vocabulary model, else a placeholder that asks for it.
        ``cfg_overrides`` set ``CLIPTextConfig`` fields such as ``trim_after_pool``; the forward options
        (``use_attn_result``, ``use_split_qkv_input``, ``use_fused_attn``) are set on both towers, as
        :meth:`set_options` sets them (every loader).
        ``device=None`` (every loader): CUDA when available, else the CPU, as TransformerLens
        (:func:`hooked_clip.devices.resolve_device`); ``model.to(...)`` later keeps each tower's
        ``cfg.device`` in step. Weight processing: :meth:`from_checkpoint`."""
        options = pop_forward_options(cfg_overrides)
        checkpoint = read_hf(hf_model, image_processor, tokenizer, device=resolve_device(device),
                             dtype=resolve_dtype(dtype), **cfg_overrides)
        return cls.from_checkpoint(checkpoint, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   fold_value_biases=fold_value_biases).set_options(**options)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device: Optional[str] = None,
                        dtype: torch.dtype = torch.float32, **kwargs) -> "HookedCLIP":
        """From a local directory written by transformers' ``save_pretrained`` or an HF hub id (e.g.
        ``"openai/clip-vit-base-patch32"``), of any class :meth:`from_hf` takes.

        Loading is strict: weights missing from the checkpoint, weights it has that the model does not,
        or other shapes raise :class:`CheckpointMismatchError` naming them (transformers would fill the
        gaps with random values). The model carries the tokenizer saved beside the weights
        (:func:`hooked_clip.tokenizers.tokenizer_from_hf_dir`). A hub id is read from the local cache
        when it is there; with no network (or ``HF_HUB_OFFLINE=1``) and no cached copy it fails at once
        with :class:`WeightsUnavailableError`. A path that does not exist is a ``FileNotFoundError``."""
        hf_model, processor, tokenizer_dir = load_hf_pretrained(name_or_path)
        kwargs.setdefault("tokenizer", tokenizer_dir)  # the folder: its tokenizer files are read once cfg is known
        return cls.from_hf(hf_model, device=device, dtype=dtype, image_processor=processor, **kwargs)

    @classmethod
    def from_open_clip(cls, model: Union[str, nn.Module], pretrained: Optional[str] = None,
                       device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                       cache_dir: Optional[str] = None, *, tokenizer: Any = None, fold_ln: bool = False,
                       center_writing_weights: bool = False, fold_value_biases: bool = False,
                       **cfg_overrides) -> "HookedCLIP":
        """From an open_clip model object, or a model name (``"ViT-B-32"``) with ``pretrained`` = a tag
        (``"openai"``, ``"laion2b_s34b_b79k"``, ...) or the path of a local checkpoint file (a state dict,
        ``.pt``/``.bin``/``.safetensors``). ``pretrained=None`` gives open_clip's random init.

        The model carries the tokenizer ``open_clip.get_tokenizer(name)`` builds (CLIP's BPE, or the HF
        tokenizer the config names: SigLIP, CLIPA, worldwide towers), read from a local directory given as
        ``tokenizer=DIR`` or from the local HF cache; where it would need a download the model still runs
        on ids and ``to_tokens`` raises an error naming the files to supply (see
        :func:`hooked_clip.tokenizers.tokenizer_for_open_clip`)."""
        options = pop_forward_options(cfg_overrides)
        checkpoint = read_open_clip(model, pretrained, cache_dir, tokenizer, device=resolve_device(device),
                                    dtype=resolve_dtype(dtype), **cfg_overrides)
        return cls.from_checkpoint(checkpoint, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   fold_value_biases=fold_value_biases).set_options(**options)


# ---------------------------------------------------------------------------------------------- helpers
def build_vision(vision: Union[VisionCheckpoint, ReferenceVision, None], device: str,
                 dtype: torch.dtype) -> Union[HookedCLIPVision, ReferenceVisionTower, None]:
    """The image tower of a read checkpoint: hooked where it is reimplemented, else the reference module."""
    if vision is None:
        return None
    if isinstance(vision, ReferenceVision):
        tower = ReferenceVisionTower(vision.encoder, vision.preprocess, vision.image_size,
                                     not_hooked_because=vision.reason, preprocessing=vision.preprocessing)
        return tower.to(device=device, dtype=dtype)
    return HookedCLIPVision.from_checkpoint(vision)


def _split_images(args: tuple, images: Any) -> tuple[tuple, Any]:
    """(text-tower args, images or None): a second positional argument that is not a ``return_type``
    (a string or None) is the images of a run over both towers."""
    if images is None and len(args) >= 2 and args[1] is not None and not isinstance(args[1], str):
        return (args[0], *args[2:]), args[1]
    return args, images


def _saver(store: dict):
    def save(act: Tensor, hook) -> None:
        store[hook.name] = act.detach()

    return save
