"""Weights and preprocessing of ViT image towers from transformers (CLIP, SigLIP) and open_clip into
:class:`~hooked_clip.vision_tower.HookedCLIPVision`, with the same strict key and shape checks as the text
tower (:mod:`hooked_clip.loading`): every key of the source is consumed or the load is refused, naming the
missing and unexpected keys.

Image towers that are not ViTs this package reimplements stay the reference module
(:class:`~hooked_clip.vision.VisionTower`): :func:`image_tower_from_hf` / :func:`image_tower_from_open_clip`
choose, and record why a tower was not hooked.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from hooked_clip.devices import resolve_device
from hooked_clip.loading import CheckpointMismatchError, _convert_blocks, _qkv, _Reader, load_converted
from hooked_clip.vision import HFVisionEncoder, VisionTower, stack_transform
from hooked_clip.vision_config import CLIPVisionConfig

_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
_HF_FAMILIES = ("clip_vision_model", "metaclip_2_vision_model", "siglip_vision_model")  # MetaCLIP 2: CLIP's ViT
_HF_BLOCK_NAMES = {"packed_qkv": False, "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                   "v_proj": "self_attn.v_proj", "out_proj": "self_attn.out_proj", "ln1": "layer_norm1",
                   "ln2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_OC_BLOCK_NAMES = {"packed_qkv": True, "in_proj_weight": "attn.in_proj_weight", "in_proj_bias": "attn.in_proj_bias",
                   "out_proj": "attn.out_proj", "ln1": "ln_1", "ln2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}


OPEN_CLIP_PREPROCESSING = "open_clip preprocess (torchvision transform)"


def hf_preprocessing_name(hf_model: nn.Module) -> str:
    """The words for a transformers model's own pixel pipeline."""
    if "siglip" in getattr(hf_model.config, "model_type", ""):
        return "transformers SigLIP image processor (as SiglipProcessor)"
    return "transformers CLIP image processor (as CLIPProcessor)"


class UnsupportedImageTower(CheckpointMismatchError):
    """An image tower that :class:`HookedCLIPVision` does not reimplement (the reason is the message)."""


# ------------------------------------------------------------------------------------------ transformers
def _hf_parts(hf_model: nn.Module) -> tuple[nn.Module, Optional[nn.Module]]:
    """(vision transformer, projection or None) of a transformers CLIP/SigLIP model."""
    vm = getattr(hf_model, "vision_model", None)
    if vm is None and hasattr(hf_model, "embeddings"):  # transformers 5's SiglipVisionModel is the tower itself
        vm = hf_model
    if vm is None or not hasattr(vm, "config"):
        raise UnsupportedImageTower(
            f"{type(hf_model).__name__} has no ViT image tower (.vision_model); pass a transformers CLIPModel, "
            "CLIPVisionModel(WithProjection), SiglipModel or SiglipVisionModel."
        )
    if vm.config.model_type not in _HF_FAMILIES:
        raise UnsupportedImageTower(
            f"image tower of model_type {vm.config.model_type!r} is not reimplemented (supported: {_HF_FAMILIES})."
        )
    return vm, getattr(hf_model, "visual_projection", None)


