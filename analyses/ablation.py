"""Ablations as hooks: zero, mean (over a reference set, valid positions only) and resample ablation of
attention heads (``hook_z``), whole MLPs (``hook_mlp_out``) and positions of any activation.

Every function returns ``fwd_hooks`` — a list of (hook name, hook) — for ``run_with_hooks`` or
``model.hooks(...)``, so ablations compose with each other and with patching::

    with model.hooks(fwd_hooks=ablate_heads(model, [(3, 1)], "mean", reference=ref_tokens)):
        emb = model.encode_text(tokens)
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor

from hooked_clip.analyses.pairs import Tokens
from hooked_clip.analyses.patching import PATCHABLE
from hooked_clip.names import act_name as hook_name
from hooked_clip.tower import get_tower

Kind = Literal["zero", "mean", "resample"]
Hooks = list[tuple[str, Callable]]


def _reference_cache(text, reference: Optional[Tokens], names: list[str]):
    if reference is None:
        raise ValueError("mean and resample ablation need reference=... (texts or tokens to take activations from).")
    tokens = text.as_tokens(reference)
    with torch.no_grad():
        _, cache = text.run_with_cache(tokens, names_filter=names)
    return tokens, text.pool_positions(tokens), cache


def _position_means(act: Tensor, pool: Tensor) -> Tensor:
    """Mean over reference rows of each position, counting only rows where the position is valid (at or
    before EOT); positions no row reaches get the mean over all valid (row, position) pairs. [pos, ...]"""
    valid = torch.arange(act.shape[1], device=act.device)[None, :] <= pool[:, None]  # [batch, pos]
    w = valid.to(act.dtype).view(*valid.shape, *([1] * (act.ndim - 2)))
    counts = w.sum(0)
    overall = (act * w).sum((0, 1)) / w.sum()
    return torch.where(counts > 0, (act * w).sum(0) / counts.clamp(min=1), overall)


def _index(n_pos: int, positions: Optional[list[int]], heads: Optional[list[int]]) -> tuple:
    """Advanced index of the ablated part of an activation [batch, pos, (head,) ...] of length ``n_pos``."""
    pos = torch.arange(n_pos) if positions is None else torch.tensor([p for p in positions if p < n_pos], dtype=torch.long)
    if heads is None:
        return (slice(None), pos)
    return (slice(None), pos[:, None], torch.tensor(heads, dtype=torch.long)[None, :])


def _make_hook(kind: Kind, positions: Optional[list[int]], heads: Optional[list[int]], ref: Optional[Tensor],
               pool: Optional[Tensor], seed: int) -> Callable:
    """A hook replacing the selected part of an activation by zeros, the reference mean at the same
    position, or the same part of a random reference row (seeded)."""
    means = _position_means(ref, pool) if kind == "mean" else None
    gen = torch.Generator().manual_seed(seed)

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        n_pos = act.shape[1]
        idx = _index(n_pos, positions, heads)
        if kind == "zero":
            act[idx] = 0
            return act
        if ref.shape[1] < n_pos:
            raise ValueError(
                f"the reference set is {ref.shape[1]} positions long but this run has {n_pos}; use reference "
                "texts at least as long as the inputs (or zero ablation)."
            )
        if kind == "mean":
            act[idx] = means[:n_pos].unsqueeze(0).expand_as(act)[idx]
        else:
            rows = torch.randint(0, ref.shape[0], (act.shape[0],), generator=gen).to(ref.device)
            act[idx] = ref[rows, :n_pos][idx]
        return act

    return hook


def _check_kind(kind: str) -> None:
    if kind not in ("zero", "mean", "resample"):
        raise ValueError(f"ablation kind must be 'zero', 'mean' or 'resample', got {kind!r}.")


def ablate_heads(model, heads: Sequence[tuple[int, int]], kind: Kind = "zero", *,
                 reference: Optional[Tokens] = None, positions: Optional[Sequence[int]] = None,
                 seed: int = 0) -> Hooks:
    """Hooks ablating the output ``z`` of each (layer, head) (0-indexed), at all positions or ``positions``."""
    text = get_tower(model, "text")
    _check_kind(kind)
    heads = [(int(l), int(h)) for l, h in heads]
    bad = [(l, h) for l, h in heads if not (0 <= l < text.cfg.n_layers and 0 <= h < text.cfg.n_heads)]
    if bad or not heads:
        raise ValueError(f"heads {bad or '[]'} invalid: need (layer < {text.cfg.n_layers}, head < {text.cfg.n_heads}).")
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    return _hooks(text, kind, {hook_name("z", l): hs for l, hs in by_layer.items()}, positions, reference, seed)


def ablate_mlps(model, layers: Sequence[int], kind: Kind = "zero", *, reference: Optional[Tokens] = None,
                positions: Optional[Sequence[int]] = None, seed: int = 0) -> Hooks:
    """Hooks ablating the MLP output of each block in ``layers`` (0-indexed)."""
    text = get_tower(model, "text")
    _check_kind(kind)
    layers = _checked_layers(text, layers)
    return _hooks(text, kind, {hook_name("mlp_out", l): None for l in layers}, positions, reference, seed)


def ablate_positions(model, positions: Sequence[int], kind: Kind = "zero", *, act_name: str = "resid_pre",
                     layers: Optional[Sequence[int]] = None, reference: Optional[Tokens] = None,
                     seed: int = 0) -> Hooks:
    """Hooks ablating ``act_name`` (any of ``hooked_clip.analyses.patching.PATCHABLE`` except pattern) at
    ``positions`` in each block of ``layers`` (default: all)."""
    text = get_tower(model, "text")
    _check_kind(kind)
    if act_name not in PATCHABLE or act_name == "pattern":
        raise ValueError(f"act_name must be one of {sorted(set(PATCHABLE) - {'pattern'})}, got {act_name!r}.")
    if not positions:
        raise ValueError("positions is empty: nothing would be ablated.")
    layers = _checked_layers(text, range(text.cfg.n_layers) if layers is None else layers)
    return _hooks(text, kind, {hook_name(act_name, l): None for l in layers}, positions, reference, seed)


def _checked_layers(text, layers) -> list[int]:
    layers = [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < text.cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '[]'} invalid: blocks are 0..{text.cfg.n_layers - 1}.")
    return layers


def _hooks(text, kind: Kind, targets: dict[str, Optional[list[int]]], positions, reference, seed) -> Hooks:
    """One hook per name; ``targets[name]`` lists heads (dim 2) or None for the whole vector."""
    if positions is not None:
        positions = [int(p) for p in positions]
        if any(p < 0 or p >= text.cfg.n_ctx for p in positions):
            raise ValueError(f"positions {positions} outside 0..{text.cfg.n_ctx - 1}.")
    ref_pool, cache = None, None
    if kind != "zero":
        _, ref_pool, cache = _reference_cache(text, reference, list(targets))
    return [
        (name, _make_hook(kind, positions, heads, cache[name] if cache is not None else None, ref_pool, seed + i))
        for i, (name, heads) in enumerate(targets.items())
    ]
