"""LayerNorm with TransformerLens's hooks: ``hook_scale`` [.., 1] and ``hook_normalized`` (after w, b)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        if self.hook_scale.has_hooks():
            # Explicit path, so that a hook can read or replace the scale.
            x = x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt())
            x = x / scale * self.w + self.b
        else:
            x = F.layer_norm(x, (self.cfg.d_model,), self.w, self.b, self.cfg.eps)
        return self.hook_normalized(x)
