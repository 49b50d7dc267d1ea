"""Aggregation of the per-item records into the paper's tables, and the outputs of a run directory:
``results.json``, one CSV per table, PNG figures, an offline HTML attention view and ``report.md``.

Indexing: in every table, hidden-state layers are the paper's (0 = embeddings output, l = output of block
l); attention layers and heads are printed 1-indexed as in the paper ("L4H2" = ``blocks.3``, head 1).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from hooked_clip.analyses.valse_negation import paper
from hooked_clip.analyses.valse_negation.reference import section as replication_section
from hooked_clip.analyses.valse_negation.reference import to_reference_format
from hooked_clip.analyses.valse_negation.layout import (ABSENT, FURTHER_ROW, NEGATOR_ROW, POOLED_ROW, PairLayout, is_absent,
                                                        row_labels)
from hooked_clip.analyses.valse_negation.study import ROWS, atomic_write

SEGMENTS = ("correct", "ambiguous", "incorrect")
SEGMENT_COLORS = {"incorrect": "tab:red", "ambiguous": "tab:grey", "correct": "tab:green"}
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

# The paper's numbers live in paper.py; these two names are kept for code written against them.
REFERENCE = {
    "model": paper.MODEL,
    "accuracy_original_505": paper.SCORES[("original", "all")][1],
    "accuracy_aligned_490": paper.SCORES[("aligned", "all")][1],
    "segments_aligned": dict(zip(SEGMENTS, paper.SCORES[("aligned", "all")][2])),
    "head_delta": {k: paper.TOP_HEADS[k] for k in ("L4H2", "L4H3", "L3H6")},  # (caption, foil)
    "cte_negator_layers_3_4": {loc: tuple(paper.CTE[(loc, "correct")]["rows"]["a/some/no"][3:5]) for loc in LOCATIONS},
    "subject_size_r": paper.CONFOUNDS["subject_size_vs_d_foil"][1],
    "subject_size_binary_r": paper.CONFOUNDS["subject_size_binary_vs_d_foil"][1],
    "similarity_r": {"caption": paper.CONFOUNDS["similarity_vs_d_caption"][1],
                     "caption_without_no_people": paper.CONFOUNDS["similarity_vs_d_caption_without_no_people"][1],
                     "foil": paper.CONFOUNDS["similarity_vs_d_foil"][1]},
}
PAPER_R = {k: r for k, (_, r) in paper.CONFOUNDS.items()}
RELATION_LABELS = {  # human labels of the confound keys (results.json and confounds.csv keep the keys)
    "similarity_vs_d_caption": "caption–foil similarity vs d, negation in caption",
    "similarity_vs_d_caption_without_no_people": "caption–foil similarity vs d, negation in caption, without the "
                                                 "\"There are no people.\" items",
    "similarity_vs_d_foil": "caption–foil similarity vs d, negation in foil",
    "similarity_vs_d_all": "caption–foil similarity vs d, all",
    "length_vs_d_caption": "token length vs d, negation in caption",
    "length_vs_d_caption_without_no_people": "token length vs d, negation in caption, without the \"There are no "
                                             "people.\" items",
    "length_vs_d_foil": "token length vs d, negation in foil",
    "subject_size_vs_d_foil": "subject size (soft area) vs d, negation in foil",
    "subject_size_binary_vs_d_foil": "subject size (binary area, > 0.25) vs d, negation in foil",
}


def _pearson(x, y) -> Optional[float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _score_table(ds: list[float]) -> dict:
    ds = np.asarray(ds, float)
    seg = {"correct": int((ds >= 1).sum()), "ambiguous": int(((ds >= -1) & (ds < 1)).sum()), "incorrect": int((ds < -1).sum())}
    return {"n": int(len(ds)), "accuracy": float((ds > 0).mean()) if len(ds) else None, "segments": seg}


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


def _cte_matrix(recs: list[dict], key: str = "cte_rows", rows_labels: Optional[list[str]] = None) -> dict:
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


def aggregate(records: dict[str, dict], n_layers: int, n_heads: int, zoom: str = "paper") -> dict:
    """The paper's tables from the per-item records; ``zoom`` picks the layer-zoom rule (``ZOOM_RULES``)."""
    if zoom not in ZOOM_RULES:
        raise ValueError(f"zoom rule {zoom!r} is not one of {sorted(ZOOM_RULES)}.")
    recs = list(records.values())
    aligned = [r for r in recs if "aligned" in r]
    has_d = any("d" in r for r in recs)
    layouts = [PairLayout.from_record(r["aligned"]) for r in aligned]
    rows = row_labels(layouts)
    out: dict = {"indexing": "hidden-state layers: 0 = embeddings output, l = output of block l; attention layers "
                             "and heads 1-indexed as in the paper (L4H2 = blocks.3 head 1)",
                 "counts": {"valid": len(recs), "aligned": len(aligned),
                            **{f"valid_{loc}": sum(r["negation_in"] == loc for r in recs) for loc in LOCATIONS},
                            **{f"aligned_{loc}": sum(r["negation_in"] == loc for r in aligned) for loc in LOCATIONS}}}
    out["n_layers"], out["n_heads"] = n_layers, n_heads
    lengths = [r["aligned"]["n_tokens"] for r in aligned]
    if lengths:
        out["lengths"] = {"no_further": sum(x.n_further == 0 for x in layouts), "tokens_min": min(lengths),
                          "tokens_max": max(lengths)}
    if has_d:
        out["scores"] = {
            "original": {g: _score_table([r["d"] for r in recs if g == "all" or r["negation_in"] == g]) for g in ("all", *LOCATIONS)},
            "aligned": {g: _score_table([r["aligned"]["d"] for r in aligned if g == "all" or r["negation_in"] == g]) for g in ("all", *LOCATIONS)},
        }
        if aligned:
            out["d_stats"] = _d_stats(aligned)
        out["cte"] = {loc: {seg: _cte_matrix([r for r in aligned if r["negation_in"] == loc and seg in ("all", r["aligned"]["segment"])],
                                             rows_labels=rows)
                            for seg in (*SEGMENTS, "all")} for loc in LOCATIONS}
        if aligned and "rome_rows" in aligned[0]["aligned"]:
            out["rome"] = {loc: _cte_matrix([r for r in aligned if r["negation_in"] == loc], "rome_rows", rows)
                           for loc in LOCATIONS}
    heads = {}
    for loc in LOCATIONS:
        group = [r for r in aligned if r["negation_in"] == loc]
        if not group:
            continue
        delta = np.array([r["aligned"]["head_delta"] for r in group], float)  # [n, L, H]
        mean = delta.mean(0)
        order = np.dstack(np.unravel_index(np.argsort(-mean, axis=None), mean.shape))[0][:5]
        entry = {"n": len(group), "delta_mean": mean.tolist(), "layer_mean": mean.mean(1).tolist(),
                 "top": [{"head": f"L{l + 1}H{h + 1}", "delta": float(mean[l, h])} for l, h in order]}
        if has_d:
            d = np.array([r["aligned"]["d"] for r in group])
            entry["corr_with_d"] = [[_pearson(delta[:, l, h], d) for h in range(n_heads)] for l in range(n_layers)]
        heads[loc] = entry
    if heads:
        out["heads"] = heads
        if zoom == "paper":
            layer = PAPER_ZOOM_LAYER if n_layers > PAPER_ZOOM_LAYER else None
        else:
            layer = int(np.argmax(np.mean([heads[loc]["layer_mean"] for loc in heads], axis=0)))
        out["zoom"] = {"rule": zoom, "definition": ZOOM_RULES[zoom], "rows": rows,
                       "layer": None if layer is None else layer + 1}
        if layer is None:
            out["zoom"]["note"] = f"the model has {n_layers} layers, so there is no layer 4 to zoom on"
        else:
            for loc in heads:
                group = [r for r in aligned if r["negation_in"] == loc]
                z = zoom_rows([r["aligned"]["head_rows"][layer] for r in group], zoom)
                z[:, [i for i, label in enumerate(rows) if is_absent(label)]] = np.nan  # no such token: not a 0
                out["zoom"][loc] = z.tolist()
                out["zoom"][f"n_{loc}"] = len(group)
                out["zoom"][f"n_{loc}_without_further"] = sum(PairLayout.from_record(r["aligned"]).n_further == 0
                                                              for r in group)
    out["confounds"] = _confounds(recs, aligned, has_d)
    return out


