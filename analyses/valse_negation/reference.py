"""Comparison of a run with a per-item reference file in the authors' format (``--reference FILE``).

The format (the authors released one for OpenAI CLIP ViT-B/32 on the aligned set; we never ship it): a JSON
object keyed by VALSE id, each value an object with

- ``caption``, ``foil``: the aligned sentences as scored; ``negation``: "caption" or "foil";
- ``logit_caption``, ``logit_foil``: logit_scale × cosine (100 × cosine for that model); ``score`` =
  logit_caption − logit_foil (d); ``segment``: "correct" / "ambiguous" / "incorrect";
- ``positions``: the number of CLIP tokens; ``similarity_caption_foil``: cosine of the two text embeddings;
- ``subject``, ``subject_area``, ``subject_area_binary``: the subject prompt and its CLIPSeg areas
  (null where there is none, e.g. negation in the caption);
- optional (:data:`OPTIONAL_FIELDS`, compared where the reference has them, written by every run): ``correct``
  (d > 0), ``dataset_idx`` (VALSE's Visual7W id, a string) and ``image_file``.

:func:`to_reference_format` writes a run in that format; :func:`compare` sets a run beside a reference file
item by item; :func:`section` is the report's replication section. Ids in only one of the two and
malformed fields are named (errors for malformed fields, listed in the section for ids), never dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np

from hooked_clip.analyses.valse_negation.segments import SEGMENTS

_NUMBER, _TEXT = "number", "text"
FIELDS = {"caption": _TEXT, "foil": _TEXT, "negation": _TEXT, "logit_caption": _NUMBER, "logit_foil": _NUMBER,
          "score": _NUMBER, "segment": _TEXT, "positions": _NUMBER, "similarity_caption_foil": _NUMBER,
          "subject": _TEXT, "subject_area": _NUMBER, "subject_area_binary": _NUMBER}
NULLABLE = ("subject", "subject_area", "subject_area_binary")
OPTIONAL_FIELDS = {"correct": bool, "dataset_idx": (str, int), "image_file": str}
IDENTITY_FIELDS = ("caption", "foil", "negation", "image_file", "dataset_idx")  # must be equal item by item
# The verdict's tolerance on |Δ logit| and |Δ d| (``--reference-tolerance``): 0.01 logits, i.e. 0.0001 cosine at
# logit scale 100. A choice, not the paper's: fp32 runs of the same weights on other hardware or library versions
# differ by ~1e-4 logits; one intensity level of one pixel moves d by up to ~1e-2.
DEFAULT_TOLERANCE = 0.01


class ReferenceFormatError(ValueError):
    """The reference file is not in the authors' per-item format."""


