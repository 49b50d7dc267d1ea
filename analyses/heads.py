"""Head scores from attention patterns.

- :func:`negator_head_scores` — the paper's negator-selective head score. For a minimal pair (negated,
  affirmative) of equal length with the negator at key position p:
  Δ_{l,h} = max over query positions q > p of A^neg_{l,h}(q, p) − A^aff_{l,h}(q, p)
  (post-softmax attention; q runs to the sentence's last token — the EOT, "." included —, or in a tower that
  reads its padding to the pooled position). Returned per pair with the per-query-row
  breakdown, so the paper's mean over pairs, its layer zoom, and correlations with d all follow.
- :func:`head_correlation` — per-head Pearson r across pairs between a score and another per-pair value.
- :func:`attention_to_tokens` — generic detector: mean attention mass each head puts on a chosen token
  set (e.g. negators, the subject), over valid query positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from hooked_clip.analyses.pairs import RunPair, Tokens
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.names import act_name
from hooked_clip.tower import get_tower


@dataclass(repr=False)
class NegatorHeadScores(CompactRepr):
    """``delta`` [pairs, layer, head]: Δ per pair (0-indexed layers and heads); ``rows`` [pairs, layer, head,
    query]: A_neg(q, p) − A_aff(q, p) for q > p, NaN elsewhere (before/at the negator, after the EOT);
    ``negator_pos`` [pairs]; ``self_row`` [pairs, layer, head]: A_neg(p, p) − A_aff(p, p), the negator's own
    query row (the authors' layer zoom keeps it; Δ does not use it)."""

    delta: Tensor
    rows: Tensor
    negator_pos: Tensor
    self_row: Optional[Tensor] = None

    def mean(self) -> Float[Tensor, "layer head"]:
        """The paper's table: mean Δ over pairs."""
        return self.delta.mean(0)


def attention_patterns(model, tokens: Tensor) -> Float[Tensor, "batch layer head query key"]:
    """Every layer's post-softmax attention [batch, layer, head, query, key] of a text tower (or a model's)."""
    text = get_tower(model, "text")
    names = [act_name("pattern", l) for l in range(text.cfg.n_layers)]
    with torch.no_grad():
        _, cache = text.run_with_cache(tokens, names_filter=names, return_type=None)
    return torch.stack([cache[n] for n in names], dim=1)


def negator_head_scores(model, negated: Tokens, affirmative: Tokens,
                        negator_pos: Union[int, Sequence[int], Int[Tensor, "pairs"]]) -> NegatorHeadScores:
    """Δ per pair, layer and head (see the module docstring). ``negator_pos``: the negator's token
    position in each negated sentence (3 for "There are no X" after the start token), one int for all."""
    text = get_tower(model, "text")
    pair = RunPair.build(text, negated, affirmative, "noise", names=("negated", "affirmative"),
                         hint="Δ compares the same key position in both sentences, so align them first (e.g. "
                              "'There are some X' for 'There are no X').")
    neg, aff = pair.base, pair.source  # "noise": base = the first (negated) run
    last = text.input_lengths(neg) - 1  # the sentence's last token (its EOT), or the last position read
    p = torch.as_tensor(negator_pos).to(neg.device).long()
    p = p.expand(neg.shape[0]) if p.ndim == 0 else p
    if p.shape != (neg.shape[0],) or bool((p < 1).any()) or bool((p >= last).any()):
        raise ValueError(f"negator_pos must give one position per pair between 1 and the sentence's last token "
                         f"(its EOT); got {p.tolist()}.")
    width = int(last.max()) + 1
    a_neg, a_aff = attention_patterns(text, neg[:, :width]), attention_patterns(text, aff[:, :width])
    idx = torch.arange(neg.shape[0], device=neg.device)
    diff = (a_neg - a_aff)[idx, :, :, :, p]  # [pairs, layer, head, query] attention to the negator slot
    q = torch.arange(width, device=neg.device)
    valid = (q[None, :] > p[:, None]) & (q[None, :] <= last[:, None])  # [pairs, query]
    rows = diff.masked_fill(~valid[:, None, None, :], float("nan"))
    delta = rows.masked_fill(~valid[:, None, None, :], float("-inf")).amax(-1)
    self_row = diff[idx, :, :, p]  # [pairs, layer, head]
    return NegatorHeadScores(delta, rows, p, self_row)


def head_correlation(scores: Float[Tensor, "pairs layer head"], values: Float[Tensor, "pairs"]) -> Float[Tensor, "layer head"]:
    """Pearson r across pairs between each head's score and ``values`` (e.g. d); NaN where either is constant."""
    if scores.shape[0] != values.shape[0]:
        raise ValueError(f"{scores.shape[0]} pairs of scores but {values.shape[0]} values.")
    if scores.shape[0] < 3:
        raise ValueError("a correlation needs at least 3 pairs.")
    x = scores - scores.mean(0)
    y = (values - values.mean()).to(scores)[:, None, None]
    denom = x.pow(2).sum(0).sqrt() * y.pow(2).sum().sqrt()
    r = (x * y).sum(0) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def attention_to_tokens(model, texts: Tokens, key_mask: Union[Bool[Tensor, "batch pos"], Sequence[str]]) -> Float[Tensor, "layer head"]:
    """Mean over examples and valid query positions (up to the EOT) of the attention mass each head puts on
    the keys in ``key_mask`` — a boolean [batch, pos] mask, or a list of token strings (as
    ``to_str_tokens`` prints them, e.g. ``["no", "not"]``) to mark wherever they occur."""
    text = get_tower(model, "text")
    tokens = text.as_tokens(texts)
    pool = text.pool_positions(tokens)
    width = int(pool.max()) + 1
    tokens = tokens[:, :width]
    if isinstance(key_mask, Tensor):
        mask = key_mask.to(tokens.device).bool()
        if mask.shape[0] != tokens.shape[0] or mask.shape[1] < width:
            raise ValueError(f"key_mask must be [batch={tokens.shape[0]}, pos>={width}], got {tuple(mask.shape)}.")
        mask = mask[:, :width]
    else:
        if isinstance(key_mask, str):
            raise ValueError("key_mask must be a list of token strings (e.g. ['no']) or a [batch, pos] mask, not one string.")
        ids = set()
        for s in key_mask:
            found = text.tokenizer.encode(s, special_tokens=False)  # the words alone (no SOT/EOT/CLS/SEP)
            if len(found) != 1:
                raise ValueError(f"{s!r} is {len(found)} tokens, not one; give single tokens as to_str_tokens prints them.")
            ids |= set(found)
        mask = torch.isin(tokens, torch.tensor(sorted(ids), device=tokens.device))
    pattern = attention_patterns(text, tokens)  # [b, layer, head, q, k]
    mass = (pattern * mask[:, None, None, None, :]).sum(-1)  # [b, layer, head, q]
    q_valid = torch.arange(width, device=tokens.device)[None, :] <= pool[:, None]  # [b, q]
    w = q_valid[:, None, None, :].to(mass)
    return (mass * w).sum((0, 3)) / w.sum((0, 3))


__all__ = ["NegatorHeadScores", "attention_patterns", "attention_to_tokens", "head_correlation", "negator_head_scores"]
