"""LayerNorm with TransformerLens's hooks: ``hook_scale`` [.., 1] and ``hook_normalized`` (after w, b)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.config import TowerConfig
from hooked_clip.hook_points import CheckedHookPoint


class LayerNorm(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_scale = CheckedHookPoint()  # [batch, pos, (head,) 1]
        self.hook_normalized = CheckedHookPoint()  # [batch, pos, (head,) d_model]

    def forward(self, x: Float[Tensor, "batch pos *head d_model"]) -> Float[Tensor, "batch pos *head d_model"]:
        if self.hook_scale.has_hooks():
            var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
            scale = (var + self.cfg.eps).sqrt()
            if self.hook_scale.has_hooks(dir="bwd"):  # gradients must flow through the hooked scale
                return self.hook_normalized((x - mean) / self.hook_scale(scale) * self.w + self.b)
            before = scale.clone()
            after = self.hook_scale(scale)
            if not _same_scale(after, before, scale):  # a hook replaced or edited the scale
                return self.hook_normalized((x - mean) / after * self.w + self.b)
        # Hooks that read the scale, or return one equal to it, leave the fused kernel in charge, so a run's
        # numbers do not depend on which hooks are attached (tests/unit/test_hooks.py: bit for bit).
        return self.hook_normalized(F.layer_norm(x, (self.cfg.d_model,), self.w, self.b, self.cfg.eps))


def _same_scale(after: Tensor, before: Tensor, scale: Tensor) -> bool:
    """True when the hooked scale equals the computed one in value and in how gradients reach it.

    Values are compared, not identity: an identity hook returning ``x.clone()`` keeps the fused kernel.
    A returned tensor with equal values but another gradient path (``scale.detach()`` to freeze the scale,
    or a fresh leaf whose gradient is wanted) takes the explicit path, so gradients follow the hook.
    """
    if not torch.equal(after, before):
        return False
    if after is scale or not torch.is_grad_enabled():
        return True
    return after.requires_grad == scale.requires_grad and (not after.requires_grad or not after.is_leaf)
