"""Aggregation of the per-item records into the paper's tables (the ``results`` dict a run writes to
``results.json``): counts, scores and segments, causal tracing per segment, negator-selective heads and the
layer zoom, confounds.

Indexing: in every table, hidden-state layers are the paper's (0 = embeddings output, l = output of block
l); heads are named by :func:`hooked_clip.names.head_label` (0-indexed, "L3H1" = ``blocks.3``, head 1) as every
analysis names them, with the paper's 1-indexed label (``paper_head``, "Layer 4 Head 2") beside them; the Δ and zoom
tables' layer and head axes are 1-indexed as in the paper.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from hooked_clip.names import head_label, paper_head_label
from hooked_clip.analyses.valse_negation.layout import FURTHER_ROW, NEGATOR_ROW, ROWS, PairLayout, is_absent, row_labels
from hooked_clip.analyses.valse_negation.segments import SEGMENTS, segment_counts

LOCATIONS = ("caption", "foil")
NO_PEOPLE = "There are no people."  # 44 identical caption-negated items (PAPER.md §6.2)
SIZE_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.35)
PAPER_ZOOM_LAYER = 3  # blocks.3, the paper's "layer 4"
ZOOM_RULES = {
    "paper": "the paper's rules: always layer 4 (blocks.3); every row a plain mean over all items, an item "
             "without further subject tokens counting 0 in the 'subj further' row (the max over them); the "
             "negator's own query row kept",
    "strongest-layer": "the layer with the largest mean Δ of this model; each row averaged over the items that "
                       "have it (the 'subj further' row over items with further subject tokens only), i.e. how "
                       "strongly those tokens attend to the negator where they exist",
}
INDEXING = ("hidden-state layers: 0 = embeddings output, l = output of block l; head labels 0-indexed as in every "
            "hooked_clip output (L3H1 = blocks.3 head 1), the paper's 1-indexed label beside them (Layer 4 Head 2); "
            "the tables' attention layers and heads 1-indexed as in the paper")


def aggregate(records: dict[str, dict], n_layers: int, n_heads: int, zoom: str = "paper") -> dict:
    """The paper's tables from the per-item records; ``zoom`` picks the layer-zoom rule (``ZOOM_RULES``)."""
    _check_zoom_rule(zoom)
    recs = list(records.values())
    aligned = [r for r in recs if "aligned" in r]
    has_d = any("d" in r for r in recs)
    layouts = [PairLayout.from_record(r["aligned"]) for r in aligned]
    rows = row_labels(layouts)
    out: dict = {"indexing": INDEXING, "counts": _counts(recs, aligned), "n_layers": n_layers, "n_heads": n_heads}
    if aligned:
        lengths = [r["aligned"]["n_tokens"] for r in aligned]
        out["lengths"] = {"no_further": sum(x.n_further == 0 for x in layouts), "tokens_min": min(lengths),
                          "tokens_max": max(lengths)}
    if has_d:
        out.update(_scores_and_tracing(recs, aligned, rows))
    heads = _heads(aligned, n_layers, n_heads, has_d)
    if heads:
        out["heads"] = heads
        out["zoom"] = _zoom(aligned, heads, rows, n_layers, zoom)
    out["confounds"] = _confounds(recs, aligned, has_d)
    return out


def _check_zoom_rule(rule: str) -> None:
    if rule not in ZOOM_RULES:
        raise ValueError(f"zoom rule {rule!r} is not one of {sorted(ZOOM_RULES)}.")


def _at(group: list[dict], loc: str) -> list[dict]:
    """The records with the negation in ``loc`` ("caption" or "foil"; "all": every record)."""
    return [r for r in group if loc == "all" or r["negation_in"] == loc]


def _counts(recs: list[dict], aligned: list[dict]) -> dict:
    return {"valid": len(recs), "aligned": len(aligned),
            **{f"valid_{loc}": len(_at(recs, loc)) for loc in LOCATIONS},
            **{f"aligned_{loc}": len(_at(aligned, loc)) for loc in LOCATIONS}}


