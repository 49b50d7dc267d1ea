"""A pre-LN residual block: resid_pre -> +attn(ln1) = resid_mid -> +mlp(ln2) = resid_post."""

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


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = CheckedHookPoint()  # [batch, pos, d_model]
        self.hook_q_input = CheckedHookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = CheckedHookPoint()
        self.hook_v_input = CheckedHookPoint()
        self.hook_attn_out = CheckedHookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = CheckedHookPoint()
        self.hook_mlp_out = CheckedHookPoint()
        self.hook_resid_post = CheckedHookPoint()

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"], prefix: Optional[KeyValuePrefix] = None,
                query_pos: Optional[Int[Tensor, " batch"]] = None,
                key_mask: Optional[Bool[Tensor, "batch pos"]] = None) -> Float[Tensor, "batch pos d_model"]:
        """``prefix``: keys/values of earlier positions (see :class:`KeyValuePrefix`). ``query_pos`` [batch]:
        compute only that position of each row (attention still reads every key): the hooks after the
        attention's queries, and the output, have one position (the patching engine's last block, where
        only the pooled row reaches the output). ``key_mask`` [batch, pos]: True at keys no query may read
        (padding); every block type takes the same arguments."""
        resid_pre = self.hook_resid_pre(resid_pre)
        if self.cfg.use_split_qkv_input:
            # one copy per input: a hook may edit its input in place without touching the other two
            per_head = lambda: resid_pre.unsqueeze(2).repeat(1, 1, self.cfg.n_heads, 1)  # noqa: E731
            attn_out = self.attn(
                self.ln1(self.hook_q_input(per_head())),
                self.ln1(self.hook_k_input(per_head())),
                self.ln1(self.hook_v_input(per_head())),
                prefix,
                query_pos,
                key_mask,
            )
        else:
            x = self.ln1(resid_pre)
            attn_out = self.attn(x, x, x, prefix, query_pos, key_mask)
        if query_pos is not None:
            resid_pre = resid_pre[torch.arange(resid_pre.shape[0], device=resid_pre.device), query_pos].unsqueeze(1)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)
