"""Image towers of open_clip models (``VisionTransformer``) -> ``CLIPVisionConfig`` + our state dict + open_clip's
eval transform. Any other tower (ResNet, timm, CoCa's attentional pooler, custom blocks) is returned as the
reference module with the reason (:func:`read_open_clip_vision`)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from hooked_clip.errors import UnsupportedImageTower
from hooked_clip.loaders.checkpoint import ReferenceVision, VisionCheckpoint
from hooked_clip.loaders.convert import OPEN_CLIP_BLOCK_NAMES, Reader, open_clip_activation, read_vit_keys
from hooked_clip.vision.config import CLIPVisionConfig

OPEN_CLIP_PREPROCESSING = "open_clip preprocess (torchvision transform)"

OPEN_CLIP_VIT_KEYS = {"embed.W_patch": "conv1.weight", "embed.b_patch": "conv1.bias", "W_cls": "class_embedding",
                      "pos_embed.W_pos": "positional_embedding", "ln_pre.w": "ln_pre.weight", "ln_pre.b": "ln_pre.bias",
                      "ln_post.w": "ln_post.weight", "ln_post.b": "ln_post.bias"}


def read_open_clip_vision(oc_model: nn.Module, preprocess_cfg: Optional[dict] = None,
                          preprocess: Optional[Callable[[list], Tensor]] = None,
                          **overrides) -> Union[VisionCheckpoint, ReferenceVision]:
    """The image tower of an open_clip model (or its ``VisionTransformer`` alone): hooked where it is a ViT
    hooked_clip reimplements, else the reference module with the reason. Preprocessing: ``preprocess`` if
    given, else open_clip's eval transform for ``preprocess_cfg`` (default: the model's own)."""
    if preprocess is None:
        if preprocess_cfg is None:
            import open_clip

            preprocess_cfg = open_clip.get_model_preprocess_cfg(oc_model)
        preprocess = open_clip_preprocess(preprocess_cfg)
    preprocess_cfg = preprocess_cfg or {}
    try:
        cfg = vision_config_from_open_clip(oc_model, **overrides)
    except UnsupportedImageTower as e:
        size = preprocess_cfg.get("size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        return ReferenceVision(_open_clip_visual(oc_model), preprocess, size, str(e), OPEN_CLIP_PREPROCESSING)
    return VisionCheckpoint(cfg, open_clip_vision_state_dict(oc_model, cfg), preprocess, OPEN_CLIP_PREPROCESSING)


def _open_clip_visual(model: nn.Module) -> nn.Module:
    return model.visual if hasattr(model, "visual") else model


def vision_config_from_open_clip(model: nn.Module, **overrides) -> CLIPVisionConfig:
    """``CLIPVisionConfig`` of an open_clip ``VisionTransformer`` (or the model holding it as ``.visual``);
    :class:`UnsupportedImageTower` for anything it does not reimplement, with the reason."""
    from open_clip.transformer import LayerNorm as OCLayerNorm
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

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
    act = open_clip_activation(block.mlp.gelu, UnsupportedImageTower)
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
    read = Reader(_open_clip_visual(model).state_dict(), "open_clip", "ViT image tower")
    out = read_vit_keys(read, cfg, OPEN_CLIP_VIT_KEYS, "transformer.resblocks.", OPEN_CLIP_BLOCK_NAMES)
    if cfg.d_proj is not None:
        out["W_proj"] = read.take("proj")
    read.finish()
    return out


def open_clip_preprocess(preprocess_cfg: dict) -> Callable[[list], Tensor]:
    """open_clip's own eval transform for ``preprocess_cfg`` (``open_clip.get_model_preprocess_cfg``), batched."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return stack_transform(image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False))


def stack_transform(transform: Callable[[Any], Tensor]) -> Callable[[list], Tensor]:
    """Turn a per-image transform (open_clip's) into a batch preprocessor."""

    def preprocess(images: list) -> Tensor:
        return torch.stack([transform(img) for img in images])

    return preprocess