def _pearson(x, y) -> Optional[float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _score_table(ds: list[float]) -> dict:
    ds = np.asarray(ds, float)
    return {"n": int(len(ds)), "accuracy": float((ds > 0).mean()) if len(ds) else None, "segments": segment_counts(ds)}


def _scores_and_tracing(recs: list[dict], aligned: list[dict], rows: list[str]) -> dict:
    """Scores and segments of both sentence kinds, the aligned set's d statistics, the CTE per location and
    segment (and the ROME variant's, if measured)."""
    out: dict = {"scores": {
        "original": {g: _score_table([r["d"] for r in _at(recs, g)]) for g in ("all", *LOCATIONS)},
        "aligned": {g: _score_table([r["aligned"]["d"] for r in _at(aligned, g)]) for g in ("all", *LOCATIONS)},
    }}
    if aligned:
        out["d_stats"] = _d_stats(aligned)
    out["cte"] = {loc: {seg: cte_matrix([r for r in _at(aligned, loc) if seg in ("all", r["aligned"]["segment"])],
                                         rows_labels=rows)
                        for seg in (*SEGMENTS, "all")} for loc in LOCATIONS}
    if aligned and "rome_rows" in aligned[0]["aligned"]:
        out["rome"] = {loc: cte_matrix(_at(aligned, loc), "rome_rows", rows) for loc in LOCATIONS}
    return out


def _d_stats(aligned: list[dict]) -> dict:
    """The score statistics PAPER.md gives for the aligned set: range and sample SD of d, mean d per
    segment, range of the caption logits."""
    d = np.array([r["aligned"]["d"] for r in aligned], float)
    s_c = np.array([r["aligned"].get("s_caption", np.nan) for r in aligned], float)
    seg = np.array([r["aligned"]["segment"] for r in aligned])
    out = {"min": float(d.min()), "max": float(d.max()), "sd": float(d.std(ddof=1)) if len(d) > 1 else None,
           "caption_logit_min": float(np.nanmin(s_c)) if np.isfinite(s_c).any() else None,
           "caption_logit_max": float(np.nanmax(s_c)) if np.isfinite(s_c).any() else None}
    for name in SEGMENTS:
        out[f"mean_{name}"] = float(d[seg == name].mean()) if (seg == name).any() else None
    return out


def cte_matrix(recs: list[dict], key: str = "cte_rows", rows_labels: Optional[list[str]] = None) -> dict:
    """Mean over items of [layer, row] values; the "subj further" row weighted by each item's number of
    further tokens (items with none weigh 0), as the authors average. Returns rows x layers, the
    per-layer std over rows from the negator on (absent rows left out) and the column sums. ``rows_labels``:
    the rows' labels (default: CLIP's ``ROWS``)."""
    labels = ROWS if rows_labels is None else rows_labels
    if not recs:
        return {"n": 0, "rows": labels, "matrix": None, "std": None, "mean_std": None}
    rows = np.array([r["aligned"][key] for r in recs], float)  # [n, L+1, 8]
    with warnings.catch_warnings():  # all-NaN columns (e.g. no further tokens anywhere) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(rows, axis=0)
    if key == "cte_rows":
        w = np.array([r["aligned"]["n_further"] for r in recs], float)
        fur = np.nan_to_num(rows[:, :, FURTHER_ROW])
        mean[:, FURTHER_ROW] = (fur * w[:, None]).sum(0) / w.sum() if w.sum() > 0 else np.nan
    with warnings.catch_warnings():  # a layer whose rows are all NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(mean[:, NEGATOR_ROW:], axis=1, ddof=0)
    return {"n": len(recs), "rows": labels, "matrix": mean.T.tolist(), "std": std.tolist(),
            "mean_std": float(np.nanmean(std)), "column_sums": np.nansum(mean, axis=1).tolist()}


def _heads(aligned: list[dict], n_layers: int, n_heads: int, has_d: bool) -> dict:
    """Per location: the mean max attention difference Δ [layer, head], its layer means, the top five heads,
    and (with scores) the per-head Pearson r of Δ with d."""
    heads = {}
    for loc in LOCATIONS:
        group = _at(aligned, loc)
        if not group:
            continue
        delta = np.array([r["aligned"]["head_delta"] for r in group], float)  # [n, L, H]
        mean = delta.mean(0)
        order = np.dstack(np.unravel_index(np.argsort(-mean, axis=None), mean.shape))[0][:5]
        entry = {"n": len(group), "delta_mean": mean.tolist(), "layer_mean": mean.mean(1).tolist(),
                 "top": [{"head": head_label(l, h), "paper_head": paper_head_label(l, h), "delta": float(mean[l, h])}
                         for l, h in order]}
        if has_d:
            d = np.array([r["aligned"]["d"] for r in group])
            entry["corr_with_d"] = [[_pearson(delta[:, l, h], d) for h in range(n_heads)] for l in range(n_layers)]
        heads[loc] = entry
    return heads


def zoom_rows(rows, rule: str = "paper") -> np.ndarray:
    """One layer's per-item zoom rows [items, heads, 8] (NaN where an item has no such query row) → [heads, 8]
    by ``rule`` (see ``ZOOM_RULES``): "paper" counts a missing row as 0 in a plain mean over all items;
    "strongest-layer" averages over the items that have the row."""
    rows = np.asarray(rows, float)
    if rule == "paper":
        return np.nan_to_num(rows, nan=0.0).mean(0)
    if rule == "strongest-layer":
        with warnings.catch_warnings():  # a row no item has stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(rows, axis=0)
    raise ValueError(f"zoom rule {rule!r} is not one of {sorted(ZOOM_RULES)}.")


def _zoom_layer(heads: dict, n_layers: int, rule: str) -> Optional[int]:
    """The zoomed block (0-indexed) by ``rule``; None where the paper's rule has no layer 4."""
    if rule == "paper":
        return PAPER_ZOOM_LAYER if n_layers > PAPER_ZOOM_LAYER else None
    return int(np.argmax(np.mean([heads[loc]["layer_mean"] for loc in heads], axis=0)))


def _zoom(aligned: list[dict], heads: dict, rows: list[str], n_layers: int, rule: str) -> dict:
    """The layer zoom: mean attention difference to the negator per head and query row, one layer."""
    layer = _zoom_layer(heads, n_layers, rule)
    out: dict = {"rule": rule, "definition": ZOOM_RULES[rule], "rows": rows, "layer": None if layer is None else layer + 1}
    if layer is None:
        out["note"] = f"the model has {n_layers} layers, so there is no layer 4 to zoom on"
        return out
    for loc in heads:
        group = _at(aligned, loc)
        z = zoom_rows([r["aligned"]["head_rows"][layer] for r in group], rule)
        z[:, [i for i, label in enumerate(rows) if is_absent(label)]] = np.nan  # no such token: not a 0
        out[loc] = z.tolist()
        out[f"n_{loc}"] = len(group)
        out[f"n_{loc}_without_further"] = sum(PairLayout.from_record(r["aligned"]).n_further == 0 for r in group)
    return out


def _confounds(recs: list[dict], aligned: list[dict], has_d: bool) -> dict:
    """Caption-foil similarity and the subjects always; with scores, the Pearson r of similarity, length and
    subject size with d."""
    out: dict = {"similarity_by_location": {loc: float(np.mean([r["aligned"]["similarity"] for r in _at(aligned, loc)]))
                                            for loc in LOCATIONS if _at(aligned, loc)}}
    if aligned:
        sims = [r["aligned"]["similarity"] for r in aligned]
        out["similarity_range"] = {"min": float(min(sims)), "max": float(max(sims))}
    foil = _at(aligned, "foil")
    if any("subject" in r["aligned"] for r in foil):
        out["subjects"] = {"foil_pairs": len(foil), "with_subject": sum(r["aligned"].get("subject") is not None for r in foil),
                           "without_subject": [r["id"] for r in foil if r["aligned"].get("subject") is None]}
    if has_d:
        out.update(_relations_with_d(aligned))
    return out


def _relation(group: list[dict], key: str) -> dict:
    return {"n": len(group), "r": _pearson([r["aligned"][key] for r in group], [r["aligned"]["d"] for r in group])}


def _relations_with_d(aligned: list[dict]) -> dict:
    out: dict = {}
    for loc in LOCATIONS:
        group = _at(aligned, loc)
        out[f"similarity_vs_d_{loc}"] = _relation(group, "similarity")
        out[f"length_vs_d_{loc}"] = _relation(group, "n_tokens")
        if loc == "caption":
            rest = [r for r in group if r["caption"] != NO_PEOPLE]
            out["similarity_vs_d_caption_without_no_people"] = _relation(rest, "similarity")
            out["length_vs_d_caption_without_no_people"] = _relation(rest, "n_tokens")
    out["similarity_vs_d_all"] = _relation(aligned, "similarity")
    sized = [r for r in _at(aligned, "foil") if r["aligned"].get("subject_area") is not None]
    if sized:
        out.update(_subject_size(sized))
    return out


def _subject_size(sized: list[dict]) -> dict:
    """Subject size (soft and binary area) against d, its quartiles, and the accuracy above each size."""
    size, d = [r["aligned"]["subject_area"] for r in sized], [r["aligned"]["d"] for r in sized]
    out: dict = {"subject_size_vs_d_foil": {"n": len(sized), "r": _pearson(size, d)}}
    binary = [r for r in sized if r["aligned"].get("subject_area_binary") is not None]
    if binary:
        out["subject_size_binary_vs_d_foil"] = {"n": len(binary), "r": _pearson(
            [r["aligned"]["subject_area_binary"] for r in binary], [r["aligned"]["d"] for r in binary])}
    out["subject_size_quartiles"] = [float(q) for q in np.percentile(size, [0, 25, 50, 75, 100])]
    out["accuracy_above_size"] = [{"threshold": t, "n": int(sum(s > t for s in size)),
                                   "accuracy": float(np.mean([x > 0 for s, x in zip(size, d) if s > t]))
                                   if any(s > t for s in size) else None}
                                  for t in SIZE_THRESHOLDS]
    return out
