"""`CLIPVisionConfig`: every architectural choice of a ViT image tower (CLIP, SigLIP, open_clip), in
TransformerLens terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hooked_clip.config import TowerConfig

_POOLINGS = ("cls", "avg", "attn")


@dataclass
class CLIPVisionConfig(TowerConfig):
    """Configuration of a ViT image tower.

    Subclasses :class:`~hooked_clip.config.TowerConfig` (TransformerLens's config), so ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
    ``n_ctx`` (number of tokens: patches + class token), ``act_fn``, ``eps``, ``device``,
    ``use_attn_result`` and ``use_split_qkv_input`` mean what TL users expect. The attention is
    bidirectional (``causal`` is always ``False``). Vision-specific fields:

    - ``image_size``, ``patch_size``, ``n_channels``: the pixel input [batch, n_channels, image_size,
      image_size] is cut into ``(image_size // patch_size) ** 2`` patches, read row by row.
    - ``patch_bias``: whether the patch embedding (a strided convolution) has a bias (SigLIP) or not
      (CLIP, open_clip).
    - ``class_token``: a learned class token is prepended (position 0); patches are then positions 1..N.
    - ``ln_pre``: a LayerNorm after the embeddings (CLIP's ``pre_layrnorm``, open_clip's ``ln_pre``).
    - ``pooling``: ``"cls"`` (the class token's residual), ``"avg"`` (the mean over the patch positions,
      the class token excluded, as open_clip's ``pool_type="avg"``), or ``"attn"`` (SigLIP's
      multi-head attention pooling head: a learned probe attends over all positions, then a residual MLP).
    - ``final_ln_after_pool``: ``ln_post`` is applied to the pooled vector (open_clip's
      ``final_ln_after_pool``) rather than to every position before pooling (for ``"cls"`` the two are the
      same numbers; for ``"avg"`` they differ).
    - ``d_proj``: width of the image projection; ``None`` for no projection (SigLIP: the pooled vector is the
      embedding). ``proj_bias``: whether it has a bias.
    """

    d_model: int = 768
    d_head: int = 64
    n_layers: int = 12
    n_ctx: int = 50
    n_heads: int = 12
    d_mlp: Optional[int] = 3072
    act_fn: str = "quick_gelu"
    eps: float = 1e-5
    image_size: int = 224
    patch_size: int = 32
    n_channels: int = 3
    patch_bias: bool = False
    class_token: bool = True
    ln_pre: bool = True
    pooling: str = "cls"
    final_ln_after_pool: bool = False
    d_proj: Optional[int] = 512
    proj_bias: bool = False
    causal: bool = False
    use_fused_attn: bool = False
    init_range: float = 0.02
    seed: Optional[int] = None
    model_name: str = "custom"

    def __post_init__(self):
        grid = self.image_size // self.patch_size if self.patch_size > 0 else 0
        expected_ctx = grid * grid + int(self.class_token)
        if self.n_ctx != expected_ctx:
            raise ValueError(
                f"n_ctx must be (image_size // patch_size) ** 2 + class_token = {expected_ctx}, got {self.n_ctx}; "
                "build the config with CLIPVisionConfig.for_image(...) to have it computed."
            )
        super().__post_init__()
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of {_POOLINGS}.")
        if self.causal or self.ln_position != "pre":
            raise ValueError("a ViT image tower has pre-LN blocks attending bidirectionally; causal=True and "
                             "ln_position='post' are not supported.")
        for name in ("image_size", "patch_size", "n_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("pooling='cls' needs class_token=True; use pooling='avg' or 'attn'.")
        if self.pooling == "attn" and self.final_ln_after_pool:
            raise ValueError("pooling='attn' applies ln_post before the pooling head; set final_ln_after_pool=False.")
        if self.d_proj is not None and self.d_proj <= 0:
            raise ValueError(f"d_proj must be positive or None, got {self.d_proj}.")
        if self.proj_bias and self.d_proj is None:
            raise ValueError("proj_bias=True needs a projection; set d_proj.")

    @classmethod
    def for_image(cls, image_size: int, patch_size: int, class_token: bool = True, **kwargs) -> "CLIPVisionConfig":
        """A config whose ``n_ctx`` is computed from the image and patch sizes."""
        n_ctx = (image_size // patch_size) ** 2 + int(class_token) if patch_size > 0 else 0
        return cls(image_size=image_size, patch_size=patch_size, class_token=class_token, n_ctx=n_ctx, **kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid_size**2

    @property
    def first_patch(self) -> int:
        """Position of the first patch (1 with a class token, else 0)."""
        return int(self.class_token)
