"""Multi-head self-attention with TransformerLens's weight layout and hooks.

Weights: ``W_Q, W_K, W_V`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model], biases per head.
Hooks: ``hook_q/k/v/z`` [batch, pos, head, d_head]; ``hook_attn_scores`` (masked, pre-softmax) and
``hook_pattern`` [batch, head, query, key]; ``hook_result`` [batch, pos, head, d_model] when
``cfg.use_attn_result``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.config import CLIPTextConfig
from hooked_clip.hook_points import CheckedHookPoint


class Attention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.cfg = cfg
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_K = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_V = nn.Parameter(torch.empty(h, m, d, dtype=cfg.dtype))
        self.W_O = nn.Parameter(torch.empty(h, d, m, dtype=cfg.dtype))
        self.b_Q = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_K = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_V = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(m, dtype=cfg.dtype))
        self.attn_scale = d**0.5
        self.hook_q = CheckedHookPoint()
        self.hook_k = CheckedHookPoint()
        self.hook_v = CheckedHookPoint()
        self.hook_z = CheckedHookPoint()
        self.hook_attn_scores = CheckedHookPoint()
        self.hook_pattern = CheckedHookPoint()
        self.hook_result = CheckedHookPoint()

    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        if x.ndim == 4:  # split qkv input: one input per head [batch, pos, head, d_model]
            return torch.einsum("bphm,hmd->bphd", x, W) + b
        h, m, d = W.shape
        out = F.linear(x, W.permute(0, 2, 1).reshape(h * d, m), b.reshape(h * d))
        return out.view(*x.shape[:-1], h, d)

    def _needs_explicit_pattern(self) -> bool:
        return (
            not self.cfg.use_fused_attn
            or self.hook_attn_scores.has_hooks()
            or self.hook_pattern.has_hooks()
        )

    def forward(
        self,
        query_input: Float[Tensor, "batch pos *head d_model"],
        key_input: Float[Tensor, "batch pos *head d_model"],
        value_input: Float[Tensor, "batch pos *head d_model"],
        prefix_kv: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """``prefix_kv``: keys and values [batch, prefix, head, d_head] of positions before this input
        (used by the patching engine to skip recomputing an unchanged prefix). The inputs are then the
        positions after the prefix; ``hook_k``/``hook_v`` see only those, the scores and pattern see all
        keys [batch, head, query, prefix + query]."""
        if query_input is key_input is value_input and query_input.ndim == 3:
            # One matmul for q, k and v (the common case: no split qkv input).
            W = torch.cat([self.W_Q, self.W_K, self.W_V], dim=0)
            b = torch.cat([self.b_Q, self.b_K, self.b_V], dim=0)
            q, k, v = self._project(query_input, W, b).chunk(3, dim=-2)
        else:
            q = self._project(query_input, self.W_Q, self.b_Q)
            k = self._project(key_input, self.W_K, self.b_K)
            v = self._project(value_input, self.W_V, self.b_V)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        offset = 0
        if prefix_kv is not None:
            offset = prefix_kv[0].shape[1]
            k, v = torch.cat([prefix_kv[0], k], dim=1), torch.cat([prefix_kv[1], v], dim=1)
        if self._needs_explicit_pattern() or (offset and self.cfg.causal):
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.attn_scale
            if self.cfg.causal:
                mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=scores.device).triu(offset + 1)
                scores = scores.masked_fill(mask, float("-inf"))
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.cfg.causal
            ).transpose(1, 2)
        z = self.hook_z(z)
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        h, d, m = self.W_O.shape
        return F.linear(z.reshape(*z.shape[:2], h * d), self.W_O.reshape(h * d, m).T, self.b_O)
