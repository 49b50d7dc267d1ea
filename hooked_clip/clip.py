"""`HookedCLIP`: the hooked text tower + the image tower (hooked where it is a ViT) + the logit scale, and its
loaders."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip import tower_names
from hooked_clip.config import CLIPTextConfig, resolve_dtype
from hooked_clip.devices import resolve_device
from hooked_clip.files import check_checkpoint_dir, read_state_dict
from hooked_clip.hub import hub_reachable, unavailable
from hooked_clip.loading import (
    CheckpointMismatchError,
    mismatch_summary,
    config_from_hf,
    config_from_hf_post_ln,
    config_from_open_clip_hf,
    open_clip_hf_text_state_dict,
    hf_post_ln_source,
    hf_post_ln_state_dict,
    config_from_open_clip,
    hf_text_model_state_dict,
    hf_text_state_dict,
    load_converted,
    open_clip_text_state_dict,
)
from hooked_clip.processing import process_weights
from hooked_clip.similarity import logit_parameters, paired_similarity, similarity
from hooked_clip.text import HookedCLIPText
from hooked_clip.tokenizer import Text
from hooked_clip.vision import VisionTower
from hooked_clip.vision_loading import image_tower_from_hf, image_tower_from_open_clip
from hooked_clip.vision_tower import HookedCLIPVision


class HookedCLIP(nn.Module):
    """A CLIP model whose towers are hooked.

    - ``text``: :class:`HookedCLIPText` (a TransformerLens ``HookedRootModule``);
    - ``vision``: :class:`HookedCLIPVision` where the checkpoint's image tower is a ViT (transformers
      CLIP/SigLIP, open_clip ``VisionTransformer``); else :class:`VisionTower` wrapping the reference image
      tower (ResNet, timm), which encodes images but refuses hooks naming the reason; ``None`` for a
      text-only checkpoint;
    - ``logit_scale``: stored in log space as in both references; similarity = ``exp(logit_scale) * cos``
      (+ ``logit_bias`` for checkpoints that have one).

    ``run_with_hooks``, ``run_with_cache``, ``hooks`` and ``to_tokens`` act on the text tower, as TL
    users expect, unless given images (a second positional argument that is not a ``return_type`` string,
    or ``images=``): then they run both towers and return the similarity [n_text, n_image]; hook names are
    then ``text.<name>`` / ``vision.<name>`` plus ``hook_text_embed(_normalized)`` and
    ``hook_image_embed(_normalized)`` at the top (see :mod:`hooked_clip.tower_names`). Hook lists that use
    those names work in ``hooks()`` too, so ``encode_image`` and ``forward`` see them.
    """

    def __init__(
        self,
        text: HookedCLIPText,
        vision: Union[HookedCLIPVision, VisionTower, None] = None,
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
        if images is None and not tower_names.names_both_towers([*fwd_hooks, *bwd_hooks]):
            return self.text.run_with_hooks(*args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks,
                                            reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts, **kwargs)
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            if images is None:
                if any(isinstance(n, str) and tower_names.tower_of(n) == "vision" for n, _ in [*fwd_hooks, *bwd_hooks]):
                    raise ValueError("vision hooks need images: pass them as the second argument or images=...")
                return self.text(*args, **kwargs)
            return self._both(args, images, kwargs)

    def run_with_cache(self, *args, images: Any = None, names_filter=None, **kwargs):
        """The text tower's ``run_with_cache``; with images, both towers: (similarity [n_text, n_image], one
        ``ActivationCache`` with ``text.``/``vision.`` names and the top-level embedding names)."""
        args, images = _split_images(args, images)
        if images is None:
            return self.text.run_with_cache(*args, names_filter=names_filter, **kwargs)
        from transformer_lens import ActivationCache

        towers = {"text": self.text, "vision": self._hooked_vision()}
        keep, filters = tower_names.cache_filters(names_filter, towers)
        caches = {}
        with ExitStack() as stack:
            for name, tower in towers.items():
                caches[name] = {}
                stack.enter_context(tower.hooks(fwd_hooks=[(filters[name], _saver(caches[name]))]))
            out = self._both(args, images, kwargs)
        return out, ActivationCache(tower_names.merge_caches(keep, caches), self)

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Context manager attaching hooks (TransformerLens's ``hooks``); two-tower names are routed to
        their tower."""
        if not tower_names.names_both_towers([*fwd_hooks, *bwd_hooks]):
            return self.text.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)
        return self._both_hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    @contextmanager
    def _both_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
        fwd, bwd = tower_names.split_hooks(fwd_hooks), tower_names.split_hooks(bwd_hooks)
        with ExitStack() as stack:
            for name, tower in (("text", self.text), ("vision", self.vision)):
                if fwd[name] or bwd[name]:
                    tower = self._hooked_vision() if name == "vision" else tower
                    stack.enter_context(tower.hooks(fwd[name], bwd[name], reset_hooks_end, clear_contexts))
            yield self

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
        self, text: Union[Text, Int[Tensor, "batch pos"]], normalize: bool = True, **kwargs
    ) -> Float[Tensor, "batch d_proj"]:
        """Text embeddings [batch, d_proj] (unit norm if ``normalize``) through the hooked tower: hooks
        attached with ``hooks()`` act here too."""
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

    def forward(self, text, images) -> Float[Tensor, "n_text n_image"]:
        """Similarity of every text with every image."""
        return self.similarity(self.encode_text(text), self.encode_image(images))

    # ----------------------------------------------------------------------------------------- loaders
    @classmethod
    def from_hf(cls, hf_model: nn.Module, device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                image_processor: Any = None, *, tokenizer: Any = None, fold_ln: bool = False,
                center_writing_weights: bool = False, fold_value_biases: bool = False,
                **cfg_overrides) -> "HookedCLIP":
        """From an in-memory transformers model of a CLIP family (:data:`hooked_clip.families.HF_CLASSES`:
        ``CLIPModel``, ``CLIPTextModelWithProjection``, ``CLIPTextModel`` (no projection: ``d_proj=None``),
        SigLIP/SigLIP2, MetaCLIP 2, OWL-ViT/OWLv2, X-CLIP, CLIPSeg models and text models; ChineseCLIP and
        AltCLIP (BERT/RoBERTa post-LN towers; text only: their image towers are not reimplemented)).
        ``tokenizer``: the checkpoint's tokenizer: a :class:`~hooked_clip.tokenizer.TextTokenizer`, or a
        directory holding the transformers tokenizer files (see :func:`hooked_clip.families.resolve_tokenizer`);
        default CLIP's BPE for a CLIP-vocabulary model, else a placeholder that asks for it.
        ``cfg_overrides`` set ``CLIPTextConfig`` fields such as ``trim_after_pool`` or ``use_attn_result``.
        ``fold_ln``, ``center_writing_weights`` and ``fold_value_biases`` (all loaders take them; default
        off, so every hook holds what HF/open_clip compute) apply :mod:`hooked_clip.processing`.
        ``device=None`` (every loader): CUDA when available, else the CPU, as TransformerLens
        (:func:`hooked_clip.devices.resolve_device`); ``model.to(...)`` later keeps each tower's
        ``cfg.device`` in step."""
        from hooked_clip.families import hf_family, hf_text_parts, resolve_tokenizer

        dtype = resolve_dtype(dtype)
        family = hf_family(hf_model)
        if family.post_ln:  # BERT/RoBERTa towers: ChineseCLIP, AltCLIP
            text_cfg, source = hf_post_ln_source(hf_model)
            cfg = config_from_hf_post_ln(text_cfg, source, family.name, device=resolve_device(device), dtype=dtype,
                                         **cfg_overrides)
            converted = lambda: hf_post_ln_state_dict(source, cfg)  # noqa: E731
        else:
            text_cfg, text_module, proj = hf_text_parts(hf_model)
            cfg = config_from_hf(text_cfg, None if proj is None else proj.out_features, family.name,
                                 proj_bias=proj is not None and proj.bias is not None,
                                 device=resolve_device(device), dtype=dtype, **cfg_overrides)
            converted = lambda: hf_text_state_dict(hf_text_model_state_dict(text_module, proj), cfg)  # noqa: E731
        text = HookedCLIPText(cfg, tokenizer=resolve_tokenizer(tokenizer, cfg))
        load_converted(text, converted())
        vision = None
        if family.vision and hasattr(hf_model, "vision_model"):
            vision = image_tower_from_hf(hf_model, image_processor, cfg.device, dtype)
        scale, bias = (getattr(hf_model, k, None) for k in ("logit_scale", "logit_bias"))
        process_weights(text, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases)
        return cls(text, vision, None if scale is None else float(scale.detach()),
                   None if bias is None else float(bias.detach().reshape(())))

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device: Optional[str] = None,
                        dtype: torch.dtype = torch.float32, **kwargs) -> "HookedCLIP":
        """From a local directory written by transformers' ``save_pretrained`` or an HF hub id (e.g.
        ``"openai/clip-vit-base-patch32"``), of any class :meth:`from_hf` takes.

        Loading is strict: weights missing from the checkpoint, weights it has that the model does not,
        or other shapes raise :class:`CheckpointMismatchError` naming them (transformers would fill the
        gaps with random values). The model carries the tokenizer saved beside the weights
        (:func:`hooked_clip.hf_tokenizer.tokenizer_from_hf_dir`). A hub id is read from the local cache
        when it is there; with no network (or ``HF_HUB_OFFLINE=1``) and no cached copy it fails at once
        with :class:`WeightsUnavailableError`. A path that does not exist is a ``FileNotFoundError``."""
        path = Path(name_or_path)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{str(path)!r} is a file; from_pretrained takes a directory written by save_pretrained or a "
                "hub id. For an open_clip checkpoint file use HookedCLIP.from_open_clip(model_name, pretrained=file)."
            )
        if not path.exists() and not _looks_like_hub_id(name_or_path):
            raise FileNotFoundError(
                f"No such directory: {str(path)!r}. Pass a directory written by transformers' save_pretrained, "
                "or a Hugging Face hub id of the form 'org/name'."
            )
        if path.is_dir():
            check_checkpoint_dir(path)  # empty / damaged files named before transformers reads them
            hf_model, processor, tokenizer = _load_hf_dir(str(path), local_only=True)
        else:
            try:
                hf_model, processor, tokenizer = _load_hf_dir(str(name_or_path), local_only=True)
            except OSError:
                if not hub_reachable():
                    raise unavailable(
                        str(name_or_path),
                        "Download it where there is network (e.g. `CLIPModel.from_pretrained(id).save_pretrained(DIR)`"
                        " together with `CLIPProcessor.from_pretrained(id).save_pretrained(DIR)`), copy DIR here and "
                        f"call HookedCLIP.from_pretrained(DIR). (No local directory {str(name_or_path)!r} exists "
                        "either, if that is what you meant.)",
                    ) from None
                hf_model, processor, tokenizer = _load_hf_dir(str(name_or_path), local_only=False)
        kwargs.setdefault("tokenizer", tokenizer)  # the folder: its tokenizer files are read once cfg is known
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
        :func:`hooked_clip.hf_tokenizer.tokenizer_for_open_clip`)."""
        import open_clip

        dtype = resolve_dtype(dtype)
        if isinstance(model, nn.Module):
            oc_model, preprocess_cfg = model, open_clip.get_model_preprocess_cfg(model)
        elif isinstance(model, str):
            oc_model, preprocess_cfg = _open_clip_model(model, pretrained, cache_dir)
        else:
            raise TypeError(f"from_open_clip takes an open_clip model or a model name, got {type(model).__name__}.")
        hf_text = _is_open_clip_hf_text(oc_model)
        config_from = config_from_open_clip_hf if hf_text else config_from_open_clip
        cfg = config_from(oc_model.text if hf_text else oc_model, device=resolve_device(device), dtype=dtype, **cfg_overrides)
        from hooked_clip.families import resolve_tokenizer
        from hooked_clip.hf_tokenizer import tokenizer_for_open_clip

        if isinstance(model, str):
            tokenizer = tokenizer_for_open_clip(model, cfg.n_ctx, tokenizer, cache_dir)
        else:
            tokenizer = resolve_tokenizer(tokenizer, cfg)
        text = HookedCLIPText(cfg, tokenizer=tokenizer)
        converter = open_clip_hf_text_state_dict if hf_text else open_clip_text_state_dict
        load_converted(text, converter(oc_model.state_dict(), cfg))
        process_weights(text, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases)
        vision = image_tower_from_open_clip(oc_model, preprocess_cfg, cfg.device, dtype)
        bias = getattr(oc_model, "logit_bias", None)
        return cls(text, vision, float(oc_model.logit_scale.detach()),
                   None if bias is None else float(bias.detach()))


# ---------------------------------------------------------------------------------------------- helpers
def _is_open_clip_hf_text(oc_model: nn.Module) -> bool:
    """Whether an open_clip model's text tower is an ``HFTextEncoder`` (a transformers model, ``hf_model_name``)."""
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(oc_model, "text", None), HFTextEncoder)



