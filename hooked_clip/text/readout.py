"""Cache helpers at the pooling position: what TransformerLens's ``ActivationCache`` offers at a
``pos_slice``, for CLIP, where each example is read at its own position (its EOT) and then projected.

All functions take the text tower, an ``ActivationCache`` from ``run_with_cache`` and the pool positions
[batch] (``text.pool_positions(tokens)``), and return ``(stack, labels)`` with ``stack`` [component,
batch, d_model]. The residual decomposition is exact: ``decompose_resid`` sums to the residual entering
``ln_final`` (``blocks.{L-1}.hook_resid_post``) at the pooling position. The decomposition and the
``ln_final`` helpers are for pre-LN towers; a post-LN (BERT/RoBERTa) tower's residual stream is a
LayerNorm's output, not a sum of writers, and they refuse it (``accumulated_resid`` and
``stack_head_results`` read hooks only and work on both).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache

from hooked_clip.names import act_name, attn_bias_label, attn_label, head_label, mlp_label
from hooked_clip.text.tower import HookedCLIPText


def at_pool(act: Float[Tensor, "batch pos *rest"], pool: Int[Tensor, "batch"]) -> Float[Tensor, "batch *rest"]:
    """``act`` read at each example's pooling position."""
    return act[torch.arange(act.shape[0], device=act.device), pool.to(act.device)]


def _get(cache: ActivationCache, name: str) -> Tensor:
    if name not in cache.cache_dict:
        raise KeyError(f"the cache has no {name!r}; run run_with_cache without a names_filter that drops it.")
    return cache[name]


def accumulated_resid(text: HookedCLIPText, cache: ActivationCache, pool: Int[Tensor, "batch"],
                      incl_mid: bool = False) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """The residual stream at the pooling position after the embeddings and after each block (and, with
    ``incl_mid``, after each attention layer): [n_layers + 1 (+ n_layers), batch, d_model]. Row l is the
    paper's hidden state l (0 = embeddings output)."""
    rows, labels = [], []
    for layer in range(text.cfg.n_layers):
        rows.append(at_pool(_get(cache, act_name("resid_pre", layer)), pool))
        labels.append(f"{layer}_pre")
        if incl_mid:
            rows.append(at_pool(_get(cache, act_name("resid_mid", layer)), pool))
            labels.append(f"{layer}_mid")
    rows.append(at_pool(_get(cache, act_name("resid_post", text.cfg.n_layers - 1)), pool))
    labels.append("final_post")
    return torch.stack(rows), labels


def stack_head_results(text: HookedCLIPText, cache: ActivationCache,
                       pool: Int[Tensor, "batch"]) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """Each head's write to the residual at the pooling position, z @ W_O (no b_O): [n_layers * n_heads,
    batch, d_model], labels ``L{layer}H{head}`` (0-indexed). Needs only ``hook_z`` in the cache."""
    rows, labels = [], []
    for layer in range(text.cfg.n_layers):
        z = at_pool(_get(cache, act_name("z", layer)), pool)  # [batch, head, d_head]
        rows.append(torch.einsum("bhd,hdm->hbm", z, text.blocks[layer].attn.W_O))
        labels += [head_label(layer, h) for h in range(text.cfg.n_heads)]
    return torch.cat(rows), labels


def _pre_ln_only(text: HookedCLIPText, what: str) -> None:
    if text.cfg.ln_position != "pre" or text.ln_final is None:
        raise ValueError(f"{what} needs a pre-LN tower with ln_final: in this post-LN (BERT/RoBERTa) tower every "
                         "residual sum passes through a LayerNorm, so the final residual is not a sum of its "
                         "writers. Read the hooks (hook_attn_out, hook_mlp_out, hook_resid_*) directly.")


