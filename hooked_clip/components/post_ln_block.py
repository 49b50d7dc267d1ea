"""A post-LN residual block (BERT/RoBERTa): resid_pre -> attn -> resid_mid = ln1(resid_pre + attn_out) ->
mlp -> resid_post = ln2(resid_mid + mlp_out).

Hook names follow TransformerLens's where the concept is the same (``hook_resid_pre``, ``hook_attn_out``,
``hook_mlp_out``, ``attn.*``, ``mlp.*``). Where it differs from the pre-LN
:class:`~hooked_clip.components.TransformerBlock`: ``hook_resid_mid`` and ``hook_resid_post`` hold the
*normalised* sums (what the next sublayer reads and what the reference's layer returns);
``ln1.hook_scale`` / ``ln2.hook_scale`` hold the scales of the sums, and ``ln1.hook_normalized`` equals
``hook_resid_mid`` (likewise ``ln2`` and ``hook_resid_post``). The attention reads ``resid_pre`` itself
(``hook_q_input`` etc. with ``use_split_qkv_input``), the MLP reads ``resid_mid``.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from hooked_clip.components.attention import Attention, KeyValuePrefix
from hooked_clip.components.layer_norm import LayerNorm
from hooked_clip.components.mlp import MLP
from hooked_clip.config import TowerConfig
from hooked_clip.hook_points import CheckedHookPoint


class PostLNBlock(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.attn = Attention(cfg)
        self.ln1 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg)
        self.hook_resid_pre = CheckedHookPoint()  # [batch, pos, d_model]
        self.hook_q_input = CheckedHookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = CheckedHookPoint()
        self.hook_v_input = CheckedHookPoint()
        self.hook_attn_out = CheckedHookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = CheckedHookPoint()  # ln1(resid_pre + attn_out)
        self.hook_mlp_out = CheckedHookPoint()
        self.hook_resid_post = CheckedHookPoint()  # ln2(resid_mid + mlp_out)

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"], prefix: Optional[KeyValuePrefix] = None,
                query_pos: Optional[Int[Tensor, " batch"]] = None,
                key_mask: Optional[Bool[Tensor, "batch pos"]] = None) -> Float[Tensor, "batch pos d_model"]:
        """``query_pos`` [batch]: compute only that position of each row (as in ``TransformerBlock``).
        ``key_mask`` [batch, pos]: True at keys no query may read (padding, ``cfg.mask_padding``)."""
        if prefix is not None:
            raise ValueError("a key/value prefix is exact only in a causal tower; a post-LN tower is bidirectional.")
        resid_pre = self.hook_resid_pre(resid_pre)
        if self.cfg.use_split_qkv_input:
            per_head = lambda: resid_pre.unsqueeze(2).repeat(1, 1, self.cfg.n_heads, 1)  # noqa: E731
            qkv = self.hook_q_input(per_head()), self.hook_k_input(per_head()), self.hook_v_input(per_head())
        else:
            qkv = resid_pre, resid_pre, resid_pre
        attn_out = self.attn(*qkv, query_pos=query_pos, key_mask=key_mask)
        if query_pos is not None:
            resid_pre = resid_pre[torch.arange(resid_pre.shape[0], device=resid_pre.device), query_pos].unsqueeze(1)
        resid_mid = self.hook_resid_mid(self.ln1(resid_pre + self.hook_attn_out(attn_out)))
        mlp_out = self.hook_mlp_out(self.mlp(resid_mid))
        return self.hook_resid_post(self.ln2(resid_mid + mlp_out))