def _confounds(recs, aligned, has_d) -> dict:
    out: dict = {"similarity_by_location": {loc: float(np.mean([r["aligned"]["similarity"] for r in aligned if r["negation_in"] == loc]))
                                            for loc in LOCATIONS if any(r["negation_in"] == loc for r in aligned)}}
    if aligned:
        sims = [r["aligned"]["similarity"] for r in aligned]
        out["similarity_range"] = {"min": float(min(sims)), "max": float(max(sims))}
    foil = [r for r in aligned if r["negation_in"] == "foil"]
    if any("subject" in r["aligned"] for r in foil):
        out["subjects"] = {"foil_pairs": len(foil), "with_subject": sum(r["aligned"].get("subject") is not None for r in foil),
                           "without_subject": [r["id"] for r in foil if r["aligned"].get("subject") is None]}
    if not has_d:
        return out

    def rel(group, key):
        return {"n": len(group), "r": _pearson([r["aligned"][key] for r in group], [r["aligned"]["d"] for r in group])}
    for loc in LOCATIONS:
        group = [r for r in aligned if r["negation_in"] == loc]
        out[f"similarity_vs_d_{loc}"] = rel(group, "similarity")
        out[f"length_vs_d_{loc}"] = rel(group, "n_tokens")
        if loc == "caption":
            rest = [r for r in group if r["caption"] != NO_PEOPLE]
            out["similarity_vs_d_caption_without_no_people"] = rel(rest, "similarity")
            out["length_vs_d_caption_without_no_people"] = rel(rest, "n_tokens")
    out["similarity_vs_d_all"] = rel(aligned, "similarity")
    sized = [r for r in aligned if r["negation_in"] == "foil" and r["aligned"].get("subject_area") is not None]
    if sized:
        size, d = [r["aligned"]["subject_area"] for r in sized], [r["aligned"]["d"] for r in sized]
        out["subject_size_vs_d_foil"] = {"n": len(sized), "r": _pearson(size, d)}
        binary = [r for r in sized if r["aligned"].get("subject_area_binary") is not None]
        if binary:
            out["subject_size_binary_vs_d_foil"] = {"n": len(binary), "r": _pearson(
                [r["aligned"]["subject_area_binary"] for r in binary], [r["aligned"]["d"] for r in binary])}
        out["subject_size_quartiles"] = [float(q) for q in np.percentile(size, [0, 25, 50, 75, 100])]
        out["accuracy_above_size"] = [{"threshold": t, "n": int(sum(s > t for s in size)),
                                       "accuracy": float(np.mean([x > 0 for s, x in zip(size, d) if s > t])) if any(s > t for s in size) else None}
                                      for t in SIZE_THRESHOLDS]
    return out


