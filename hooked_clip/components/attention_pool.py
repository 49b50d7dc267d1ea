"""SigLIP's attention-pooling head ("MAP"): a learned probe attends over every position, then a residual
MLP; the result at the probe is the pooled image vector.

    probe -> attn(query=probe, keys/values=x) = hook_attn_out -> + mlp(ln(.)) = hook_mlp_out -> hook_pooled_out

Built from the same :class:`Attention`, :class:`LayerNorm` and :class:`MLP` as the blocks, so its pattern is
``head.attn.hook_pattern`` [batch, head, 1, pos].
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.components.attention import Attention
from hooked_clip.components.layer_norm import LayerNorm
from hooked_clip.components.mlp import MLP
from hooked_clip.config import TowerConfig
from hooked_clip.hook_points import CheckedHookPoint


class AttentionPool(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.probe = nn.Parameter(torch.empty(1, cfg.d_model, dtype=cfg.dtype))
        self.attn = Attention(cfg)
        self.ln = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_attn_out = CheckedHookPoint()  # [batch, 1, d_model]
        self.hook_mlp_out = CheckedHookPoint()  # [batch, 1, d_model]
        self.hook_out = CheckedHookPoint()  # [batch, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        probe = self.probe.unsqueeze(0).expand(x.shape[0], -1, -1)
        attn_out = self.hook_attn_out(self.attn(probe, x, x))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln(attn_out)))
        return self.hook_out((attn_out + mlp_out)[:, 0])
