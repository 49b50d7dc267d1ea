"""Multi-head self-attention with TransformerLens's weight layout and hooks, as named steps.

Weights: ``W_Q, W_K, W_V`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model], biases per head.
Hooks: ``hook_q/k/v/z`` [batch, pos, head, d_head]; ``hook_attn_scores`` (masked, pre-softmax) and
``hook_pattern`` [batch, head, query, key]; ``hook_result`` [batch, pos, head, d_model] when
``cfg.use_attn_result``.

The steps (``calculate_qkv``, ``calculate_attention_scores``, ``apply_causal_mask``, ``calculate_pattern``,
``calculate_z``, ``calculate_output``) are public so that analyses which recompute part of attention
(AtP*'s exact pattern of a patched query or key) call them instead of copying scale, mask and softmax.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.config import TowerConfig
from hooked_clip.hook_points import CheckedHookPoint
from hooked_clip.weights import HeadCircuits


class KeyValuePrefix(NamedTuple):
    """Keys and values [batch, prefix, head, d_head] of the positions before a block's input: with them a
    causal tower runs only the later positions (the patching engine's prefix reuse). ``lengths`` [batch]:
    rows whose prefixes differ in length share one tensor, row b's own keys in its first ``lengths[b]``
    slots and padding (never attended to) after them; None = every slot is the row's."""

    keys: Float[Tensor, "batch prefix head d_head"]
    values: Float[Tensor, "batch prefix head d_head"]
    lengths: Optional[Int[Tensor, " batch"]] = None


class Attention(HeadCircuits, nn.Module):
    """Per-head weights as TransformerLens lays them out; ``QK`` and ``OV`` [n_heads, d_model, d_model] are
    ``FactoredMatrix`` circuits (:mod:`hooked_clip.weights`)."""

    def __init__(self, cfg: TowerConfig):
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
        self.hook_q = CheckedHookPoint()  # [batch, pos, head, d_head]
        self.hook_k = CheckedHookPoint()
        self.hook_v = CheckedHookPoint()
        self.hook_attn_scores = CheckedHookPoint()  # [batch, head, query, key], masked, before softmax
        self.hook_pattern = CheckedHookPoint()  # [batch, head, query, key]
        self.hook_z = CheckedHookPoint()  # [batch, pos, head, d_head]
        self.hook_result = CheckedHookPoint()  # [batch, pos, head, d_model], with cfg.use_attn_result

    def forward(
        self,
        query_input: Float[Tensor, "batch pos *head d_model"],
        key_input: Float[Tensor, "batch pos *head d_model"],
        value_input: Float[Tensor, "batch pos *head d_model"],
        prefix: Optional[KeyValuePrefix] = None,
        query_pos: Optional[Int[Tensor, " batch"]] = None,
        key_mask: Optional[Tensor] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """With ``prefix`` the inputs are the positions after it; ``hook_k``/``hook_v`` see only those, the
        scores and pattern see all keys [batch, head, query, prefix + query]. With ``query_pos`` only one
        query per row is computed, at that position of the inputs (keys and values at every position): the
        output, ``hook_q``, ``hook_z``, the scores and the pattern have one query position. ``key_mask``
        [batch, key] (bool): True at keys no query may read (a post-LN tower's padding)."""
        q, k, v = self.calculate_qkv(query_input, key_input, value_input)
        if query_pos is not None:
            q = q[torch.arange(q.shape[0], device=q.device), query_pos].unsqueeze(1)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        offset, lengths = 0, None
        if prefix is not None:
            offset, lengths = prefix.keys.shape[1], prefix.lengths
            k, v = torch.cat([prefix.keys, k], dim=1), torch.cat([prefix.values, v], dim=1)
        if self._needs_explicit_pattern():
            scores = self.calculate_attention_scores(q, k)
            scores = self.apply_causal_mask(scores, offset, lengths, query_pos)
            if key_mask is not None:
                scores = self.apply_key_mask(scores, key_mask)
            scores = self.hook_attn_scores(scores)
            z = self.calculate_z(self.hook_pattern(self.calculate_pattern(scores)), v)
        else:  # the fused kernel; its causal mask knows no prefix, so it gets ours where one is needed
            plain = lengths is None and query_pos is None and not (offset and self.cfg.causal)
            mask = None if plain else ~self.causal_mask(q.shape[1], k.shape[1], offset, lengths, query_pos, q.device)
            if key_mask is not None:
                plain = False
                mask = ~key_mask[:, None, None, :] if mask is None else mask & ~key_mask[:, None, None, :]
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                is_causal=self.cfg.causal and plain,
            ).transpose(1, 2)
        return self.calculate_output(self.hook_z(z))

    # ------------------------------------------------------------------------------------------- steps
    def calculate_qkv(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values [batch, pos, head, d_head]; inputs [batch, pos, d_model] or, with split qkv
        input, one per head [batch, pos, head, d_model]."""
        if query_input is key_input is value_input and query_input.ndim == 3:  # one matmul for all three
            W, b = self._fused_qkv_weights()
            h, d = self.cfg.n_heads, self.cfg.d_head
            out = F.linear(query_input, W, b).view(*query_input.shape[:-1], 3 * h, d)
            return out.chunk(3, dim=-2)
        return (self._project(query_input, self.W_Q, self.b_Q), self._project(key_input, self.W_K, self.b_K),
                self._project(value_input, self.W_V, self.b_V))

    def calculate_attention_scores(
        self, q: Float[Tensor, "batch query head d_head"], k: Float[Tensor, "batch key head d_head"]
    ) -> Float[Tensor, "batch head query key"]:
        return torch.einsum("bqhd,bkhd->bhqk", q, k) / self.attn_scale

    def apply_causal_mask(self, scores: Float[Tensor, "batch head query key"], offset: int = 0,
                          lengths: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        """-inf where a query may not read a key (see :meth:`causal_mask`; a no-op for a bidirectional
        tower without prefix padding)."""
        if not self.cfg.causal and lengths is None:
            return scores
        mask = self.causal_mask(scores.shape[-2], scores.shape[-1], offset, lengths, query_pos, scores.device)
        return scores.masked_fill(mask, float("-inf"))

    def apply_key_mask(self, scores: Float[Tensor, "batch head query key"], key_mask: Tensor) -> Tensor:
        """-inf at the keys ``key_mask`` [batch, key] hides (padding). A row whose every key is hidden would
        read NaN; the references never mask a whole row (their tokenizers emit CLS/BOS)."""
        if key_mask.shape != (scores.shape[0], scores.shape[-1]) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be a bool tensor [batch, key] = {(scores.shape[0], scores.shape[-1])}, "
                             f"got {key_mask.dtype} {tuple(key_mask.shape)}.")
        return scores.masked_fill(key_mask[:, None, None, :], float("-inf"))

    def causal_mask(self, n_query: int, n_key: int, offset: int = 0, lengths: Optional[Tensor] = None,
                    query_pos: Optional[Tensor] = None, device=None) -> Tensor:
        """True where a query may not read a key, broadcastable to [batch, head, query, key]. The keys are
        ``offset`` prefix slots, then the input's positions. A causal tower hides later positions;
        ``lengths`` [batch] hides the padding slots of shorter prefixes (in any tower); ``query_pos`` [batch]
        is the input position of each row's single query (default: query i is position i)."""
        key = torch.arange(n_key, device=device) - offset  # input position of each key; < 0: a prefix slot
        if query_pos is None:
            query = torch.arange(n_query, device=device)[None, None, :, None]
        else:
            query = query_pos.view(-1, 1, 1, 1)
        hidden = key > query
        if not self.cfg.causal:
            hidden = torch.zeros_like(hidden)
        if lengths is not None:
            slot = torch.arange(n_key, device=device)
            hidden = hidden | ((slot < offset) & (slot >= lengths[:, None])).view(-1, 1, 1, n_key)
        return hidden

    def calculate_pattern(self, scores: Float[Tensor, "batch head query key"]) -> Tensor:
        return torch.softmax(scores, dim=-1)

    def calculate_z(self, pattern: Float[Tensor, "batch head query key"],
                    v: Float[Tensor, "batch key head d_head"]) -> Float[Tensor, "batch query head d_head"]:
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def calculate_output(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        h, d, m = self.W_O.shape
        return F.linear(z.reshape(*z.shape[:2], h * d), self.W_O.reshape(h * d, m).T, self.b_O)

    # ----------------------------------------------------------------------------------------- helpers
    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        if x.ndim == 4:  # split qkv input: one input per head [batch, pos, head, d_model]
            return torch.einsum("bphm,hmd->bphd", x, W) + b
        h, m, d = W.shape
        out = F.linear(x, W.permute(0, 2, 1).reshape(h * d, m), b.reshape(h * d))
        return out.view(*x.shape[:-1], h, d)

    def _fused_qkv_weights(self) -> tuple[Tensor, Tensor]:
        """W_Q, W_K, W_V as one [3 * head * d_head, d_model] matrix (and the biases as one vector). Building it
        copies the weights, so without autograd it is kept until a weight changes (tracked by the
        parameters' version counters and storage); with autograd it is rebuilt so gradients reach the
        parameters."""
        params = (self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._build_fused_qkv()
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        cached = getattr(self, "_fused_qkv_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, *self._build_fused_qkv())
            self._fused_qkv_cache = cached
        return cached[1], cached[2]

    def _build_fused_qkv(self) -> tuple[Tensor, Tensor]:
        W = torch.cat([self.W_Q, self.W_K, self.W_V], dim=0)  # [3 * head, d_model, d_head]
        b = torch.cat([self.b_Q, self.b_K, self.b_V], dim=0)
        return W.permute(0, 2, 1).reshape(-1, W.shape[1]), b.reshape(-1)

    def _needs_explicit_pattern(self) -> bool:
        """The fused kernel is used only when asked for and nothing reads or edits the scores/pattern."""
        return not self.cfg.use_fused_attn or self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()