# ------------------------------------------------------------------------------------------ outputs
def write_outputs(run_dir, records: dict[str, dict], results: dict, *, model=None, model_id: str = "",
                  images_note: str = "") -> None:
    run_dir = Path(run_dir)
    if model is not None and getattr(model, "logit_scale", None) is not None and "logit_scale" not in results:
        results = {**results, "logit_scale": float(model.logit_scale.detach().exp())}
    atomic_write(run_dir / "results.json", json.dumps(_clean(results), indent=1, allow_nan=False))
    atomic_write(run_dir / "per_item.json", json.dumps(_clean(to_reference_format(records)), indent=1, allow_nan=False))
    _write_csvs(run_dir, records, results)
    figures = _figures(run_dir, records, results, model_id)
    html = _attention_html(run_dir, model, records, model_id) if model is not None else None
    atomic_write(run_dir / "report.md", _report(results, model_id, images_note, figures, html, records))


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_csvs(run_dir: Path, records, results) -> None:
    import pandas as pd

    flat = []
    for r in records.values():
        row = {k: r.get(k) for k in ("id", "negation_in", "caption", "foil", "s_caption", "s_foil", "d", "segment", "similarity", "n_tokens")}
        a = r.get("aligned", {})
        row.update({f"aligned_{k}": a.get(k) for k in ("caption", "foil", "s_caption", "s_foil", "d", "segment", "similarity", "n_tokens",
                                                         "subject", "subject_area", "subject_area_binary")})
        flat.append(row)
    pd.DataFrame(flat).to_csv(run_dir / "items.csv", index=False)
    if "scores" in results:
        rows = [{"sentences": s, "group": g, "n": t["n"], "accuracy": t["accuracy"], **t["segments"]}
                for s, groups in results["scores"].items() for g, t in groups.items()]
        pd.DataFrame(rows).to_csv(run_dir / "scores.csv", index=False)
    for loc, segs in results.get("cte", {}).items():
        for seg, m in segs.items():
            if m["n"]:
                df = pd.DataFrame(m["matrix"], index=m["rows"], columns=[f"layer_{l}" for l in range(len(m["std"]))])
                df.loc["CTE std (rows >= negator)"] = m["std"]
                df.to_csv(run_dir / f"cte_{loc}_{seg}.csv", index_label="row")
    for loc, h in results.get("heads", {}).items():
        cols = [f"H{i + 1}" for i in range(len(h["delta_mean"][0]))]
        idx = [f"L{l + 1}" for l in range(len(h["delta_mean"]))]
        pd.DataFrame(h["delta_mean"], index=idx, columns=cols).to_csv(run_dir / f"heads_delta_{loc}.csv", index_label="layer (1-indexed)")
        if "corr_with_d" in h:
            pd.DataFrame(h["corr_with_d"], index=idx, columns=cols).to_csv(run_dir / f"heads_corr_d_{loc}.csv", index_label="layer (1-indexed)")
    if results.get("zoom", {}).get("layer") is not None:
        for loc in LOCATIONS:
            if loc in results["zoom"]:
                pd.DataFrame(results["zoom"][loc], index=[f"H{i + 1}" for i in range(len(results["zoom"][loc]))],
                             columns=results["zoom"]["rows"]).to_csv(run_dir / f"zoom_layer{results['zoom']['layer']}_{loc}.csv", index_label="head")
    conf = [{"relation": k, **v} for k, v in results["confounds"].items() if isinstance(v, dict) and "r" in v]
    pd.DataFrame(conf).to_csv(run_dir / "confounds.csv", index=False)


def _limits(mats, low: float, high: float) -> tuple[float, float]:
    """One colour range for every panel: at least [low, high], widened to the data (nothing clipped)."""
    vals = np.concatenate([np.asarray(m, float).ravel() for m in mats] + [np.zeros(0)])
    vals = vals[~np.isnan(vals)]
    return (min(low, float(vals.min())), max(high, float(vals.max()))) if len(vals) else (low, high)