def decompose_resid(text: HookedCLIPText, cache: ActivationCache, pool: Int[Tensor, "batch"],
                    heads: bool = True) -> tuple[Float[Tensor, "component batch d_model"], list[str]]:
    """The residual entering ``ln_final`` at the pooling position, split exactly into its writers:
    ``embed``, ``pos_embed``, then per layer either each head and ``L{l}_attn_bias`` (b_O) (``heads=True``)
    or ``L{l}_attn``, then ``L{l}_mlp``. The rows sum to ``blocks.{L-1}.hook_resid_post`` at the pool."""
    _pre_ln_only(text, "decompose_resid")
    rows = [at_pool(_get(cache, "hook_embed"), pool), at_pool(_get(cache, "hook_pos_embed"), pool)]
    labels = ["embed", "pos_embed"]
    head_rows, head_labels = stack_head_results(text, cache, pool) if heads else (None, None)
    n_heads = text.cfg.n_heads
    for layer in range(text.cfg.n_layers):
        if heads:
            rows += list(head_rows[layer * n_heads:(layer + 1) * n_heads])
            labels += head_labels[layer * n_heads:(layer + 1) * n_heads]
            rows.append(text.blocks[layer].attn.b_O.expand_as(rows[0]))
            labels.append(attn_bias_label(layer))
        else:
            rows.append(at_pool(_get(cache, act_name("attn_out", layer)), pool))
            labels.append(attn_label(layer))
        rows.append(at_pool(_get(cache, act_name("mlp_out", layer)), pool))
        labels.append(mlp_label(layer))
    return torch.stack(rows), labels


def ln_final_scale(cache: ActivationCache, pool: Int[Tensor, "batch"]) -> Float[Tensor, "batch 1"]:
    """The scale (std + eps, as LayerNorm divides by it) ``ln_final`` applied at the pooling position."""
    return at_pool(_get(cache, "ln_final.hook_scale"), pool)


def apply_ln_to_stack(text: HookedCLIPText, stack: Float[Tensor, "component batch d_model"],
                      scale: Float[Tensor, "batch 1"] | None = None,
                      mode: Literal["frozen", "recompute"] = "frozen") -> Float[Tensor, "component batch d_model"]:
    """``ln_final`` without its bias applied to each row: (x - mean(x)) / scale * w. ``frozen`` divides by
    the scale of the full run (``ln_final_scale``; then the rows stay additive: they sum to ``ln_final``'s
    output minus its bias); ``recompute`` divides each row by its own std (for a lens on partial residuals)."""
    _pre_ln_only(text, "apply_ln_to_stack")
    centered = stack - stack.mean(dim=-1, keepdim=True)
    if mode == "frozen":
        if scale is None:
            raise ValueError("mode='frozen' needs scale=ln_final_scale(cache, pool).")
        normed = centered / scale
    elif mode == "recompute":
        normed = centered / (centered.pow(2).mean(-1, keepdim=True) + text.cfg.eps).sqrt()
    else:
        raise ValueError(f"mode must be 'frozen' or 'recompute', got {mode!r}.")
    return normed * text.ln_final.w


def to_embedding_space(text: HookedCLIPText, normed: Float[Tensor, "... d_model"],
                       with_bias: bool = False) -> Float[Tensor, "... d_proj"]:
    """Rows through ``text_projection`` (linear part only unless ``with_bias``: ln_final's bias and the
    projection bias, which belong to no component)."""
    if text.W_proj is None:
        raise ValueError("this text tower has no projection (cfg.d_proj is None); its embedding space is the "
                         "pooled residual itself, so use the ln_final output directly.")
    if text.cfg.d_proj_hidden is not None or text.cfg.proj_act is not None:
        raise ValueError("this text tower's projection is not linear (an MLP or a tanh: cfg.d_proj_hidden / "
                         "cfg.proj_act), so component rows cannot be mapped into the embedding space one by one.")
    out = normed @ text.W_proj
    return out + embedding_bias(text) if with_bias else out


def embedding_bias(text: HookedCLIPText) -> Float[Tensor, "d_proj"]:
    """The part of the text embedding that no component writes: ``ln_final.b @ W_proj + b_proj``."""
    _pre_ln_only(text, "embedding_bias")
    out = text.ln_final.b @ text.W_proj
    return out + text.b_proj if text.b_proj is not None else out