def load_reference(path: Union[str, Path]) -> dict[str, dict]:
    """The reference items by VALSE id, every field checked (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_ids)
    except FileNotFoundError:
        raise FileNotFoundError(f"no reference file at {path}; pass the authors' per-item JSON file.") from None
    except ReferenceFormatError as e:
        raise ReferenceFormatError(f"{path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ReferenceFormatError(f"{path} is not valid JSON ({e}); expected an object of items keyed by VALSE id.") from None
    if not isinstance(data, dict) or not data:
        raise ReferenceFormatError(f"{path} must hold a JSON object of items keyed by VALSE id "
                                   "(e.g. 'existence_visual7w_1': {{'caption': ..., 'score': ...}}).")
    for key, item in data.items():
        _check_item(path, key, item)
    return data


def _no_duplicate_ids(pairs: list) -> dict:
    """A JSON object that names a key twice is refused (``json`` would keep the last silently)."""
    seen, dup = set(), []
    for k, _ in pairs:
        if k in seen:
            dup.append(k)
        seen.add(k)
    if dup:
        raise ReferenceFormatError(f"the id(s) {dup[:5]} appear twice; keep one record per item.")
    return dict(pairs)


def _check_item(path: Path, key: str, item) -> None:
    where = f"{path}: item {key!r}"
    if not isinstance(item, dict):
        raise ReferenceFormatError(f"{where} is a {type(item).__name__}, not an object with the fields {sorted(FIELDS)}.")
    missing = [f for f in FIELDS if f not in item]
    if missing:
        raise ReferenceFormatError(f"{where} lacks the field(s) {missing}; every item needs {sorted(FIELDS)} "
                                   f"(null allowed for {list(NULLABLE)}).")
    for field, kind in FIELDS.items():
        value = item[field]
        if value is None and field in NULLABLE:
            continue
        ok = (isinstance(value, str) if kind == _TEXT else
              isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise ReferenceFormatError(f"{where}: {field}={value!r} is not a {'string' if kind == _TEXT else 'finite number'}.")
    if not (float(item["positions"]).is_integer() and item["positions"] >= 2):
        raise ReferenceFormatError(f"{where}: positions={item['positions']} is not a number of tokens (a whole number >= 2).")
    if not -1 - 1e-6 <= item["similarity_caption_foil"] <= 1 + 1e-6:
        raise ReferenceFormatError(f"{where}: similarity_caption_foil={item['similarity_caption_foil']} is not a cosine "
                                   "(it must lie in [-1, 1]).")
    for field in ("subject_area", "subject_area_binary"):
        if item[field] is not None and not 0 <= item[field] <= 1:
            raise ReferenceFormatError(f"{where}: {field}={item[field]} is not a share of the image (it must lie in [0, 1]).")
    for field, kind in OPTIONAL_FIELDS.items():
        if field in item and item[field] is not None and (not isinstance(item[field], kind)
                                                          or (kind is not bool and isinstance(item[field], bool))):
            raise ReferenceFormatError(f"{where}: {field}={item[field]!r} is not a {kind}.")
    if item.get("correct") is not None and item["correct"] != (item["score"] > 0):
        raise ReferenceFormatError(f"{where}: correct={item['correct']} but score={item['score']} (correct means d > 0).")
    if item["negation"] not in ("caption", "foil"):
        raise ReferenceFormatError(f"{where}: negation={item['negation']!r} must be 'caption' or 'foil'.")
    if item["segment"] not in SEGMENTS:
        raise ReferenceFormatError(f"{where}: segment={item['segment']!r} must be one of {list(SEGMENTS)}.")
    if abs(item["score"] - (item["logit_caption"] - item["logit_foil"])) > 1e-3:
        raise ReferenceFormatError(f"{where}: score={item['score']} is not logit_caption - logit_foil "
                                   f"({item['logit_caption']} - {item['logit_foil']}).")


def to_reference_format(records: dict[str, dict], items=None) -> dict[str, dict]:
    """A run's aligned pairs in the authors' per-item format (logit fields and ``correct`` null in a text-only
    run). ``items``: the run's :class:`~hooked_clip.analyses.valse_negation.data.Item` objects (for ``image_file``
    and ``dataset_idx``); default the shipped VALSE existence items."""
    if items is None:
        from hooked_clip.analyses.valse_negation.data import load_items

        items = load_items()
    by_id = {x.id: x for x in items}
    out = {}
    for rid, r in records.items():
        a = r.get("aligned")
        if a is None:
            continue
        item = by_id.get(rid)
        d = a.get("d")
        out[rid] = {"caption": a["caption"], "foil": a["foil"], "negation": r["negation_in"],
                    "correct": None if d is None or d != d else bool(d > 0),
                    "dataset_idx": None if item is None else str(item.raw.get("dataset_idx", "")) or None,
                    "image_file": None if item is None else item.image_file,
                    "logit_caption": a.get("s_caption"), "logit_foil": a.get("s_foil"), "score": a.get("d"),
                    "segment": a.get("segment"), "positions": a["n_tokens"],
                    "similarity_caption_foil": a["similarity"], "subject": a.get("subject"),
                    "subject_area": a.get("subject_area"), "subject_area_binary": a.get("subject_area_binary")}
    return out


def _pearson(a, b) -> Optional[float]:
    """Pearson r, or None where it is undefined (fewer than 3 items, or a constant side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else None


def _stats(x) -> dict:
    x = np.abs(np.asarray(x, float))
    return {"n": int(len(x)), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)), "max": float(x.max())}


