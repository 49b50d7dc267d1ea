"""Image towers of transformers checkpoints (CLIP, MetaCLIP 2, SigLIP ViTs) -> ``CLIPVisionConfig`` + our state
dict + the checkpoint's image processor, with the same strict key checks as the text tower. A tower that is not
a ViT hooked_clip reimplements is returned as the reference module with the reason (:func:`read_hf_vision`)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from torch import Tensor, nn

from hooked_clip.errors import UnsupportedImageTower
from hooked_clip.loaders.checkpoint import ReferenceVision, VisionCheckpoint
from hooked_clip.loaders.convert import HF_ACTS, HF_BLOCK_NAMES, Reader, qkv_weight, read_vit_keys
from hooked_clip.vision.config import CLIPVisionConfig

_HF_FAMILIES = ("clip_vision_model", "metaclip_2_vision_model", "siglip_vision_model")  # MetaCLIP 2: CLIP's ViT

HF_VIT_KEYS = {"embed.W_patch": "embeddings.patch_embedding.weight", "embed.b_patch": "embeddings.patch_embedding.bias",
               "W_cls": "embeddings.class_embedding", "pos_embed.W_pos": "embeddings.position_embedding.weight",
               "ln_pre.w": "pre_layrnorm.weight", "ln_pre.b": "pre_layrnorm.bias",
               "ln_post.w": "post_layernorm.weight", "ln_post.b": "post_layernorm.bias"}


PIXEL_BACKEND = "pil"  # transformers' image processors on PIL (transformers 4's only path), not torchvision


def read_hf_vision(hf_model: nn.Module, image_processor: Any = None,
                   **overrides) -> Union[VisionCheckpoint, ReferenceVision]:
    """The image tower of a transformers model: hooked where it is a ViT hooked_clip reimplements, else the
    reference module with the reason."""
    preprocess = hf_preprocess(hf_model, image_processor)
    try:
        cfg = vision_config_from_hf(hf_model, **overrides)
    except UnsupportedImageTower as e:
        vm, projection = _hf_parts(hf_model, reimplemented=False)
        encoder = HFVisionEncoder(vm, nn.Identity() if projection is None else projection)
        return ReferenceVision(encoder, preprocess, vm.config.image_size, str(e), hf_preprocessing_name(hf_model))
    return VisionCheckpoint(cfg, hf_vision_state_dict(hf_model, cfg), preprocess, hf_preprocessing_name(hf_model))


def hf_preprocessing_name(hf_model: nn.Module) -> str:
    """The words for a transformers model's own pixel pipeline."""
    if "siglip" in getattr(hf_model.config, "model_type", ""):
        return "transformers SigLIP image processor, PIL backend (as SiglipProcessor)"
    return "transformers CLIP image processor, PIL backend (as CLIPProcessor in transformers 4)"


def _hf_parts(hf_model: nn.Module, reimplemented: bool = True) -> tuple[nn.Module, Optional[nn.Module]]:
    """(image tower, projection or None) of a transformers model; ``reimplemented``: refuse a tower whose
    model_type hooked_clip does not reimplement."""
    vm = getattr(hf_model, "vision_model", None)
    if vm is None and hasattr(hf_model, "embeddings"):  # transformers 5's SiglipVisionModel is the tower itself
        vm = hf_model
    if vm is None or not hasattr(vm, "config"):
        raise UnsupportedImageTower(
            f"{type(hf_model).__name__} has no ViT image tower (.vision_model); pass a transformers CLIPModel, "
            "CLIPVisionModel(WithProjection), SiglipModel or SiglipVisionModel."
        )
    if reimplemented and vm.config.model_type not in _HF_FAMILIES:
        raise UnsupportedImageTower(
            f"image tower of model_type {vm.config.model_type!r} is not reimplemented (supported: {_HF_FAMILIES})."
        )
    return vm, getattr(hf_model, "visual_projection", None)


def vision_config_from_hf(hf_model: nn.Module, **overrides) -> CLIPVisionConfig:
    """``CLIPVisionConfig`` of a transformers CLIP or SigLIP image tower."""
    vm, proj = _hf_parts(hf_model)
    c = vm.config
    if c.hidden_act not in HF_ACTS:
        raise UnsupportedImageTower(f"hidden_act={c.hidden_act!r} is not supported; supported: {tuple(HF_ACTS)}.")
    siglip = c.model_type == "siglip_vision_model"
    if siglip and not getattr(c, "vision_use_head", True):
        raise UnsupportedImageTower("a SigLIP image tower without its pooling head (vision_use_head=False) has no "
                                    "image embedding to reproduce.")
    kw = dict(
        d_model=c.hidden_size, n_heads=c.num_attention_heads, d_head=c.hidden_size // c.num_attention_heads,
        n_layers=c.num_hidden_layers, d_mlp=c.intermediate_size, act_fn=HF_ACTS[c.hidden_act],
        eps=c.layer_norm_eps, n_channels=c.num_channels, patch_bias=siglip, ln_pre=not siglip,
        pooling="attn" if siglip else "cls", final_ln_after_pool=False,
        d_proj=None if proj is None else proj.out_features, proj_bias=proj is not None and proj.bias is not None,
        model_name=getattr(c, "_name_or_path", "") or "hf",
    )
    kw.update(overrides)
    return CLIPVisionConfig.for_image(c.image_size, c.patch_size, class_token=not siglip, **kw)


