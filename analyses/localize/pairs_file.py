"""Minimal pairs: the documented pairs file (``--data``) and the shipped datasets (``--dataset NAME``).

The pairs format is JSON lines (``.jsonl``, or ``.jsonl.gz``), one pair per line::

    {"id": "p1", "caption": "There are two dogs.", "foil": "There are three dogs.", "image": "dogs.jpg", "phenomenon": "counting"}

- ``id`` (required, unique in the file): names the pair in every result and every message;
- ``caption`` (required): the sentence that fits the image (or, without images, the reference sentence);
- ``foil`` (required): the minimally changed sentence; it may differ in length (see ``align.py``);
- ``image`` (optional): an image file name, looked up in the folder given by ``--images``;
- ``phenomenon`` (optional): the group the pair is reported under (default: the file's name).

A line that is not a JSON object with the three required strings is an error naming the line. A pair that
cannot be studied is dropped, and named with the reason in ``PairSet.dropped`` (and the report): a caption
equal to its foil (nothing changed), an empty sentence. Pairs the model cannot take (too long, no alignment)
are dropped later by the study, named the same way.
"""

from __future__ import annotations

import difflib
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from hooked_clip.analyses.results import CompactRepr

DATASETS_DIR = Path(__file__).parent / "datasets"
REQUIRED = ("id", "caption", "foil")
OPTIONAL = ("image", "phenomenon")


class PairsFormatError(ValueError):
    """A pairs file that does not follow the documented format."""


@dataclass(frozen=True)
class MinimalPair:
    """One caption/foil pair. ``source``: the dataset name or file it came from."""

    id: str
    caption: str
    foil: str
    image: Optional[str] = None
    phenomenon: str = ""
    source: str = ""


@dataclass(repr=False)
class PairSet(CompactRepr):
    """Pairs kept and pairs dropped: ``dropped`` holds (id, reason) for every pair left out."""

    pairs: list[MinimalPair]
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def phenomena(self) -> list[str]:
        """The phenomena in order of first appearance."""
        return list(dict.fromkeys(p.phenomenon for p in self.pairs))

    def head(self, n: Optional[int]) -> "PairSet":
        """The first ``n`` pairs of each phenomenon (all with None)."""
        if n is None:
            return self
        seen: dict[str, int] = {}
        kept = []
        for p in self.pairs:
            seen[p.phenomenon] = seen.get(p.phenomenon, 0) + 1
            if seen[p.phenomenon] <= n:
                kept.append(p)
        return PairSet(kept, list(self.dropped))

    def __add__(self, other: "PairSet") -> "PairSet":
        return PairSet(self.pairs + other.pairs, self.dropped + other.dropped)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([p.__dict__ for p in self.pairs], columns=list(MinimalPair.__dataclass_fields__))


def parse_pairs(lines: Iterable[str], source: str, phenomenon: Optional[str] = None) -> PairSet:
    """Pairs of the JSON lines ``lines`` (blank lines skipped); ``source`` names them in messages and
    ``phenomenon`` is the default group."""
    default = phenomenon if phenomenon is not None else source
    pairs, dropped, ids = [], [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairsFormatError(f"{source} line {n} is not JSON ({e.msg}); write one JSON object per line "
                                   '(e.g. {"id": "p1", "caption": "...", "foil": "..."}).') from None
        if not isinstance(row, dict):
            raise PairsFormatError(f"{source} line {n} is a JSON {type(row).__name__}, not an object with "
                                   f"{list(REQUIRED)}.")
        bad = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if bad:
            raise PairsFormatError(f"{source} line {n} lacks the string field(s) {bad}; every pair needs "
                                   f"{list(REQUIRED)} (optional: {list(OPTIONAL)}).")
        unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise PairsFormatError(f"{source} line {n} has unknown field(s) {unknown}; the fields are "
                                   f"{list(REQUIRED + OPTIONAL)}.")
        for k in OPTIONAL:
            if k in row and row[k] is not None and not isinstance(row[k], str):
                raise PairsFormatError(f"{source} line {n}: {k} must be a string, got {row[k]!r}.")
        pid = row["id"]
        if pid in ids:
            raise PairsFormatError(f"{source} line {n}: the id {pid!r} is used twice; give every pair its own id.")
        ids.add(pid)
        caption, foil = row["caption"].strip(), row["foil"].strip()
        if not caption or not foil:
            dropped.append((pid, "empty caption or foil"))
        elif caption == foil:
            dropped.append((pid, "the caption equals the foil (nothing changed)"))
        else:
            pairs.append(MinimalPair(pid, caption, foil, row.get("image"), row.get("phenomenon") or default, source))
    return PairSet(pairs, dropped)


def read_pairs(path: Union[str, Path], phenomenon: Optional[str] = None) -> PairSet:
    """A pairs file (JSON lines, optionally gzipped; see the module docstring). ``phenomenon``: the group of
    pairs without their own (default: the file's name without its suffixes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}; pass a JSON-lines file (one pair per line: id, caption, "
                                "foil, optional image and phenomenon).")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return parse_pairs(fh, str(path), phenomenon or path.name.split(".")[0])


def write_pairs(path: Union[str, Path], pairs: Iterable[MinimalPair]) -> Path:
    """Write ``pairs`` as a pairs file (JSON lines, the format :func:`read_pairs` reads), atomically."""
    path = Path(path)
    lines = [json.dumps({"id": p.id, "caption": p.caption, "foil": p.foil, "image": p.image,
                         "phenomenon": p.phenomenon or None}, ensure_ascii=False) + "\n" for p in pairs]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ shipped datasets
def dataset_names() -> list[str]:
    """Every shipped dataset, e.g. ``valse:counting-hard``, ``sugarcrepe:replace-rel``, ``aro:negclip``."""
    return sorted(p.name.removesuffix(".jsonl.gz").replace("__", ":") for p in DATASETS_DIR.glob("*.jsonl.gz"))


def dataset_sources() -> list[str]:
    """The collections (``valse``, ``sugarcrepe``, ``aro``): each name alone loads all of its datasets."""
    return sorted({n.split(":")[0] for n in dataset_names()})


def load_dataset(name: str) -> PairSet:
    """A shipped dataset by name (``valse:counting-hard``), or a whole collection (``valse``). Each pair's
    phenomenon is the dataset's name. Licences and provenance: ``datasets/PROVENANCE.md``."""
    names = dataset_names()
    if name in dataset_sources():
        chosen = [n for n in names if n.split(":")[0] == name]
    elif name in names:
        chosen = [name]
    else:
        close = difflib.get_close_matches(name, names + dataset_sources(), n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"no shipped dataset {name!r}.{hint} The datasets: {', '.join(names)} (or a whole "
                         f"collection: {', '.join(dataset_sources())}); your own pairs go in a file passed with --data.")
    out = PairSet([])
    for n in chosen:
        with gzip.open(DATASETS_DIR / (n.replace(":", "__") + ".jsonl.gz"), "rt", encoding="utf-8") as fh:
            got = parse_pairs(fh, n)
        out = out + PairSet([MinimalPair(p.id, p.caption, p.foil, p.image, n, n) for p in got.pairs], got.dropped)
    return out


__all__ = ["MinimalPair", "PairSet", "PairsFormatError", "dataset_names", "dataset_sources", "load_dataset",
           "parse_pairs", "read_pairs", "write_pairs"]
