"""`HookedCLIP`: the hooked text tower + a reference image tower + the logit scale, and its loaders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.config import CLIPTextConfig, resolve_dtype
from hooked_clip.files import check_checkpoint_dir, read_state_dict
from hooked_clip.hub import hub_reachable, unavailable
from hooked_clip.loading import (
    CheckpointMismatchError,
    _list,
    config_from_hf,
    config_from_open_clip,
    hf_text_state_dict,
    load_converted,
    open_clip_text_state_dict,
)
from hooked_clip.processing import process_weights
from hooked_clip.similarity import logit_parameters, paired_similarity, similarity
from hooked_clip.text import HookedCLIPText
from hooked_clip.tokenizer import Text
from hooked_clip.vision import HFVisionEncoder, VisionTower, stack_transform


class HookedCLIP(nn.Module):
    """A CLIP model whose text tower is hooked.

    - ``text``: :class:`HookedCLIPText` (a TransformerLens ``HookedRootModule``);
    - ``vision``: :class:`VisionTower` wrapping the reference image tower (HF or open_clip), or ``None``
      for a text-only checkpoint;
    - ``logit_scale``: stored in log space as in both references; similarity = ``exp(logit_scale) * cos``
      (+ ``logit_bias`` for checkpoints that have one).

    ``run_with_hooks``, ``run_with_cache``, ``hooks`` and ``to_tokens`` act on the text tower.
    """

    def __init__(
        self,
        text: HookedCLIPText,
        vision: Optional[VisionTower] = None,
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

    def run_with_hooks(self, *args, **kwargs):
        return self.text.run_with_hooks(*args, **kwargs)

    def run_with_cache(self, *args, **kwargs):
        return self.text.run_with_cache(*args, **kwargs)

    def hooks(self, *args, **kwargs):
        return self.text.hooks(*args, **kwargs)

    def reset_hooks(self, *args, **kwargs):
        return self.text.reset_hooks(*args, **kwargs)

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
                image_processor: Any = None, *, fold_ln: bool = False, center_writing_weights: bool = False,
                fold_value_biases: bool = False, **cfg_overrides) -> "HookedCLIP":
        """From an in-memory transformers ``CLIPModel`` (text + image tower) or
        ``CLIPTextModelWithProjection`` (text only). ``cfg_overrides`` set ``CLIPTextConfig`` fields such
        as ``trim_after_pool`` or ``use_attn_result``. ``fold_ln``, ``center_writing_weights`` and
        ``fold_value_biases`` (all loaders take them; default off, so every hook holds what HF/open_clip
        compute) apply :mod:`hooked_clip.processing`."""
        from transformers import CLIPModel, CLIPTextModelWithProjection

        dtype = resolve_dtype(dtype)
        if isinstance(hf_model, CLIPModel):
            text_cfg, proj_dim = hf_model.config.text_config, hf_model.config.projection_dim
        elif isinstance(hf_model, CLIPTextModelWithProjection):
            text_cfg, proj_dim = hf_model.config, hf_model.config.projection_dim
        else:
            raise TypeError(
                f"from_hf takes a transformers CLIPModel or CLIPTextModelWithProjection, got "
                f"{type(hf_model).__name__}."
            )
        cfg = config_from_hf(text_cfg, proj_dim, device=_device(device), dtype=dtype, **cfg_overrides)
        text = HookedCLIPText(cfg)
        load_converted(text, hf_text_state_dict(hf_model.state_dict(), cfg))
        vision, scale = None, None
        if isinstance(hf_model, CLIPModel):
            vision = _hf_vision_tower(hf_model, image_processor).to(device=cfg.device, dtype=dtype)
            scale = float(hf_model.logit_scale.detach())
        process_weights(text, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases)
        return cls(text, vision, scale)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device: Optional[str] = None,
                        dtype: torch.dtype = torch.float32, **cfg_overrides) -> "HookedCLIP":
        """From an HF hub id (e.g. ``"openai/clip-vit-base-patch32"``) or a local directory written by
        transformers' ``save_pretrained``. A hub id is read from the local cache when it is there; with
        no network (or ``HF_HUB_OFFLINE=1``) and no cached copy it fails at once with
        :class:`WeightsUnavailableError`."""
        path = Path(name_or_path)
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{str(path)!r} is a file; from_pretrained takes a directory written by save_pretrained or a "
                "hub id. For an open_clip checkpoint file use HookedCLIP.from_open_clip(model_name, pretrained=file)."
            )
        if path.is_dir():
            check_checkpoint_dir(path)  # empty / damaged files named before transformers reads them
            hf_model, processor = _load_hf_dir(str(path), local_only=True)
        else:
            try:
                hf_model, processor = _load_hf_dir(str(name_or_path), local_only=True)
            except OSError:
                if not hub_reachable():
                    raise unavailable(
                        str(name_or_path),
                        "Download it where there is network (e.g. `CLIPModel.from_pretrained(id).save_pretrained(DIR)`"
                        " together with `CLIPProcessor.from_pretrained(id).save_pretrained(DIR)`), copy DIR here and "
                        "call HookedCLIP.from_pretrained(DIR).",
                    ) from None
                hf_model, processor = _load_hf_dir(str(name_or_path), local_only=False)
        return cls.from_hf(hf_model, device=device, dtype=dtype, image_processor=processor, **cfg_overrides)

    @classmethod
    def from_open_clip(cls, model: Union[str, nn.Module], pretrained: Optional[str] = None,
                       device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                       cache_dir: Optional[str] = None, *, fold_ln: bool = False,
                       center_writing_weights: bool = False, fold_value_biases: bool = False,
                       **cfg_overrides) -> "HookedCLIP":
        """From an open_clip model object, or a model name (``"ViT-B-32"``) with ``pretrained`` = a tag
        (``"openai"``, ``"laion2b_s34b_b79k"``, ...) or the path of a local checkpoint file (a state dict,
        ``.pt``/``.bin``/``.safetensors``). ``pretrained=None`` gives open_clip's random init."""
        import open_clip

        dtype = resolve_dtype(dtype)
        if isinstance(model, nn.Module):
            oc_model, preprocess_cfg = model, open_clip.get_model_preprocess_cfg(model)
        elif isinstance(model, str):
            oc_model, preprocess_cfg = _open_clip_model(model, pretrained, cache_dir)
        else:
            raise TypeError(f"from_open_clip takes an open_clip model or a model name, got {type(model).__name__}.")
        cfg = config_from_open_clip(oc_model, device=_device(device), dtype=dtype, **cfg_overrides)
        text = HookedCLIPText(cfg)
        load_converted(text, open_clip_text_state_dict(oc_model.state_dict(), cfg))
        process_weights(text, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases)
        from open_clip.transform import PreprocessCfg, image_transform_v2

        transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
        size = preprocess_cfg.get("size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        vision = VisionTower(oc_model.visual, stack_transform(transform), image_size=size)
        vision = vision.to(device=cfg.device, dtype=dtype)
        bias = getattr(oc_model, "logit_bias", None)
        return cls(text, vision, float(oc_model.logit_scale.detach()),
                   None if bias is None else float(bias.detach()))


# ---------------------------------------------------------------------------------------------- helpers
def _device(device: Optional[str]) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _hf_vision_tower(hf_model, image_processor) -> VisionTower:
    from transformers import CLIPImageProcessor

    size = hf_model.config.vision_config.image_size
    if image_processor is None:  # OpenAI CLIP's preprocessing (resize shortest side, centre crop, normalise)
        image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def preprocess(images: list) -> Tensor:
        return image_processor(images=images, return_tensors="pt")["pixel_values"]

    return VisionTower(HFVisionEncoder(hf_model.vision_model, hf_model.visual_projection), preprocess, size)


def _load_hf_dir(name: str, local_only: bool):
    """(transformers model, image processor or None) from a directory or hub id."""
    from transformers import AutoConfig, CLIPImageProcessor, CLIPModel, CLIPTextModelWithProjection

    config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    classes = {"clip": CLIPModel, "clip_text_model": CLIPTextModelWithProjection}
    if config.model_type not in classes:
        raise CheckpointMismatchError(
            f"{name!r} holds a {config.model_type!r} model; hooked_clip loads CLIP checkpoints "
            "(model_type 'clip' or 'clip_text_model')."
        )
    model = classes[config.model_type].from_pretrained(name, local_files_only=local_only)
    processor = None
    if config.model_type == "clip":
        try:
            processor = CLIPImageProcessor.from_pretrained(name, local_files_only=local_only)
        except OSError:
            processor = None  # no preprocessor_config.json: fall back to OpenAI's preprocessing
    return model.eval(), processor


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
    else:
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name!r}; tags: {tags}"
            )
        path = _resolve_open_clip_weights(name, pretrained, pcfg, cache_dir)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(pcfg.get("quick_gelu", False)))
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
    if missing or unexpected or wrong:
        parts = [f"missing keys ({len(missing)}): {_list(missing)}"] if missing else []
        parts += [f"unexpected keys ({len(unexpected)}): {_list(unexpected)}"] if unexpected else []
        parts += [f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:6])}"] if wrong else []
        raise CheckpointMismatchError(
            f"Checkpoint {path!r} is not a {name!r} checkpoint: " + "; ".join(parts)
            + ". Pass the open_clip model name the checkpoint was trained with."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