def hf_vision_state_dict(hf_model: nn.Module, cfg: CLIPVisionConfig) -> dict[str, Tensor]:
    """Our state dict from a transformers CLIP/SigLIP image tower (its ``vision_model`` keys, plus
    ``visual_projection.*``)."""
    vm, proj = _hf_parts(hf_model)
    sd = dict(vm.state_dict())
    if proj is not None:
        sd.update({f"visual_projection.{k}": v for k, v in proj.state_dict().items()})
    read = Reader(sd, "HF transformers", "ViT image tower")
    out = read_vit_keys(read, cfg, HF_VIT_KEYS, "encoder.layers.", HF_BLOCK_NAMES)
    if cfg.pooling == "attn":
        out.update(_attention_pool(read, cfg, "head."))
    if cfg.d_proj is not None:
        w = read.take("visual_projection.weight")
        out["W_proj"] = None if w is None else w.T
        if cfg.proj_bias:
            out["b_proj"] = read.take("visual_projection.bias")
    read.finish(ignore=lambda k: k.endswith("position_ids"))
    return out


def _attention_pool(read: Reader, cfg: CLIPVisionConfig, p: str) -> dict[str, Optional[Tensor]]:
    """SigLIP's pooling head (``probe``, a packed ``nn.MultiheadAttention``, ``layernorm``, ``mlp``)."""
    out: dict[str, Optional[Tensor]] = {}
    probe = read.take(p + "probe")
    out["head.probe"] = None if probe is None else probe.reshape(1, cfg.d_model)
    w, b = read.take(p + "attention.in_proj_weight"), read.take(p + "attention.in_proj_bias")
    for x, wx, bx in zip("QKV", w.chunk(3) if w is not None else (None,) * 3, b.chunk(3) if b is not None else (None,) * 3):
        out[f"head.attn.W_{x}"] = None if wx is None else qkv_weight(wx, cfg)
        out[f"head.attn.b_{x}"] = None if bx is None else bx.reshape(cfg.n_heads, cfg.d_head)
    w = read.take(p + "attention.out_proj.weight")
    out["head.attn.W_O"] = None if w is None else w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
    out["head.attn.b_O"] = read.take(p + "attention.out_proj.bias")
    out["head.ln.w"], out["head.ln.b"] = read.take(p + "layernorm.weight"), read.take(p + "layernorm.bias")
    for ours, theirs in (("in", "fc1"), ("out", "fc2")):
        w = read.take(f"{p}mlp.{theirs}.weight")
        out[f"head.mlp.W_{ours}"] = None if w is None else w.T
        out[f"head.mlp.b_{ours}"] = read.take(f"{p}mlp.{theirs}.bias")
    return out


def hf_preprocess(hf_model: nn.Module, image_processor: Any = None) -> Callable[[list], Tensor]:
    """The checkpoint's image pipeline: ``image_processor`` if given, else the family's default (OpenAI's
    resize + centre crop + normalise for CLIP and the other towers; SigLIP's square resize + [-1, 1] scaling),
    on transformers' PIL backend: the pipeline of transformers 4's ``CLIPProcessor``, which transformers 5's
    default torchvision backend differs from by up to one intensity level (:data:`PIXEL_BACKEND`)."""
    vm, _ = _hf_parts(hf_model, reimplemented=False)
    size = vm.config.image_size
    if image_processor is None:
        if vm.config.model_type == "siglip_vision_model":
            from transformers import SiglipImageProcessorPil

            image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
        else:
            from transformers import CLIPImageProcessorPil

            image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def preprocess(images: list) -> Tensor:
        return image_processor(images=images, return_tensors="pt")["pixel_values"]

    return preprocess


class HFVisionEncoder(nn.Module):
    """A transformers image tower + its projection: pixel_values -> image embeddings (its pooled output
    projected, as ``get_image_features`` computes: CLIP, ChineseCLIP, AltCLIP; ALIGN has no projection)."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)
