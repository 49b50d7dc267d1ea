"""VALSE existence: loading, the validity filter and the paper's position alignment (PAPER.md §3).

- valid: ``mturk["caption"] >= 2`` → 505 items (256 with the negation in the caption, 249 in the foil);
- aligned ("rephrased"): "There are X" → "There are some X" in the affirmative sentence, "There is a X /
  There is no X" kept, every other pattern dropped → 490 pairs (250 / 240), negator at token position 3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from hooked_clip.analyses.valse_negation import EXISTENCE_JSON

NEGATOR_POS = 3  # [SOT] there is/are no ...
_REQUIRED = ("caption", "foil", "mturk", "provenance_of_foils", "image_file")
_NO = re.compile(r"\bno\b", re.I)


class _Sides:
    """``negated`` / ``affirmative`` from ``caption``, ``foil`` and ``negation_in``."""

    caption: str
    foil: str
    negation_in: str

    @property
    def negated(self) -> str:
        return self.caption if self.negation_in == "caption" else self.foil

    @property
    def affirmative(self) -> str:
        return self.foil if self.negation_in == "caption" else self.caption


@dataclass(frozen=True)
class Item(_Sides):
    """One valid VALSE existence item. ``negation_in``: "caption" or "foil" (the authors' label, from
    ``provenance_of_foils``)."""

    id: str
    caption: str
    foil: str
    image_file: str
    negation_in: str
    raw: dict


@dataclass(frozen=True)
class Pair(_Sides):
    """An aligned minimal pair: ``caption``/``foil`` as scored, ``negated``/``affirmative`` position-aligned."""

    item: Item
    caption: str
    foil: str

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def negation_in(self) -> str:
        return self.item.negation_in


class DataFormatError(ValueError):
    """The data file is not a VALSE existence file."""


def load_items(path: Union[str, Path, None] = None, *, valid_only: bool = True) -> list[Item]:
    """Items of a VALSE existence JSON file (default: the shipped copy), valid ones only unless told."""
    path = Path(path) if path is not None else EXISTENCE_JSON
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no VALSE data file at {path}; leave the path out to use the shipped copy.") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); expected VALSE's existence.json.") from None
    if not isinstance(data, dict) or not data:
        raise DataFormatError(f"{path} must hold a JSON object of items keyed by id (VALSE's existence.json).")
    items = []
    for key, x in data.items():
        missing = [f for f in _REQUIRED if not isinstance(x, dict) or f not in x]
        if missing:
            raise DataFormatError(f"item {key!r} in {path} lacks the field(s) {missing}; expected VALSE's existence.json.")
        if x["provenance_of_foils"] not in ("zero_to_something", "something_to_zero"):
            raise DataFormatError(f"item {key!r}: provenance_of_foils={x['provenance_of_foils']!r} is not a VALSE existence value.")
        if valid_only and x["mturk"].get("caption", 0) < 2:
            continue
        negation_in = "caption" if x["provenance_of_foils"] == "zero_to_something" else "foil"
        negated = x["caption"] if negation_in == "caption" else x["foil"]
        if not _NO.search(negated):
            raise DataFormatError(f"item {key!r}: the {negation_in} {negated!r} should hold the negator 'no'.")
        items.append(Item(key, x["caption"], x["foil"], x["image_file"], negation_in, x))
    return items


def align(item: Item) -> Optional[Pair]:
    """The paper's alignment of one item, or None where the paper drops it."""
    neg, aff = item.negated, item.affirmative
    if neg.startswith("There are no ") and aff.startswith("There are "):
        aligned = "There are some " + aff[len("There are "):]
        if aligned.replace("There are some ", "There are no ", 1) != neg:
            return None
    elif neg.startswith("There is no ") and aff.startswith("There is a "):
        aligned = aff
        if aff.replace("There is a ", "There is no ", 1) != neg and aff.replace("There is an ", "There is no ", 1) != neg:
            return None
    else:
        return None
    if item.negation_in == "caption":
        return Pair(item, neg, aligned)
    return Pair(item, aligned, neg)


def aligned_pairs(items: list[Item]) -> list[Pair]:
    return [p for p in (align(x) for x in items) if p is not None]