def _hf_vision_tower(hf_model, image_processor):
    """The old name of :func:`~hooked_clip.vision_loading.image_tower_from_hf` (on the CPU in fp32; callers
    move it with ``.to(...)``), kept so that code written against it keeps working."""
    return image_tower_from_hf(hf_model, image_processor, "cpu", torch.float32)


def _split_images(args: tuple, images: Any) -> tuple[tuple, Any]:
    """(text-tower args, images or None): a second positional argument that is not a ``return_type``
    (a string or None) is the images of a run over both towers."""
    if images is None and len(args) >= 2 and args[1] is not None and not isinstance(args[1], str):
        return (args[0], *args[2:]), args[1]
    return args, images

def _looks_like_hub_id(name: Union[str, Path]) -> bool:
    """'org/name' whose 'org' is not a local folder (anything else that does not exist is a mistyped path)."""
    if isinstance(name, Path):
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.isdir(parts[0])


def _saver(store: dict):
    def save(act: Tensor, hook) -> None:
        store[hook.name] = act.detach()

    return save


def _load_hf_dir(name: str, local_only: bool):
    """(transformers model, image processor or None, local folder of its tokenizer) from a directory or hub id, loaded
    strictly: missing, unexpected or mis-shaped weights raise ``CheckpointMismatchError``."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    from hooked_clip.families import FAMILIES, HF_CLASSES

    config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    class_name = _hf_class_name(config, name)
    model, info = getattr(transformers, class_name).from_pretrained(  # mismatched shapes reported in info
        name, local_files_only=local_only, output_loading_info=True, ignore_mismatched_sizes=True)
    _check_loading_info(info, name, class_name)
    family = FAMILIES[HF_CLASSES[class_name]]
    processor = None
    if family.vision and hasattr(model, "vision_model"):
        try:
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only)
        except (OSError, ValueError):
            processor = None  # no preprocessor_config.json: fall back to the family's default preprocessing
    directory = name if os.path.isdir(name) else _hub_snapshot(name, local_only)
    return model.eval(), processor, Path(directory)


def _hf_class_name(config, name: str) -> str:
    """The transformers class a directory's config asks for (``architectures``), checked against the
    families hooked_clip reimplements."""
    from hooked_clip.families import HF_CLASSES, REFUSED_HF_CLASSES

    by_type = {"clip": "CLIPModel", "clip_text_model": "CLIPTextModelWithProjection", "siglip": "SiglipModel",
               "siglip_text_model": "SiglipTextModel", "siglip2": "Siglip2Model", "metaclip_2": "MetaClip2Model"}
    archs = list(getattr(config, "architectures", None) or [])
    class_name = archs[0] if archs else by_type.get(config.model_type, "")
    if class_name in HF_CLASSES:
        return class_name
    why = REFUSED_HF_CLASSES.get(class_name, "")
    raise CheckpointMismatchError(
        f"{name!r} ({class_name or 'no architectures listed'}) holds a {config.model_type!r} model; hooked_clip "
        f"loads CLIP-family checkpoints ({', '.join(HF_CLASSES)})" + (f". {class_name}: {why}." if why else ".")
    )


def _check_loading_info(info: dict, name: str, class_name: str) -> None:
    ignorable = ("position_ids",)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(ignorable)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith(ignorable)]
    mismatched = [f"{k[0]}: {tuple(k[1])} vs {tuple(k[2])}" if isinstance(k, tuple) else str(k)
                  for k in info.get("mismatched_keys", ())]
    summary = mismatch_summary(missing, unexpected, mismatched)
    if summary:
        raise CheckpointMismatchError(
            f"The weights in {name!r} do not match its config ({class_name}): " + summary
            + ". transformers would fill the missing ones with random values; hooked_clip refuses. Check that the "
            "weight files and config.json come from the same checkpoint."
        )


def _hub_snapshot(name: str, local_only: bool) -> str:
    """Local folder of a hub id's tokenizer and config files (from the cache, or downloaded)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(name, local_files_only=local_only, allow_patterns=["*.json", "*.txt", "*.model"])


