"""VALSE existence: loading, the validity filter and the paper's position alignment (PAPER.md §3).

- valid: ``mturk["caption"] >= 2`` → 505 items (256 with the negation in the caption, 249 in the foil);
- aligned ("rephrased"): "There are X" → "There are some X" in the affirmative sentence, "There is a X /
  There is no X" kept, every other pattern dropped → 490 pairs (250 / 240), negator at token position 3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from hooked_clip.analyses.valse_negation import EXISTENCE_JSON

NEGATOR_POS = 3  # [SOT] there is/are no ... on CLIP's BPE; the study reads each pair's own from layout.check_token_layout
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
    ``provenance_of_foils``); ``raw``: the VALSE record it was read from (empty for an item built in Python, e.g.
    ``Item("mine-1", "There is no dog.", "There is a dog.", "dog.jpg", "caption")``)."""

    id: str
    caption: str
    foil: str
    image_file: str
    negation_in: str
    raw: dict = field(default_factory=dict)


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


class ItemList(list):
    """The items of a data file (a ``list`` of :class:`Item`) and ``dropped``: (id, reason) of every item of the
    file left out (the validity filter), so that no item disappears unnamed."""

    def __init__(self, items=(), dropped=()):
        super().__init__(items)
        self.dropped: list[tuple[str, str]] = list(dropped)


INVALID = "not validated: {n} of 3 annotators accepted the caption (VALSE's filter keeps mturk.caption >= 2)"


def load_items(path: Union[str, Path, None] = None, *, valid_only: bool = True) -> ItemList:
    """Items of a VALSE existence JSON file (default: the shipped copy), valid ones only unless told; the
    returned list's ``dropped`` names each item the validity filter left out, with the reason."""
    path = Path(path) if path is not None else EXISTENCE_JSON
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no VALSE data file at {path}; leave the path out to use the shipped copy.") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); expected VALSE's existence.json.") from None
    if not isinstance(data, dict) or not data:
        raise DataFormatError(f"{path} must hold a JSON object of items keyed by id (VALSE's existence.json).")
    items, dropped = [], []
    for key, x in data.items():
        missing = [f for f in _REQUIRED if not isinstance(x, dict) or f not in x]
        if missing:
            raise DataFormatError(f"item {key!r} in {path} lacks the field(s) {missing}; expected VALSE's existence.json.")
        if x["provenance_of_foils"] not in ("zero_to_something", "something_to_zero"):
            raise DataFormatError(f"item {key!r}: provenance_of_foils={x['provenance_of_foils']!r} is not a VALSE existence value.")
        if valid_only and x["mturk"].get("caption", 0) < 2:
            dropped.append((key, INVALID.format(n=x["mturk"].get("caption", 0))))
            continue
        negation_in = "caption" if x["provenance_of_foils"] == "zero_to_something" else "foil"
        negated = x["caption"] if negation_in == "caption" else x["foil"]
        if not _NO.search(negated):
            raise DataFormatError(f"item {key!r}: the {negation_in} {negated!r} should hold the negator 'no'.")
        items.append(Item(key, x["caption"], x["foil"], x["image_file"], negation_in, x))
    return ItemList(items, dropped)


def _align(item: Item) -> Union[Pair, str]:
    """The paper's alignment of one item, or the reason it drops the item."""
    neg, aff = item.negated, item.affirmative
    if neg.startswith("There are no ") and aff.startswith("There are "):
        aligned = "There are some " + aff[len("There are "):]
        if aligned.replace("There are some ", "There are no ", 1) != neg:
            return (f"not aligned: {aligned!r} with 'no' for 'some' is not the negated sentence {neg!r} (the "
                    "sentences must differ only in the negator)")
    elif neg.startswith("There is no ") and aff.startswith("There is a "):
        aligned = aff
        if aff.replace("There is a ", "There is no ", 1) != neg and aff.replace("There is an ", "There is no ", 1) != neg:
            return (f"not aligned: {aff!r} with 'no' for 'a/an' is not the negated sentence {neg!r} (the sentences "
                    "must differ only in the negator)")
    else:
        return (f"not aligned: the paper's alignment keeps only 'There are no X' / 'There are X' and 'There is no "
                f"X' / 'There is a(n) X' (negated: {neg!r}, affirmative: {aff!r})")
    if item.negation_in == "caption":
        return Pair(item, neg, aligned)
    return Pair(item, aligned, neg)


def align(item: Item) -> Optional[Pair]:
    """The paper's alignment of one item, or None where the paper drops it (:func:`why_not_aligned` says why)."""
    out = _align(item)
    return out if isinstance(out, Pair) else None


def why_not_aligned(item: Item) -> Optional[str]:
    """Why the paper's alignment drops ``item`` (None where it aligns)."""
    out = _align(item)
    return None if isinstance(out, Pair) else out


