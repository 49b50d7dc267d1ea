"""The clean/corrupt pair: the two runs every paired analysis compares, checked once.

Vocabulary (the same in activation patching, attribution patching and path patching): ``clean`` and
``corrupt`` are the two inputs, example b of one paired with example b of the other. ``direction``
chooses which run is patched: ``"denoise"`` runs *corrupt* with activations from *clean* (TransformerLens's
default), ``"noise"`` runs *clean* with activations from *corrupt*. The run being patched is the
``base``; the run the activations come from is the ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from hooked_clip.text import HookedCLIPText

Tokens = Union[str, Sequence[str], Int[Tensor, "batch pos"]]
Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class RunPair:
    """Token ids of both runs, cut after the last pooling position they need: ``base`` / ``source``
    [batch, pos], their pooling positions, and the ``direction`` that assigned them."""

    base: Tensor
    source: Tensor
    base_pool: Tensor
    source_pool: Tensor
    direction: str

    @classmethod
    def build(cls, text: HookedCLIPText, clean: Tokens, corrupt: Tokens, direction: Direction = "denoise", *,
              same_pooling: bool = True, names: tuple[str, str] = ("clean", "corrupt"),
              hint: Optional[str] = None) -> "RunPair":
        """Check and assign the runs. ``same_pooling``: both runs must pool at the same position per example
        (positions then correspond one to one); ``names`` and ``hint`` word the errors in the caller's terms
        (e.g. ``("negated", "affirmative")``)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
        clean_t, corrupt_t = text.as_tokens(clean), text.as_tokens(corrupt)
        if clean_t.shape[0] != corrupt_t.shape[0]:
            raise ValueError(f"{clean_t.shape[0]} {names[0]} examples but {corrupt_t.shape[0]} {names[1]} ones; "
                             "give one of each per example.")
        clean_pool, corrupt_pool = text.pool_positions(clean_t), text.pool_positions(corrupt_t)
        if same_pooling and not torch.equal(clean_pool, corrupt_pool):
            bad = (clean_pool != corrupt_pool).nonzero().flatten().tolist()
            raise ValueError(
                f"{names[0]} and {names[1]} differ in token length at examples {bad[:10]} ({names[0]} "
                f"{int(clean_pool[bad[0]]) + 1} vs {names[1]} {int(corrupt_pool[bad[0]]) + 1} tokens for example "
                f"{bad[0]}); positions do not correspond. "
                + (hint or "Align the sentences first (the same number of tokens per example).")
            )
        if text.cfg.trims:
            clean_t = clean_t[:, : int(clean_pool.max()) + 1]
            corrupt_t = corrupt_t[:, : int(corrupt_pool.max()) + 1]
        if direction == "denoise":
            return cls(corrupt_t, clean_t, corrupt_pool, clean_pool, direction)
        return cls(clean_t, corrupt_t, clean_pool, corrupt_pool, direction)

    def clean_and_corrupt(self, base_value, source_value):
        """(clean's, corrupt's) of a pair of per-run values given as (base's, source's)."""
        return (source_value, base_value) if self.direction == "denoise" else (base_value, source_value)


__all__ = ["DIRECTIONS", "Direction", "RunPair", "Tokens"]