def _open_clip_model(name: str, pretrained: Optional[str], cache_dir: Optional[str]):
    """An open_clip model built from its name, weights from a tag or a local file, checked strictly."""
    import open_clip

    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=4)
        raise ValueError(f"open_clip has no model {name!r}" + (f"; did you mean {close}?" if close else "."))
    pcfg: dict = {}
    if pretrained is None:
        path = None
    elif os.path.isfile(pretrained):
        path = pretrained
        twin = f"{name}-quickgelu"
        if twin in open_clip.list_models():  # a state dict does not record its activation function
            import warnings

            warnings.warn(
                f"{pretrained!r} is loaded as {name!r}, which uses GELU; a state-dict file does not record its "
                f"activation. If these are OpenAI-derived weights (QuickGELU, e.g. saved from pretrained='openai'), "
                f"load them as {twin!r}: the shapes match either way, so only the name tells them apart.",
                UserWarning, stacklevel=3)
    else:
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name!r}; tags: {tags}"
            )
        path = _resolve_open_clip_weights(name, pretrained, pcfg, cache_dir)
    hf_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_model_name")
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(pcfg.get("quick_gelu", False)))
    except OSError:
        if not hf_name:
            raise
        raise unavailable(  # open_clip builds the text tower from the transformers hub model of that name
            hf_name,
            f"open_clip builds {name!r}'s text tower from the transformers model {hf_name!r} (its config, and its "
            "weights unless pretrained_hf=False), which is not in the local HF cache. Fetch it where there is "
            f"network (`AutoModel.from_pretrained({hf_name!r})` fills the cache) and copy the cache here, or build "
            "the open_clip model yourself and pass the object: HookedCLIP.from_open_clip(model).") from None
    if path is not None:
        _load_open_clip_checkpoint(model, path, name)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if key in pcfg:
            preprocess_cfg[key] = pcfg[key]
    return model.eval(), preprocess_cfg