def dropped_items(items, records: dict[str, dict]) -> list[dict]:
    """Every item left out of a run or of its aligned pairs, with the stage and the reason: the validity
    filter (``items.dropped`` of :func:`load_items`) and the paper's alignment (the run's ``records`` without
    an aligned pair). Items a ``--limit`` left out are not listed (the run did not ask for them)."""
    out = [{"id": i, "stage": "validity filter", "reason": why} for i, why in getattr(items, "dropped", ())]
    by_id = {x.id: x for x in items}
    for rid, rec in records.items():
        if "aligned" not in rec:
            item = by_id.get(rid) or Item(rid, rec["caption"], rec["foil"], "", rec["negation_in"])
            out.append({"id": rid, "stage": "alignment", "reason": why_not_aligned(item) or "not aligned"})
    return out


def aligned_pairs(items: list[Item]) -> list[Pair]:
    return [p for p in (align(x) for x in items) if p is not None]


def paper_pairs(items: Optional[list[Item]] = None) -> list:
    """The study's aligned pairs (:func:`align` of ``items``, default the shipped valid items) as minimal pairs of
    ``hooked-clip localize`` (:class:`~hooked_clip.analyses.localize.pairs_file.MinimalPair`), oriented as the
    paper traces them: caption = the affirmative sentence, foil = the negated one; id ``existence/<VALSE key>`` (as
    in the shipped ``valse:existence``), image the VALSE file, phenomenon ``existence (paper's alignment)``. With
    ``direction="foil-into-caption"`` and the study's images, localize's per-pair CTE and head scores are the
    study's (docs/api/localize.md)."""
    from hooked_clip.analyses.localize.pairs_file import MinimalPair

    pairs = aligned_pairs(load_items() if items is None else items)
    return [MinimalPair(f"existence/{p.id}", p.affirmative, p.negated, p.item.image_file or None,
                        "existence (paper's alignment)", "valse_negation.data.paper_pairs") for p in pairs]


# ------------------------------------------------------------------------------------------ subjects
SPACY_INSTALL = ("pip install -e '.[spacy]' (the spacy extra of this repository) && python -m spacy download en_core_web_sm "
                 "(the authors' exact subjects: pip install spacy==3.6.1 && python -m spacy download "
                 "en_core_web_sm-3.6.0 --direct; or pass --subject-parser regex for the approximate fallback, reported "
                 "as such)")
_REGEX_SUBJECT = re.compile(r"There (?:is|are) (.+?)(?: (?:in|on|at|near|by|under|with|parked|sitting|standing)\b|\.|$)")


AUTHORS_SPACY = ("3.6.1", "3.6.0")  # (spacy, en_core_web_sm): reproduces the authors' 240 subjects exactly


class SubjectParser:
    """The subject prompt of an aligned affirmative caption, e.g. "some cars" for "There are some cars parked.".

    The authors' rule (PAPER.md §6.1): the first noun chunk of the caption by spaCy's English pipeline
    ``en_core_web_sm``; a caption without one has no subject (236 of the 240 foil-negated pairs have one).
    Versions matter: spaCy 3.6.1 with ``en_core_web_sm`` 3.6.0 (:data:`AUTHORS_SPACY`) gives the authors' released
    subjects for all 240 pairs; spaCy 3.8's pipeline differs on 4 (e.g. "There is a train shown." has no noun
    chunk there, "a train" in theirs). ``name`` records both versions (in the run's config and report).
    Build it with :meth:`spacy` (the real pipeline) or pass any callable ``nlp(text) -> doc`` whose doc has
    ``noun_chunks``; :meth:`regex` is an approximation kept only as a fallback (``name`` says which ran)."""

    def __init__(self, nlp=None, name: str = "spacy"):
        self.nlp = nlp
        self.name = name

    @classmethod
    def spacy(cls, pipeline: str = "en_core_web_sm") -> "SubjectParser":
        try:
            import spacy
        except ImportError:
            raise ImportError(f"spaCy is not installed; the authors' subject rule needs it: {SPACY_INSTALL}.") from None
        try:
            nlp = spacy.load(pipeline)
        except OSError:
            raise OSError(f"spaCy's English pipeline {pipeline!r} is not installed (a separate download): "
                          f"{SPACY_INSTALL}.") from None
        return cls(nlp, f"spacy {spacy.__version__} {pipeline} {nlp.meta.get('version', '(version unknown)')} "
                        "(first noun chunk)")

    @classmethod
    def regex(cls) -> "SubjectParser":
        return cls(None, "regex fallback (words after 'There is/are' up to a preposition or participle; "
                         "NOT the authors' spaCy noun-chunk rule)")

    def __call__(self, caption: str) -> Optional[str]:
        if self.nlp is None:
            m = _REGEX_SUBJECT.match(caption)
            return m.group(1) if m else None
        chunk = next(iter(self.nlp(caption).noun_chunks), None)
        return None if chunk is None else chunk.text