def compare(records: dict[str, dict], reference: dict[str, dict], *, limited: bool = False,
            tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Item-by-item comparison of a run (``records``) with a reference (``load_reference``). ``limited``: the
    run covered only part of the data on purpose (``--limit``), so reference ids it lacks are not a failure."""
    ours = to_reference_format(records)
    common = [k for k in reference if k in ours]
    out: dict = {"n_reference": len(reference), "n_run": len(ours), "n_common": len(common), "tolerance": tolerance,
                 "missing_from_run": sorted(set(reference) - set(ours)), "extra_in_run": sorted(set(ours) - set(reference)),
                 "limited": limited}
    out["text_differs"] = [{"id": k, "field": f, "run": ours[k][f], "reference": reference[k][f]}
                           for k in common for f in IDENTITY_FIELDS
                           if f in reference[k] and str(ours[k][f]) != str(reference[k][f])]
    scored = [k for k in common if ours[k]["score"] is not None]
    if scored:
        out["abs_diff"] = {f: _stats([ours[k][f] - reference[k][f] for k in scored])
                           for f in ("logit_caption", "logit_foil", "score")}
        out["score_r"] = _pearson([ours[k]["score"] for k in scored], [reference[k]["score"] for k in scored])
        moved = [{"id": k, "run": ours[k]["segment"], "reference": reference[k]["segment"]}
                 for k in scored if ours[k]["segment"] != reference[k]["segment"]]
        out["segments"] = {"n": len(scored), "agree": len(scored) - len(moved), "moved": moved}
        flipped = [{"id": k, "run": ours[k]["correct"], "reference": reference[k].get("correct", reference[k]["score"] > 0)}
                   for k in scored if ours[k]["correct"] != reference[k].get("correct", reference[k]["score"] > 0)]
        out["correct"] = {"n": len(scored), "agree": len(scored) - len(flipped), "differ": flipped}
    if common:
        a = np.array([ours[k]["similarity_caption_foil"] for k in common], float)
        b = np.array([reference[k]["similarity_caption_foil"] for k in common], float)
        out["similarity"] = {"n": len(common), "r": _pearson(a, b), "max_abs_diff": float(np.abs(a - b).max())}
        diff = [{"id": k, "run": ours[k]["positions"], "reference": reference[k]["positions"]}
                for k in common if ours[k]["positions"] != reference[k]["positions"]]
        out["positions"] = {"n": len(common), "equal": len(common) - len(diff), "differ": diff}
    with_subject = [k for k in common if ours[k]["subject"] is not None or reference[k]["subject"] is not None]
    if any(ours[k]["subject"] is not None for k in common):
        diff = [{"id": k, "run": ours[k]["subject"], "reference": reference[k]["subject"]}
                for k in with_subject if ours[k]["subject"] != reference[k]["subject"]]
        out["subjects"] = {"n": len(with_subject), "equal": len(with_subject) - len(diff), "differ": diff}
        sized = [k for k in common if ours[k]["subject_area"] is not None and reference[k]["subject_area"] is not None]
        if sized:
            out["subject_area_abs_diff"] = _stats([ours[k]["subject_area"] - reference[k]["subject_area"] for k in sized])
        binary = [k for k in common
                  if ours[k]["subject_area_binary"] is not None and reference[k]["subject_area_binary"] is not None]
        if binary:
            out["subject_area_binary_abs_diff"] = _stats([ours[k]["subject_area_binary"] - reference[k]["subject_area_binary"]
                                                          for k in binary])
    out["verdict"] = _verdict(out)
    return out


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _verdict(c: dict) -> str:
    failed, skipped = [], []
    if c["extra_in_run"]:
        failed.append(f"{_n(len(c['extra_in_run']), 'run id')} not in the reference")
    if c["missing_from_run"] and not c["limited"]:
        failed.append(f"{_n(len(c['missing_from_run']), 'reference id')} not in the run")
    if c["text_differs"]:
        failed.append(f"{_n(len({d['id'] for d in c['text_differs']}), 'item')} with other sentences or negation side")
    if "abs_diff" in c:
        worst = c["abs_diff"]["score"]["max"]
        if max(s["max"] for s in c["abs_diff"].values()) > c["tolerance"]:
            failed.append(f"logits differ by up to {max(s['max'] for s in c['abs_diff'].values()):.3g} "
                          f"(max |Δd| {worst:.3g}) > {c['tolerance']}")
        if c["segments"]["moved"]:
            failed.append(f"{_n(len(c['segments']['moved']), 'item')} in another segment")
        if c.get("correct", {}).get("differ"):
            failed.append(f"{_n(len(c['correct']['differ']), 'item')} on the other side of d = 0")
    else:
        skipped.append("logits, d and segments (no image scores in this run)")
    if c.get("positions", {}).get("differ"):
        failed.append(f"{_n(len(c['positions']['differ']), 'item')} with another token count")
    if "subjects" not in c:
        skipped.append("subject prompts (none in this run)")
    elif c["subjects"]["differ"]:
        failed.append(f"{_n(len(c['subjects']['differ']), 'item')} with another subject prompt")
    scope = f"{c['n_common']} common items" + (f" (this run was limited: {len(c['missing_from_run'])} reference ids not run)"
                                               if c["limited"] and c["missing_from_run"] else "")
    head = ("REPRODUCED" if not failed else "DIFFERS") + f" on {scope}"
    if failed:
        head += ": " + "; ".join(failed)
    else:
        head += f": every compared quantity within {c['tolerance']:g} logits / identical"
    return head + (f". Not compared: {'; '.join(skipped)}." if skipped else ".")


def _listing(rows: list[dict], limit: int = 20) -> list[str]:
    shown = [f"  - {r['id']}: run {r['run']!r} / reference {r['reference']!r}" + (f" ({r['field']})" if "field" in r else "")
             for r in rows[:limit]]
    return shown + ([f"  - … and {len(rows) - limit} more (all in results.json → replication)"] if len(rows) > limit else [])


def section(c: dict, reference_path: Optional[str] = None) -> list[str]:
    """The report's replication section."""
    lines = ["## Replication: item by item against the reference file", "",
             f"Reference: {reference_path or 'given file'} ({c['n_reference']} items); this run: {c['n_run']} aligned "
             f"pairs; common: {c['n_common']}. Tolerance on |Δ logit| and |Δ d|: {c['tolerance']:g} logits "
             f"(--reference-tolerance; default {DEFAULT_TOLERANCE:g}, a choice: see reference.py).", "",
             f"**Verdict: {c['verdict']}**", ""]
    for key, label in (("missing_from_run", "Reference ids not in this run"), ("extra_in_run", "Run ids not in the reference")):
        if c[key]:
            ids = c[key]
            lines.append(f"- {label} ({len(ids)}): {', '.join(ids[:20])}" + (" …" if len(ids) > 20 else ""))
    if c["text_differs"]:
        lines += [f"- Sentences or negation side differ ({len(c['text_differs'])}):"] + _listing(c["text_differs"])
    if "abs_diff" in c:
        lines += ["", "| per item | n | median | 95th percentile | max |", "|---|---|---|---|---|"]
        for f, label in (("logit_caption", "\\|Δ logit_caption\\|"), ("logit_foil", "\\|Δ logit_foil\\|"), ("score", "\\|Δ d\\|")):
            s = c["abs_diff"][f]
            lines.append(f"| {label} | {s['n']} | {s['median']:.4g} | {s['p95']:.4g} | {s['max']:.4g} |")
        r = "–" if c.get("score_r") is None else f"{c['score_r']:.4f}"
        lines += ["", f"- d: Pearson r = {r} between this run and the reference over {c['abs_diff']['score']['n']} items"]
        seg = c["segments"]
        lines += [f"- Segments agree on {seg['agree']} of {seg['n']} items"
                  + (f"; moved ({len(seg['moved'])}):" if seg["moved"] else ".")] + _listing(seg["moved"])
        if "correct" in c:
            k = c["correct"]
            lines += [f"- correct (d > 0) agrees on {k['agree']} of {k['n']} items" + (":" if k["differ"] else ".")]
            lines += _listing(k["differ"])
    if "similarity" in c:
        s = c["similarity"]
        r = "–" if s["r"] is None else f"{s['r']:.4f}"
        lines.append(f"- similarity_caption_foil: Pearson r = {r} over {s['n']} items, max |Δ| = {s['max_abs_diff']:.3g}")
        p = c["positions"]
        lines += [f"- positions (token count) equal on {p['equal']} of {p['n']} items" + (":" if p["differ"] else ".")] + _listing(p["differ"])
    if "subjects" in c:
        s = c["subjects"]
        lines += [f"- subject prompt equal on {s['equal']} of {s['n']} items with a subject in either" + (":" if s["differ"] else ".")]
        lines += _listing(s["differ"])
        if "subject_area_abs_diff" in c:
            a = c["subject_area_abs_diff"]
            lines.append(f"- |Δ subject_area| over {a['n']} items: median {a['median']:.3g}, max {a['max']:.3g}")
        if "subject_area_binary_abs_diff" in c:
            a = c["subject_area_binary_abs_diff"]
            lines.append(f"- |Δ subject_area_binary| (share > 0.25) over {a['n']} items: median {a['median']:.3g}, "
                         f"max {a['max']:.3g}")
    return lines + [""]
