"""Argument checks of the analyses, each raising one clear error that names the argument: the one home of
every check more than one analysis makes (positive counts, index lists, activation/index pairs, alignments,
senders), kept apart from the engines so that they can be rewritten freely."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor


def check_alignment(alignment, n_ex: int, n_pos: int, n_src: int, device: Optional[torch.device] = None) -> Tensor:
    """``alignment`` [batch, pos] as int64 on ``device``: integer positions of the source run, -1 = none.

    A float tensor is refused rather than truncated (1.7 would silently become position 1).
    """
    t = torch.as_tensor(alignment, device=device)
    if t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(
            f"alignment must hold integer positions (-1 = no counterpart), got dtype {t.dtype}; build it with "
            "dtype=torch.long."
        )
    if tuple(t.shape) != (n_ex, n_pos):
        raise ValueError(f"alignment must have shape [batch, pos] = {(n_ex, n_pos)}, got {tuple(t.shape)}.")
    if t.numel() and (int(t.max()) >= n_src or int(t.min()) < -1):
        raise ValueError(f"alignment values must lie in -1..{n_src - 1} (source positions; -1 = none).")
    return t.long()


def check_senders(senders: Union[None, str, Sequence[str]]) -> Optional[list[str]]:
    """``None`` (every upstream sender) or a non-empty list of sender names."""
    if senders is None:
        return None
    listed = [senders] if isinstance(senders, str) else list(senders)
    if not listed:
        raise ValueError(
            "senders is empty, so there is nothing to patch; name at least one sender ('embed', 'L{layer}H{head}' "
            "or 'L{layer}_mlp'), or pass senders=None for every sender upstream of the receivers."
        )
    bad = [s for s in listed if not isinstance(s, str)]
    if bad:
        raise TypeError(f"senders must be names such as 'L3H1', 'L2_mlp' or 'embed', got {bad[:5]}.")
    return listed


def check_count(name: str, value, minimum: int = 1, what: str = "") -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused: ``True`` is not a count, 2.5 not a size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}{f' ({what})' if what else ''} must be {kind}, got {value!r}.")
    return value


def checked_indices(name: str, values, n: int) -> list[int]:
    """A non-empty list of indices in 0..n-1 (``None``: all of them)."""
    if values is not None:
        values = list(values)
        odd = [v for v in values if isinstance(v, bool) or not float(v).is_integer()]
        if odd:  # 2.9 would run index 2: refused rather than truncated
            raise ValueError(f"{name} must be whole indices, got {odd[:5]}.")
    values = list(range(n)) if values is None else [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise ValueError(f"{name} {bad} are outside 0..{n - 1}.")
    if not values:
        raise ValueError(f"{name} is empty.")
    return values


def check_act_index(act: str, index: str, patchable, index_axes, head_acts) -> None:
    """A patchable activation and an index that fits it (per-head indices need a head activation)."""
    if act not in patchable:
        raise ValueError(f"unknown activation {act!r}; patchable: {sorted(patchable)}.")
    if index not in index_axes:
        raise ValueError(f"index must be one of {sorted(index_axes)}, got {index!r}.")
    if "head" in index and act not in head_acts:
        raise ValueError(f"{act!r} has no head axis; patch per head with one of {tuple(head_acts)}.")
