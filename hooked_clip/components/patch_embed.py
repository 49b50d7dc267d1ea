"""ViT patch embedding: a strided convolution, pixels [batch, channel, H, W] -> [batch, patch, d_model]
(patches read row by row)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.config import TowerConfig


class PatchEmbed(nn.Module):
    """``W_patch`` [d_model, channel, patch, patch] (a ``Conv2d`` weight), ``b_patch`` [d_model] when
    ``cfg.patch_bias``."""

    def __init__(self, cfg: TowerConfig):  # a CLIPVisionConfig: patch_size, n_channels, patch_bias
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        self.W_patch = nn.Parameter(torch.empty(cfg.d_model, cfg.n_channels, p, p, dtype=cfg.dtype))
        self.b_patch = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype)) if cfg.patch_bias else None

    def forward(self, pixels: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch patch d_model"]:
        x = F.conv2d(pixels, self.W_patch, self.b_patch, stride=self.cfg.patch_size)
        return x.flatten(2).transpose(1, 2)