def _resolve_open_clip_weights(name: str, tag: str, pcfg: dict, cache_dir: Optional[str]) -> str:
    """Local path of a tagged open_clip checkpoint: from the HF cache if there, else downloaded if the
    Hub is reachable, else a clear error."""
    import open_clip

    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import hf_hub_download

        # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file
        repo, filename = hf_hub.rstrip("/"), None
        if not hf_hub.endswith("/"):
            repo, filename = os.path.split(hf_hub)
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fn in filenames:
            try:
                return hf_hub_download(repo, fn, cache_dir=cache_dir, local_files_only=True)
            except Exception:
                pass
    if not hub_reachable():
        raise unavailable(
            f"{name}/{tag}",
            "Download the checkpoint where there is network (e.g. `open_clip.create_model_and_transforms"
            f"('{name}', pretrained='{tag}')` then `torch.save(model.state_dict(), 'ckpt.pt')`), copy the file "
            f"here and call HookedCLIP.from_open_clip('{name}', pretrained='ckpt.pt').",
        )
    return open_clip.download_pretrained(pcfg, cache_dir=cache_dir)


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """The checkpoint's tensors, never by running code from it (see :mod:`hooked_clip.files`)."""
    return read_state_dict(path)


def _load_open_clip_checkpoint(model: nn.Module, path: str, name: str) -> None:
    sd = _read_state_dict(path)
    own = model.state_dict()
    ignorable = ("attn_mask", "position_ids")
    missing = [k for k in own if k not in sd and not k.endswith(ignorable)]
    unexpected = [k for k in sd if k not in own and not k.endswith(ignorable)]
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    summary = mismatch_summary(missing, unexpected, wrong)
    if summary:
        raise CheckpointMismatchError(
            f"Checkpoint {path!r} is not a {name!r} checkpoint: " + summary
            + ". Pass the open_clip model name the checkpoint was trained with."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
