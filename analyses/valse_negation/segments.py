"""The paper's segments of the classification score d = S(caption, image) − S(foil, image), in logits: the one
place of the rule. Every part of the study that segments (the per-item records, the report's counts, the
score histogram) calls :func:`segment`; the report's words for the rule are :data:`RULE`.

- correct: d ≥ 1
- ambiguous: −1 ≤ d < 1
- incorrect: d < −1
"""

from __future__ import annotations

from typing import Iterable

SEGMENTS = ("correct", "ambiguous", "incorrect")
"""The segment names, in the paper's order (tables, ``results.json``, the authors' per-item format)."""

THRESHOLD = 1.0
"""|d| in logits at which the segments change (the paper's ±1)."""

RULE = "correct d ≥ 1, ambiguous −1 ≤ d < 1, incorrect d < −1 (logits)"
"""The rule in the report's words."""


def segment(d: float) -> str:
    """The segment of one score d (logits): incorrect d < −1, ambiguous −1 ≤ d < 1, correct d ≥ 1. A NaN score
    belongs to no segment and is an error (it would otherwise fall through every comparison into one)."""
    if d != d:
        raise ValueError("a score d = S(caption, image) - S(foil, image) is NaN: the embeddings hold NaN; check the "
                         "model's weights and the inputs (this item cannot be segmented).")
    return "incorrect" if d < -THRESHOLD else "ambiguous" if d < THRESHOLD else "correct"


def segment_all(ds: Iterable[float]) -> list[str]:
    """:func:`segment` of every score."""
    return [segment(float(d)) for d in ds]


def segment_counts(ds: Iterable[float]) -> dict[str, int]:
    """How many scores fall in each segment, keyed in :data:`SEGMENTS` order."""
    names = segment_all(ds)
    return {name: names.count(name) for name in SEGMENTS}