def _figures(run_dir: Path, records, results, model_id: str = "") -> list[str]:
    """The paper's figures as PNGs; every title names the model, panels of one figure share a colour range
    that covers the data (CTE above 1 or below 0 is shown, not clipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made = []
    name = model_id or results.get("model", "")

    def save(fig, file, title):
        fig.suptitle(f"{name}: {title}" if name else title)
        fig.savefig(run_dir / file, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(file)

    if "cte" in results:
        fig, axes = plt.subplots(2, 2, figsize=(14, 6.5), gridspec_kw={"height_ratios": [4, 1], "wspace": 0.35}, squeeze=False)
        mats = {loc: np.array(results["cte"][loc]["correct"]["matrix"], float)
                for loc in ("foil", "caption") if results["cte"][loc]["correct"]["n"]}
        vmin, vmax = _limits(mats.values(), 0.0, 1.0)
        for col, loc in enumerate(("foil", "caption")):
            m = results["cte"][loc]["correct"]
            ax = axes[0, col]
            if loc in mats:
                mat = mats[loc]
                im = ax.imshow(mat, cmap="Purples", vmin=vmin, vmax=vmax, aspect="auto")
                for (i, j), v in np.ndenumerate(mat):
                    if not np.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
                ax.set_yticks(range(len(m["rows"])), m["rows"])
                ax.set_xticks(range(mat.shape[1]))
                fig.colorbar(im, ax=ax, label="mean CTE (d*/d)")
                axes[1, col].bar(range(len(m["std"])), m["std"], color="grey")
                axes[1, col].set_xticks(range(len(m["std"])))
            ax.set_title(f"Negation in {loc}, correct segment (n={m['n']})")
            ax.set_ylabel("position")
            axes[1, col].set_xlabel("hidden-state layer (0 = embeddings output)")
            axes[1, col].set_ylabel("CTE std dev")
        save(fig, "cte_heatmaps.png", "causal tracing (CTE), colour range shared by both panels")
    if "heads" in results:
        locs = [l for l in ("foil", "caption") if l in results["heads"]]
        mats = {loc: np.array(results["heads"][loc]["delta_mean"]).T for loc in locs}  # [head, layer]
        vmin, vmax = _limits(mats.values(), 0.0, 0.6)
        fig, axes = plt.subplots(2, len(locs), figsize=(6 * len(locs), 6.5), gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
        for col, loc in enumerate(locs):
            mat = mats[loc]
            im = axes[0, col].imshow(mat, cmap="Reds", vmin=vmin, vmax=vmax, aspect="auto")
            axes[0, col].set_xticks(range(mat.shape[1]), [str(l + 1) for l in range(mat.shape[1])])
            axes[0, col].set_yticks(range(mat.shape[0]), [str(h + 1) for h in range(mat.shape[0])])
            axes[0, col].set_title(f"Negation in {loc} (n={results['heads'][loc]['n']})")
            axes[0, col].set_ylabel("head (1-indexed)")
            axes[0, col].set_xlabel("layer (1-indexed)")
            fig.colorbar(im, ax=axes[0, col], label="mean max attention difference Δ")
            axes[1, col].bar(range(mat.shape[1]), results["heads"][loc]["layer_mean"], color="grey")
            axes[1, col].set_xticks(range(mat.shape[1]), [str(l + 1) for l in range(mat.shape[1])])
            axes[1, col].set_xlabel("layer (1-indexed)")
            axes[1, col].set_ylabel("mean Δ over heads")
        save(fig, "heads.png", "negator-selective heads")
    if results.get("zoom", {}).get("layer") is not None:
        zoom = results["zoom"]
        locs = [l for l in ("foil", "caption") if l in zoom]
        mats = {loc: np.array(zoom[loc], float).T for loc in locs}  # [row, head]
        lo, hi = _limits(mats.values(), -0.5, 0.5)
        lim = max(-lo, hi)  # symmetric around 0 for the diverging map
        fig, axes = plt.subplots(1, len(locs), figsize=(6.5 * len(locs), 4.5), gridspec_kw={"wspace": 0.6}, squeeze=False)
        for col, loc in enumerate(locs):
            mat = mats[loc]
            im = axes[0, col].imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            axes[0, col].set_yticks(range(len(zoom["rows"])), zoom["rows"])
            axes[0, col].set_xticks(range(mat.shape[1]), [str(h + 1) for h in range(mat.shape[1])])
            axes[0, col].set_title(f"Negation in {loc}")
            axes[0, col].set_xlabel("head (1-indexed)")
            axes[0, col].set_ylabel("query row")
            fig.colorbar(im, ax=axes[0, col], label="mean attention difference to the negator")
        save(fig, "heads_layer_zoom.png", f"layer {zoom['layer']} zoom ({zoom['rule']} rule)")
    aligned = [r for r in records.values() if "aligned" in r and "d" in r["aligned"]]
    if aligned:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), squeeze=False)
        for col, loc in enumerate(LOCATIONS):
            g = [r for r in aligned if r["negation_in"] == loc]
            sc = axes[0, col].scatter([r["aligned"]["similarity"] for r in g], [r["aligned"]["d"] for r in g],
                                      c=[r["aligned"]["n_tokens"] for r in g], s=10, cmap="viridis")
            rel = results["confounds"].get(f"similarity_vs_d_{loc}", {})
            axes[0, col].set_title(f"Negation in {loc} (n = {len(g)}, r = {_fmt(rel.get('r'))})")
            axes[0, col].set_xlabel("cosine similarity of caption and foil")
            axes[0, col].set_ylabel("classification score d (logits)")
            bar = fig.colorbar(sc, ax=axes[0, col], label="tokens")
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
        save(fig, "score_vs_similarity.png", "score vs caption-foil similarity")
        fig, ax = plt.subplots(figsize=(7, 3.8))
        d = np.array([r["aligned"]["d"] for r in aligned])
        bins = np.arange(np.floor(d.min() * 4) / 4, d.max() + 0.25, 0.25)
        for seg, mask in (("incorrect", d < -1), ("ambiguous", (d >= -1) & (d < 1)), ("correct", d >= 1)):
            ax.hist(d[mask], bins=bins, color=SEGMENT_COLORS[seg], label=f"{seg} ({int(mask.sum())})")
        ax.set_xlabel("classification score d (logits), bins of 0.25")
        ax.set_ylabel("items")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        save(fig, "score_histogram.png", f"score distribution (n = {len(d)})")
        sized = [r for r in aligned if r["negation_in"] == "foil" and r["aligned"].get("subject_area") is not None]
        if sized:
            fig, ax = plt.subplots(figsize=(7, 4.3))
            for seg, color in SEGMENT_COLORS.items():  # coloured by segment, as the paper's figure
                g = [r for r in sized if r["aligned"]["segment"] == seg]
                ax.scatter([r["aligned"]["subject_area"] for r in g], [r["aligned"]["d"] for r in g], s=10, color=color,
                           label=f"{seg} ({len(g)})")
            measure = results.get("subject_size_measure") or "mean sigmoid area of the CLIPSeg map"
            ax.set_xlabel(f"relative size of subject ({measure})")
            ax.set_ylabel("classification score d (logits)")
            ax.legend(fontsize=7, loc="upper left")
            acc = [a for a in results["confounds"]["accuracy_above_size"] if a["accuracy"] is not None]
            ax2 = ax.twinx()
            ax2.plot([a["threshold"] for a in acc], [a["accuracy"] for a in acc], color="tab:orange", marker="o")
            ax2.set_ylim(0.0, 1.0)  # fixed, so runs and models compare; the paper's figure shows 0.6-1.0
            ax2.set_ylabel("accuracy of items with size > x", color="tab:orange")
            rel = results["confounds"]["subject_size_vs_d_foil"]
            save(fig, "score_vs_subject_size.png", f"negation in foil: score vs subject size (n = {rel['n']}, r = {_fmt(rel['r'])})")
    return made


def _attention_html(run_dir: Path, model, records, model_id: str = "") -> Optional[str]:
    """Self-contained circuitsvis views (no CDN: ``local_src``) of the top heads' layer for one example pair."""
    import circuitsvis.attention as cv

    pair = next((r for r in records.values() if "aligned" in r), None)
    if pair is None:
        return None
    a = pair["aligned"]
    negated = a["caption"] if pair["negation_in"] == "caption" else a["foil"]
    affirmative = a["foil"] if pair["negation_in"] == "caption" else a["caption"]
    import html as _html

    title = _html.escape(f"{model_id or 'model'}: attention patterns (hooked_clip)")
    parts = [f"<html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1>"]
    for sentence in (negated, affirmative):
        _, cache = model.text.run_with_cache(sentence)
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
            parts.append(f"<h3>{_html.escape(repr(sentence))}: layer {layer + 1} (1-indexed)</h3>")
            parts.append(cv.attention_patterns(tokens=model.to_str_tokens(sentence), attention=pattern).local_src)
            if layer == 0:
                break  # one layer view per sentence keeps the file small; others via the API
    parts.append("</body></html>")
    atomic_write(run_dir / "attention.html", "\n".join(parts))
    return "attention.html"


