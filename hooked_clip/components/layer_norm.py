"""LayerNorm with TransformerLens's hooks: ``hook_scale`` [.., 1] and ``hook_normalized`` (after w, b)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from hooked_clip.config import CLIPTextConfig


class LayerNorm(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_scale = HookPoint()  # [batch, pos, (head,) 1]
        self.hook_normalized = HookPoint()  # [batch, pos, (head,) d_model]

    def forward(self, x: Float[Tensor, "batch pos *head d_model"]) -> Float[Tensor, "batch pos *head d_model"]:
        # Always the explicit computation (never F.layer_norm): a run's numbers must not depend on which
        # hooks are attached, or a cached clean run and a patched run would differ by float rounding.
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)