def vision_config_from_hf(hf_model: nn.Module, **overrides) -> CLIPVisionConfig:
    """``CLIPVisionConfig`` of a transformers CLIP or SigLIP image tower."""
    vm, proj = _hf_parts(hf_model)
    c = vm.config
    if c.hidden_act not in _HF_ACTS:
        raise UnsupportedImageTower(f"hidden_act={c.hidden_act!r} is not supported; supported: {tuple(_HF_ACTS)}.")
    siglip = c.model_type == "siglip_vision_model"
    if siglip and not getattr(c, "vision_use_head", True):
        raise UnsupportedImageTower("a SigLIP image tower without its pooling head (vision_use_head=False) has no "
                                    "image embedding to reproduce.")
    kw = dict(
        d_model=c.hidden_size, n_heads=c.num_attention_heads, d_head=c.hidden_size // c.num_attention_heads,
        n_layers=c.num_hidden_layers, d_mlp=c.intermediate_size, act_fn=_HF_ACTS[c.hidden_act],
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
    read = _Reader(sd, "HF transformers", "ViT image tower")
    out = {"embed.W_patch": read.take("embeddings.patch_embedding.weight"),
           "pos_embed.W_pos": read.take("embeddings.position_embedding.weight")}
    if cfg.patch_bias:
        out["embed.b_patch"] = read.take("embeddings.patch_embedding.bias")
    if cfg.class_token:
        out["W_cls"] = read.take("embeddings.class_embedding")
    if cfg.ln_pre:
        out["ln_pre.w"], out["ln_pre.b"] = read.take("pre_layrnorm.weight"), read.take("pre_layrnorm.bias")
    out.update(_convert_blocks(read, cfg, "encoder.layers.", _HF_BLOCK_NAMES))
    out["ln_post.w"], out["ln_post.b"] = read.take("post_layernorm.weight"), read.take("post_layernorm.bias")
    if cfg.pooling == "attn":
        out.update(_attention_pool(read, cfg, "head."))
    if cfg.d_proj is not None:
        w = read.take("visual_projection.weight")
        out["W_proj"] = None if w is None else w.T
        if cfg.proj_bias:
            out["b_proj"] = read.take("visual_projection.bias")
    read.finish(ignore=lambda k: k.endswith("position_ids"))
    return out


def _attention_pool(read: _Reader, cfg: CLIPVisionConfig, p: str) -> dict[str, Optional[Tensor]]:
    """SigLIP's pooling head (``probe``, a packed ``nn.MultiheadAttention``, ``layernorm``, ``mlp``)."""
    out: dict[str, Optional[Tensor]] = {}
    probe = read.take(p + "probe")
    out["head.probe"] = None if probe is None else probe.reshape(1, cfg.d_model)
    w, b = read.take(p + "attention.in_proj_weight"), read.take(p + "attention.in_proj_bias")
    for x, wx, bx in zip("QKV", w.chunk(3) if w is not None else (None,) * 3, b.chunk(3) if b is not None else (None,) * 3):
        out[f"head.attn.W_{x}"] = None if wx is None else _qkv(wx, cfg)
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
    resize + centre crop + normalise for CLIP; SigLIP's square resize + [-1, 1] scaling)."""
    vm, _ = _hf_parts(hf_model)
    size = vm.config.image_size
    if image_processor is None:
        if vm.config.model_type == "siglip_vision_model":
            from transformers import SiglipImageProcessor

            image_processor = SiglipImageProcessor(size={"height": size, "width": size})
        else:
            from transformers import CLIPImageProcessor

            image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def preprocess(images: list) -> Tensor:
        return image_processor(images=images, return_tensors="pt")["pixel_values"]

    return preprocess


def hooked_vision_from_hf(cls, hf_model: nn.Module, image_processor: Any = None, device: Optional[str] = None,
                          dtype: torch.dtype = torch.float32, **cfg_overrides):
    cfg = vision_config_from_hf(hf_model, device=resolve_device(device), dtype=dtype, **cfg_overrides)
    tower = cls(cfg, hf_preprocess(hf_model, image_processor))
    load_converted(tower, hf_vision_state_dict(hf_model, cfg))
    return tower


def image_tower_from_hf(hf_model: nn.Module, image_processor: Any, device: str, dtype: torch.dtype):
    """The hooked image tower of a transformers CLIP/SigLIP model, or (for a tower it does not
    reimplement) the reference module with the reason recorded."""
    from hooked_clip.vision_tower import HookedCLIPVision

    try:
        return HookedCLIPVision.from_hf(hf_model, image_processor, device=device, dtype=dtype)
    except UnsupportedImageTower as e:
        vm = getattr(hf_model, "vision_model", hf_model)
        ref = VisionTower(HFVisionEncoder(vm, getattr(hf_model, "visual_projection", nn.Identity())), hf_preprocess(hf_model, image_processor),
                          vm.config.image_size, not_hooked_because=str(e), preprocessing=hf_preprocessing_name(hf_model))
        return ref.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ open_clip
def _open_clip_visual(model: nn.Module) -> nn.Module:
    return model.visual if hasattr(model, "visual") else model


def vision_config_from_open_clip(model: nn.Module, **overrides) -> CLIPVisionConfig:
    """``CLIPVisionConfig`` of an open_clip ``VisionTransformer`` (or the model holding it as ``.visual``);
    :class:`UnsupportedImageTower` for anything it does not reimplement, with the reason."""
    from open_clip.transformer import LayerNorm as OCLayerNorm
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

    v = _open_clip_visual(model)
    if not isinstance(v, VisionTransformer):
        raise UnsupportedImageTower(f"open_clip image tower {type(v).__name__} is not a ViT (ResNet and timm towers "
                                    "stay the reference module)")
    if v.attn_pool is not None:
        raise UnsupportedImageTower("open_clip's attentional pooler (CoCa) is not reimplemented")
    if v.pool_type not in ("tok", "avg"):
        raise UnsupportedImageTower(f"pool_type={v.pool_type!r} returns token sequences, not one image embedding")
    block = v.transformer.resblocks[0]
    if type(block) is not ResidualAttentionBlock or not isinstance(block.attn, nn.MultiheadAttention):
        raise UnsupportedImageTower(f"open_clip block {type(block).__name__} (custom attention: qk-norm, scaled "
                                    "cosine or scaled heads) is not reimplemented")
    if not isinstance(block.ls_1, nn.Identity):
        raise UnsupportedImageTower("layer scale (ls_init_value) is not reimplemented")
    act_layer = block.mlp.gelu
    if isinstance(act_layer, QuickGELU):
        act = "quick_gelu"
    elif isinstance(act_layer, nn.GELU):
        act = {"none": "gelu", "tanh": "gelu_tanh"}[act_layer.approximate]
    else:
        raise UnsupportedImageTower(f"activation {act_layer!r} is not supported")
    if not isinstance(v.ln_post, (nn.LayerNorm, OCLayerNorm)):
        raise UnsupportedImageTower(f"norm layer {type(v.ln_post).__name__} is not a LayerNorm")
    (h, w), (ph, pw) = v.image_size, v.patch_size
    if h != w or ph != pw:
        raise UnsupportedImageTower(f"non-square images or patches ({v.image_size}, {v.patch_size}) are not supported")
    width = v.transformer.width
    kw = dict(
        d_model=width, n_heads=block.attn.num_heads, d_head=width // block.attn.num_heads,
        n_layers=len(v.transformer.resblocks), d_mlp=block.mlp.c_fc.out_features, act_fn=act, eps=v.ln_post.eps,
        n_channels=v.conv1.in_channels, patch_bias=v.conv1.bias is not None, ln_pre=not isinstance(v.ln_pre, nn.Identity),
        pooling={"tok": "cls", "avg": "avg"}[v.pool_type], final_ln_after_pool=bool(v.final_ln_after_pool),
        d_proj=None if v.proj is None else v.proj.shape[1], proj_bias=False, model_name="open_clip",
    )
    kw.update(overrides)
    return CLIPVisionConfig.for_image(h, ph, class_token=True, **kw)


def open_clip_vision_state_dict(model: nn.Module, cfg: CLIPVisionConfig) -> dict[str, Tensor]:
    """Our state dict from an open_clip ``VisionTransformer``'s state dict."""
    read = _Reader(_open_clip_visual(model).state_dict(), "open_clip", "ViT image tower")
    out = {"embed.W_patch": read.take("conv1.weight"), "W_cls": read.take("class_embedding"),
           "pos_embed.W_pos": read.take("positional_embedding")}
    if cfg.patch_bias:
        out["embed.b_patch"] = read.take("conv1.bias")
    if cfg.ln_pre:
        out["ln_pre.w"], out["ln_pre.b"] = read.take("ln_pre.weight"), read.take("ln_pre.bias")
    out.update(_convert_blocks(read, cfg, "transformer.resblocks.", _OC_BLOCK_NAMES))
    out["ln_post.w"], out["ln_post.b"] = read.take("ln_post.weight"), read.take("ln_post.bias")
    if cfg.d_proj is not None:
        out["W_proj"] = read.take("proj")
    read.finish()
    return out


def open_clip_preprocess(preprocess_cfg: dict) -> Callable[[list], Tensor]:
    """open_clip's own eval transform for ``preprocess_cfg`` (``open_clip.get_model_preprocess_cfg``), batched."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return stack_transform(image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False))


def hooked_vision_from_open_clip(cls, model: nn.Module, preprocess: Optional[Callable[[list], Tensor]] = None,
                                 device: Optional[str] = None, dtype: torch.dtype = torch.float32, **cfg_overrides):
    cfg = vision_config_from_open_clip(model, device=resolve_device(device), dtype=dtype, **cfg_overrides)
    if preprocess is None:
        import open_clip

        preprocess = open_clip_preprocess(open_clip.get_model_preprocess_cfg(model))
    tower = cls(cfg, preprocess)
    load_converted(tower, open_clip_vision_state_dict(model, cfg))
    return tower


def image_tower_from_open_clip(oc_model: nn.Module, preprocess_cfg: dict, device: str, dtype: torch.dtype):
    """The hooked image tower of an open_clip model, or (for a tower it does not reimplement) the
    reference module with the reason recorded."""
    from hooked_clip.vision_tower import HookedCLIPVision

    preprocess = open_clip_preprocess(preprocess_cfg)
    try:
        return HookedCLIPVision.from_open_clip(oc_model, preprocess, device=device, dtype=dtype)
    except UnsupportedImageTower as e:
        size = preprocess_cfg.get("size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        ref = VisionTower(oc_model.visual, preprocess, image_size=size, not_hooked_because=str(e),
                          preprocessing=OPEN_CLIP_PREPROCESSING)
        return ref.to(device=device, dtype=dtype)