def _fmt(x, digits=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


PAPER_ZOOM = paper.ZOOM  # the old name

HOW_TO_READ = ("Numbers: ours beside the paper's (OpenAI CLIP ViT-B/32 on Visual7W photos, the authors' released results). "
               "CTE, Δ, d, r and other fractions with two decimals; accuracies in percent with one decimal, as the paper "
               "gives them; three decimals only where the paper gives three (layer means of Δ, cosines, subject-size "
               "quartiles). Where a number cannot be compared like for like, the caveats below say why.")
GROUP_LABELS = {"all": "either", "caption": "caption", "foil": "foil"}
KIND_LABELS = {"original": "original VALSE sentences", "aligned": "aligned (rephrased) pairs"}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _segs(seg) -> str:
    return " / ".join(str(v) for v in (seg.values() if isinstance(seg, dict) else seg))


def _row(label: str, values, digits: int = 2) -> str:
    return f"| {label} | " + " | ".join(_fmt(v, digits) for v in values) + " |"


def _header(first: str, columns) -> list[str]:
    columns = [str(c) for c in columns]
    return ["| " + " | ".join([first, *columns]) + " |", "|---" * (len(columns) + 1) + "|"]


def _caveats(results: dict) -> list[str]:
    """Where this run cannot be compared with the paper like for like, said in the report (from the model's
    own facts: logit scale, depth, heads, the subject-size measure)."""
    out = []
    scale = results.get("logit_scale")
    if scale is not None and abs(scale - paper.LOGIT_SCALE) > 0.5:
        out.append(f"- **Segments are not CLIP's.** This model's logit scale is {scale:.2f}, so the segment thresholds "
                   f"d = ±1 logit are ±{1 / scale:.3f} cosine; for the paper's ViT-B/32 (logit scale 100) they are "
                   "±0.01 cosine. Segment counts, the score statistics in logits, and every table restricted to a "
                   "segment (the CTE's correct / incorrect subsets) therefore select by another rule than the "
                   "paper's; compare accuracies (d > 0) and the shapes of the tables, not segment counts.")
    n_layers, n_heads = results.get("n_layers"), results.get("n_heads")
    if n_layers is not None and (n_layers, n_heads) != (paper.N_LAYERS, paper.N_HEADS):
        out.append(f"- **Layers are not the paper's.** This model has {n_layers} blocks × {n_heads} heads (hidden-state "
                   f"layers 0–{n_layers}); the paper's has 12 × 8. The paper's negator collapse between layers 3 and 4 "
                   f"happens a third of the way up; this model's layer {n_layers} is its last, where the [EOT] row is 1 "
                   "and every other row 0 by construction. Compare by relative depth, not by column number.")
        out.append("- **Head labels are positions in this model.** A label such as L4H2 is block 4, head 2 (1-indexed) "
                   "of this model" + (", its last block" if n_layers == 4 else "") + "; this model's L4H2 is not "
                   "CLIP's L4H2, so the paper's heads are compared by role (which layer moves the negation to later "
                   "positions), not by label.")
    elif n_layers is not None:
        out.append("- Layers and head labels have the paper's numbering; they name the paper's heads only if this "
                   "model is the paper's checkpoint (openai/clip-vit-base-patch32).")
    measure = results.get("subject_size_measure")
    if measure:
        out.append(f"- **Subject size is not a CLIPSeg area.** Here it is {measure}; the paper's is CLIPSeg's soft "
                   "area of the subject in the photo (mean sigmoid over the map). Its r, quartiles and the "
                   "accuracy-above-threshold table are an analogue, not the same measurement.")
    return (["## Like for like? What differs from the paper's setting", ""] + out + [""]) if out else []


def _items_section(results: dict) -> list[str]:
    c, p = results["counts"], paper.COUNTS

    def split(d, key):
        return f"{d.get(key)} ({d.get(key + '_caption')} / {d.get(key + '_foil')})"
    ours_dropped = {"dropped": c["valid"] - c["aligned"],
                    **{f"dropped_{loc}": c.get(f"valid_{loc}", 0) - c.get(f"aligned_{loc}", 0) for loc in LOCATIONS}}
    lines = ["## Items", ""] + _header("", ["this run", "paper"])
    lines += [f"| valid (negation in caption / in foil) | {split(c, 'valid')} | {split(p, 'valid')} |",
              f"| aligned pairs (caption / foil) | {split(c, 'aligned')} | {split(p, 'aligned')} |",
              f"| dropped by the alignment (caption / foil) | {split(ours_dropped, 'dropped')} | {split(p, 'dropped')} |"]
    if "lengths" in results:
        n = results["lengths"]
        lines += [f"| aligned pairs without a further subject token (7 tokens with CLIP's tokenizer) | {n['no_further']} | "
                  f"{p['aligned_t7']} |",
                  f"| token length of the aligned sentences | {n['tokens_min']}–{n['tokens_max']} | "
                  f"{p['tokens_min']}–{p['tokens_max']} |"]
    return lines + [""]


def _scores_section(results: dict, records: Optional[dict]) -> list[str]:
    s = results["scores"]
    lines = ["## Scores", "", "Accuracy = share of items with d = S(caption) − S(foil) > 0; segments: correct d ≥ 1, "
             "ambiguous −1 ≤ d < 1, incorrect d < −1 (logits).", ""]
    lines += _header("sentences", ["negation in", "n", "accuracy", "correct / ambiguous / incorrect",
                                   "paper: n", "paper: accuracy", "paper: correct / ambiguous / incorrect"])
    for kind in ("original", "aligned"):
        for g, t in s[kind].items():
            pn, pacc, pseg = paper.SCORES[(kind, g)]
            lines.append(f"| {KIND_LABELS[kind]} | {GROUP_LABELS[g]} | {t['n']} | {_pct(t['accuracy'])} | "
                         f"{_segs(t['segments'])} | {pn} | {_pct(pacc)} | {_segs(pseg)} |")
    lines += ["", f"VALSE's own CLIP pairwise accuracy on the existence piece: {_pct(paper.VALSE_EXISTENCE_ACCURACY)} "
              "(the paper's sets above are its own computation).", ""]
    if "d_stats" in results:
        d, pd_ = results["d_stats"], paper.D_STATS
        labels = {"min": "d, minimum", "max": "d, maximum", "sd": "d, standard deviation (sample)",
                  "mean_correct": "mean d, correct segment", "mean_ambiguous": "mean d, ambiguous segment",
                  "mean_incorrect": "mean d, incorrect segment", "caption_logit_min": "S(caption), minimum",
                  "caption_logit_max": "S(caption), maximum"}
        lines += ["Score statistics of the aligned pairs (logits: they scale with the model's logit scale):", ""]
        lines += _header("statistic", ["this run", "paper"])
        lines += [f"| {label} | {_fmt(d.get(k))} | {_fmt(pd_[k])} |" for k, label in labels.items()] + [""]
    shown = [(k, v, records[k]["aligned"]) for k, v in paper.EXAMPLES.items()
             if records and k in records and "d" in records[k].get("aligned", {})]
    lines += ["The paper's example items (§3.4 of PAPER.md; d in logits):", ""]
    lines += _header("item", ["aligned caption / foil", "d (this run)", "segment (this run)", "paper d", "paper segment"])
    for k, v in paper.EXAMPLES.items():
        a = records[k]["aligned"] if records and k in records and "d" in records[k].get("aligned", {}) else None
        sentences = f"{a['caption']} / {a['foil']}" if a else "not in this run"
        lines.append(f"| {k} | {sentences} | {_fmt(a['d']) if a else '–'} | {a['segment'] if a else '–'} | "
                     f"{_fmt(v['d'])} | {v['segment']} |")
    ex = paper.EXAMPLES["existence_visual7w_1"]
    lines += ["", f"Also for existence_visual7w_1 the paper gives d = {_fmt(ex['d_original'])} on the original sentences "
              f"and a caption–foil cosine of {ex['similarity']:.4f}"
              + (f" (this run: d = {_fmt(records['existence_visual7w_1'].get('d'))} on the original sentences, cosine "
                 f"{records['existence_visual7w_1']['aligned']['similarity']:.4f})" if shown and shown[0][0] == "existence_visual7w_1" else "")
              + ".", ""]
    return lines


CTE_SUBSETS = (("caption", "correct"), ("foil", "correct"), ("foil", "incorrect"))


def _cte_section(results: dict) -> list[str]:
    lines = ["## Causal tracing (CTE = d*/d)", "",
             "Rows: generic positions; columns: hidden-state layer (0 = embeddings output). The paper stored the "
             "correct segment of both negation locations and the incorrect segment of negation in the foil; the same "
             "subsets are shown here (every subset: `cte_<location>_<segment>.csv`). Column sums are not 1: "
             "single-state effects do not add up.", ""]
    for loc, seg in CTE_SUBSETS:
        m, ref = results["cte"][loc][seg], paper.CTE[(loc, seg)]
        lines += [f"### Negation in {loc}, {seg} segment", "", f"This run (n = {m['n']}):", ""]
        if m["n"]:
            n_l = len(m["std"])
            lines += _header("row", range(n_l))
            lines += [_row(name, vals) for name, vals in zip(m["rows"], m["matrix"])]
            lines += [_row("CTE std (rows ≥ negator)", m["std"]), _row("column sum", m["column_sums"]), "",
                      f"Mean CTE std: {_fmt(m['mean_std'], 3)}.", ""]
        lines += [f"Paper (ViT-B/32, n = {ref['n']}; rows [SOT], there, is/are are exactly 0):", ""]
        lines += _header("row", range(13)) + [_row(name, vals) for name, vals in ref["rows"].items()]
        if ref["std"]:
            lines.append(_row("CTE std (rows ≥ negator)", ref["std"]))
        if ref["column_sums"]:
            lines.append(_row("column sum", ref["column_sums"]))
        lines += ["", f"Mean CTE std: {_fmt(ref['mean_std'], 3)}.", ""]
    if results.get("n_layers") == paper.N_LAYERS:
        for loc in LOCATIONS:
            m = results["cte"][loc]["correct"]
            if m["n"]:
                ours = m["matrix"][NEGATOR_ROW][3:5]
                lines.append(f"- Negator row, layers 3 → 4, negation in {loc}: this run {_fmt(ours[0])} → {_fmt(ours[1])}; "
                             f"paper {_fmt(REFERENCE['cte_negator_layers_3_4'][loc][0])} → {_fmt(REFERENCE['cte_negator_layers_3_4'][loc][1])}.")
        lines.append("")
    return lines


def _heads_section(results: dict) -> list[str]:
    lines = ["## Negator-selective heads (mean max attention difference Δ, layers and heads 1-indexed)", ""]
    for loc, h in results["heads"].items():
        top = ", ".join(f"{t['head']} {_fmt(t['delta'])}" for t in h["top"])
        lines.append(f"- This run, negation in {loc} (n = {h['n']}): top heads {top}")
    lines.append("- Paper (ViT-B/32, caption / foil): " + ", ".join(
        f"{k} {_fmt(c)} / {_fmt(f)}" for k, (c, f) in paper.TOP_HEADS.items()))
    lines += ["", "The full Δ matrix (layer × head) is also in `heads_delta_caption.csv` / `heads_delta_foil.csv` and "
              "`heads.png`; the per-head Pearson r of Δ with d in `heads_corr_d_caption.csv` / "
              "`heads_corr_d_foil.csv` (with image scores only); the layer zoom below also in "
              "`zoom_layer<L>_<location>.csv` and `heads_layer_zoom.png`.", ""]
    for loc, h in results["heads"].items():
        mat = np.array(h["delta_mean"], float).T  # [head, layer]
        lines += [f"Δ, negation in {loc}, this run (n = {h['n']}):", ""] + _header("head \\ layer", range(1, mat.shape[1] + 1))
        lines += [_row(f"H{i + 1}", r) for i, r in enumerate(mat)] + [_row("layer mean", h["layer_mean"], 3), ""]
    for loc in LOCATIONS:
        lines += [f"Δ, negation in {loc}, paper (n = {paper.HEAD_N[loc]}):", ""] + _header("head \\ layer", range(1, 13))
        lines += [_row(f"H{i + 1}", r) for i, r in enumerate(paper.HEAD_DELTA[loc])]
        lines += [_row("layer mean", paper.LAYER_MEAN[loc], 3), ""]
    corr = {loc: h["corr_with_d"] for loc, h in results["heads"].items() if "corr_with_d" in h}
    if corr:
        parts = []
        for loc, c in corr.items():
            arr = np.array([[np.nan if v is None else v for v in row] for row in c], float)
            if np.isfinite(arr).any():
                l, hd = np.unravel_index(np.nanargmax(np.abs(arr)), arr.shape)
                parts.append(f"negation in {loc}: largest |r| {_fmt(abs(arr[l, hd]))} (L{l + 1}H{hd + 1}, r = {_fmt(arr[l, hd])})")
        lines += ["Pearson r of Δ with d per head: this run " + ("; ".join(parts) or "undefined (constant values)")
                  + f". Paper: {paper.HEAD_CORR_NOTE}.", ""]
    return lines + _zoom_section(results["zoom"])


def _zoom_section(zoom: dict) -> list[str]:
    lines = [f"### Layer zoom ({zoom['rule']} rule)", "", f"Definition: {zoom['definition']}.", ""]
    shown, paper_rows = zoom["rows"][NEGATOR_ROW:], ROWS[NEGATOR_ROW:]
    if zoom["layer"] is None:
        lines += [f"Not computed: {zoom['note']}.", ""]
    else:
        lines += [f"Mean attention difference to the negator, layer {zoom['layer']} (1-indexed), per head (1-indexed) and "
                  f"query row. Tables: `zoom_layer{zoom['layer']}_caption.csv`, `zoom_layer{zoom['layer']}_foil.csv`; "
                  "figure `heads_layer_zoom.png`.", ""]
        for loc in LOCATIONS:
            if loc not in zoom:
                continue
            lines += [f"Negation in {loc}, this run (n = {zoom[f'n_{loc}']}, of which {zoom[f'n_{loc}_without_further']} "
                      "without further subject tokens):", ""] + _header("head", shown)
            lines += [_row(f"H{h + 1}", vals[NEGATOR_ROW:]) for h, vals in enumerate(zoom[loc])]
            lines.append("")
    lines += ["Paper (ViT-B/32, layer 4, the paper's rule; caption / foil per cell):", ""] + _header("head", paper_rows)
    for head, cells in paper.ZOOM.items():
        lines.append(f"| {head} | " + " | ".join(f"{_fmt(cells[r][0])} / {_fmt(cells[r][1])}" for r in paper_rows) + " |")
    lines.append("| others | " + " | ".join(f"≤ {_fmt(paper.ZOOM_OTHERS[r])}" for r in paper_rows) + " |")
    return lines + ["", f"Exceptions in the paper's \"others\" row: {paper.ZOOM_OTHERS_NOTE}.", ""]


def _confounds_section(results: dict) -> list[str]:
    conf = results["confounds"]
    lines = ["## Confounds (Pearson r with d)", ""] + _header("relation", ["n", "r", "paper: n", "paper: r"])
    keys = [k for k, v in conf.items() if isinstance(v, dict) and "r" in v]
    for k in list(dict.fromkeys([*paper.CONFOUNDS, *keys])):  # the paper's order, then any other relation
        v = conf.get(k, {})
        pn, pr = paper.CONFOUNDS.get(k, ("", None))
        lines.append(f"| {RELATION_LABELS.get(k, k)} | {v.get('n', '–')} | {_fmt(v.get('r'))} | {pn} | {_fmt(pr) if pn else ''} |")
    lines.append("")
    sim, rng = conf.get("similarity_by_location", {}), conf.get("similarity_range")
    p = paper.SIMILARITY
    if sim and rng:
        lines += [f"Caption–foil cosine of the aligned pairs: mean {_fmt(sim.get('caption'), 3)} (negation in caption) and "
                  f"{_fmt(sim.get('foil'), 3)} (in foil), range {_fmt(rng['min'], 3)} to {_fmt(rng['max'], 3)}; paper: "
                  f"{_fmt(p['mean_caption'], 3)} and {_fmt(p['mean_foil'], 3)}, range {_fmt(p['min'], 3)} to {_fmt(p['max'], 3)}.", ""]
    if "subjects" in conf:
        sub = conf["subjects"]
        lines += [f"Subjects: {sub['with_subject']} of {sub['foil_pairs']} foil-negated pairs have a subject prompt "
                  f"(paper: {paper.SUBJECTS[0]} of {paper.SUBJECTS[1]}); without one: {sub['without_subject'] or 'none'}.", ""]
    quart = " / ".join(_fmt(q, 3) for q in paper.SUBJECT_SIZE_QUARTILES)
    if "subject_size_quartiles" in conf:
        lines += [f"Subject size, min / Q1 / median / Q3 / max: this run {' / '.join(_fmt(q, 3) for q in conf['subject_size_quartiles'])}; "
                  f"paper {quart}.", ""]
    else:
        lines += [f"Subject size was not measured in this run (paper's quartiles, min / Q1 / median / Q3 / max: {quart}); "
                  "pass --clipseg with --images.", ""]
    above = {a["threshold"]: a for a in conf.get("accuracy_above_size", [])}
    lines += ["Accuracy of the foil-negated items whose subject size exceeds t:", ""]
    lines += _header("t", ["n (this run)", "accuracy (this run)", "paper: n", "paper: accuracy"])
    for t, (pn, pacc) in paper.ACCURACY_ABOVE_SIZE.items():
        a = above.get(t, {})
        lines.append(f"| {t:.2f} | {a.get('n', '–')} | {_pct(a.get('accuracy'))} | {pn} | {_pct(pacc)} |")
    lines.append("")
    if "similarity_vs_d_caption" not in conf:
        lines += ["Image-dependent parts (scores, causal tracing, confounds with d) were skipped: no images were given.", ""]
    return lines


def _ablation_section() -> list[str]:
    lines = ["## Image-tower ablation (the authors' thesis): not run by this study", "",
             "The paper's code also ablates the image tower's layers with a mean image (PAPER.md §7, probably thesis "
             "only). This study measures the text tower only, so there is no number of ours to set beside these; "
             "`hooked_clip.analyses.image_attribution.mean_image_ablation` provides the hooks for a ViT image tower.", ""]
    lines += _header("component", ["paper: negation in foil", "paper: negation in caption", "paper: layer-1 effects"])
    lines += [f"| {k} | {_fmt(f)} | {_fmt(c)} | {_fmt(paper.ABLATION_LAYER1[k][0])}–{_fmt(paper.ABLATION_LAYER1[k][1])} |"
              for k, (f, c) in paper.ABLATION.items()]
    return lines + ["", "(Mean drop in d over the 12 layers, correct segment.)", ""]


def _layout_note(results: dict) -> list[str]:
    """A paragraph on the rows where this model's tokenizer lays the pairs out otherwise than CLIP's BPE."""
    rows = (results.get("zoom") or {}).get("rows") or next(
        (m["rows"] for segs in results.get("cte", {}).values() for m in segs.values()), ROWS)
    if list(rows) == ROWS:
        return []
    absent = [f"`{r[: -len(ABSENT)]}`" for r in rows if is_absent(r)]
    lines = ["Rows laid out from this model's tokenizer (each pair's positions: the negator where the two sentences "
             "differ, the pooled position from the tower's pooling rule)."]
    if absent:
        lines.append(f"Absent rows (the tokenizer has no such token, shown as –): {', '.join(absent)}.")
    if POOLED_ROW in rows:
        lines.append(f"{POOLED_ROW} is the position the tower reads (the last padded position); the padding between "
                     "[EOT] and it is not shown in the rows, but the heads' Δ (max over the query positions after the "
                     "negator up to the pooled one) includes it.")
    return [" ".join(lines), ""]


def _report(results: dict, model_id: str, images_note: str, figures: list[str], html: Optional[str],
            records: Optional[dict] = None) -> str:
    results = _clean(results)
    lines = [f"# VALSE existence negation study — {model_id}", "",
             f"Images: {images_note or 'none (text-only parts)'}. Indexing: {results['indexing']}.", "", HOW_TO_READ, ""]
    if model_id.startswith("tiny-negation"):
        lines += [f"> This run uses the shipped toy model `{model_id}` with synthesized scenes. Its findings are about "
                  "that toy model, not about OpenAI's CLIP; the paper's columns are OpenAI's ViT-B/32 on photos.", ""]
    lines += _layout_note(results) + _caveats(results) + _items_section(results)
    if "replication" in results:
        lines += replication_section(results["replication"], results.get("replication_reference"))
    if "scores" in results:
        lines += _scores_section(results, records)
    if "cte" in results:
        lines += _cte_section(results)
    if "heads" in results:
        lines += _heads_section(results)
    lines += _confounds_section(results) + _ablation_section()
    if figures or html:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
        if html:
            lines.append(f"\nAttention view (offline HTML): [{html}]({html})")
    lines += ["", "Files: `results.json` (every number with its n), CSV tables, `items.csv` (per item)."]
    return "\n".join(lines) + "\n"
