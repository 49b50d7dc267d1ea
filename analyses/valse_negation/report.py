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

from hooked_clip.analyses.valse_negation.reference import section as replication_section
from hooked_clip.analyses.valse_negation.reference import to_reference_format
from hooked_clip.analyses.valse_negation.layout import (ABSENT, FURTHER_ROW, NEGATOR_ROW, POOLED_ROW, PairLayout, is_absent,
                                                        row_labels)
from hooked_clip.analyses.valse_negation.study import ROWS, atomic_write

SEGMENTS = ("correct", "ambiguous", "incorrect")
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

# The paper's numbers for OpenAI CLIP ViT-B/32 on Visual7W images (from the authors' released results,
# see ../shared/PAPER.md); shown beside ours in the report, never mixed with them.
REFERENCE = {
    "model": "openai/clip-vit-base-patch32 (Quantmeyer et al. 2024, authors' released results)",
    "accuracy_original_505": 0.691,
    "accuracy_aligned_490": 0.686,
    "segments_aligned": {"correct": 153, "ambiguous": 295, "incorrect": 42},
    "head_delta": {"L4H2": (0.39, 0.38), "L4H3": (0.24, 0.23), "L3H6": (0.20, 0.23)},  # (caption, foil)
    "cte_negator_layers_3_4": {"caption": (0.48, 0.04), "foil": (0.69, 0.18)},
    "subject_size_r": 0.32,
    "subject_size_binary_r": 0.28,
    "similarity_r": {"caption": 0.03, "caption_without_no_people": -0.20, "foil": -0.22},
}

PAPER_R = {"similarity_vs_d_caption": REFERENCE["similarity_r"]["caption"], "similarity_vs_d_foil": REFERENCE["similarity_r"]["foil"],
           "similarity_vs_d_caption_without_no_people": REFERENCE["similarity_r"]["caption_without_no_people"],
           "subject_size_vs_d_foil": REFERENCE["subject_size_r"], "subject_size_binary_vs_d_foil": REFERENCE["subject_size_binary_r"]}


def _pearson(x, y) -> Optional[float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _score_table(ds: list[float]) -> dict:
    ds = np.asarray(ds, float)
    seg = {"correct": int((ds >= 1).sum()), "ambiguous": int(((ds >= -1) & (ds < 1)).sum()), "incorrect": int((ds < -1).sum())}
    return {"n": int(len(ds)), "accuracy": float((ds > 0).mean()) if len(ds) else None, "segments": seg}


def _cte_matrix(recs: list[dict], key: str = "cte_rows", rows_labels: Optional[list[str]] = None) -> dict:
    """Mean over items of [layer, row] values; the "subj further" row weighted by each item's number of
    further tokens (items with none weigh 0), as the authors average. Returns rows x layers and the
    per-layer std over rows from the negator on (absent rows left out). ``rows_labels``: the rows'
    labels (default: CLIP's ``ROWS``)."""
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
            "mean_std": float(np.nanmean(std))}


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
    rows = row_labels([PairLayout.from_record(r["aligned"]) for r in aligned])
    out: dict = {"indexing": "hidden-state layers: 0 = embeddings output, l = output of block l; attention layers "
                             "and heads 1-indexed as in the paper (L4H2 = blocks.3 head 1)",
                 "counts": {"valid": len(recs), "aligned": len(aligned),
                            **{f"valid_{loc}": sum(r["negation_in"] == loc for r in recs) for loc in LOCATIONS},
                            **{f"aligned_{loc}": sum(r["negation_in"] == loc for r in aligned) for loc in LOCATIONS}}}
    if has_d:
        out["scores"] = {
            "original": {g: _score_table([r["d"] for r in recs if g == "all" or r["negation_in"] == g]) for g in ("all", *LOCATIONS)},
            "aligned": {g: _score_table([r["aligned"]["d"] for r in aligned if g == "all" or r["negation_in"] == g]) for g in ("all", *LOCATIONS)},
        }
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
        out["accuracy_above_size"] = [{"threshold": t, "n": int(sum(s > t for s in size)),
                                       "accuracy": float(np.mean([x > 0 for s, x in zip(size, d) if s > t])) if any(s > t for s in size) else None}
                                      for t in SIZE_THRESHOLDS]
    return out


# ------------------------------------------------------------------------------------------ outputs
def write_outputs(run_dir, records: dict[str, dict], results: dict, *, model=None, model_id: str = "",
                  images_note: str = "") -> None:
    run_dir = Path(run_dir)
    atomic_write(run_dir / "results.json", json.dumps(_clean(results), indent=1, allow_nan=False))
    atomic_write(run_dir / "per_item.json", json.dumps(_clean(to_reference_format(records)), indent=1, allow_nan=False))
    _write_csvs(run_dir, records, results)
    figures = _figures(run_dir, records, results, model_id)
    html = _attention_html(run_dir, model, records, model_id) if model is not None else None
    atomic_write(run_dir / "report.md", _report(results, model_id, images_note, figures, html))


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
        for seg, color, mask in (("incorrect", "tab:red", d < -1), ("ambiguous", "tab:grey", (d >= -1) & (d < 1)), ("correct", "tab:green", d >= 1)):
            ax.hist(d[mask], bins=bins, color=color, label=f"{seg} ({int(mask.sum())})")
        ax.set_xlabel("classification score d (logits), bins of 0.25")
        ax.set_ylabel("items")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        save(fig, "score_histogram.png", f"score distribution (n = {len(d)})")
        sized = [r for r in aligned if r["negation_in"] == "foil" and r["aligned"].get("subject_area") is not None]
        if sized:
            fig, ax = plt.subplots(figsize=(7, 4.3))
            ax.scatter([r["aligned"]["subject_area"] for r in sized], [r["aligned"]["d"] for r in sized], s=10)
            ax.set_xlabel("relative size of subject (mean sigmoid area)")
            ax.set_ylabel("classification score d (logits)")
            acc = [a for a in results["confounds"]["accuracy_above_size"] if a["accuracy"] is not None]
            ax2 = ax.twinx()
            ax2.plot([a["threshold"] for a in acc], [a["accuracy"] for a in acc], color="tab:orange")
            ax2.set_ylabel("accuracy of items with area > x", color="tab:orange")
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


PAPER_ZOOM = {  # PAPER.md §5.3, layer 4, (caption, foil) per head and row from the negator on
    "H2": {"a/some/no": (-0.04, -0.01), "subj 1st": (0.25, 0.08), "subj further": (0.14, 0.15), ".": (0.35, 0.34), "[EOT]": (0.12, 0.15)},
    "H3": {"a/some/no": (0.05, 0.06), "subj 1st": (0.23, 0.19), "subj further": (0.03, 0.09), ".": (0.04, 0.07), "[EOT]": (-0.01, -0.00)},
}


def _zoom_section(zoom: dict) -> list[str]:
    lines = [f"### Layer zoom ({zoom['rule']} rule)", "", f"Definition: {zoom['definition']}.", ""]
    if zoom["layer"] is None:
        return lines + [f"Not computed: {zoom['note']}.", ""]
    lines += [f"Mean attention difference to the negator, layer {zoom['layer']} (1-indexed), per head (1-indexed) and "
              "query row; paper's ViT-B/32 value in brackets where §5.3 gives one. "
              f"Tables: `zoom_layer{zoom['layer']}_caption.csv`, `zoom_layer{zoom['layer']}_foil.csv`; figure "
              "`heads_layer_zoom.png`.", ""]
    shown = zoom["rows"][NEGATOR_ROW:]
    for k, loc in enumerate(LOCATIONS):
        if loc not in zoom:
            continue
        lines += [f"Negation in {loc} (n = {zoom[f'n_{loc}']}, of which {zoom[f'n_{loc}_without_further']} without further "
                  "subject tokens):", "", "| head | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for h, vals in enumerate(zoom[loc]):
            paper = PAPER_ZOOM.get(f"H{h + 1}", {}) if zoom["rule"] == "paper" and zoom["layer"] == 4 else {}
            cells = [_fmt(v) + (f" ({paper[row][k]:.2f})" if row in paper else "") for row, v in zip(zoom["rows"], vals) if row in shown]
            lines.append(f"| H{h + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


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


def _report(results: dict, model_id: str, images_note: str, figures: list[str], html: Optional[str]) -> str:
    results = _clean(results)
    ref = REFERENCE
    c = results["counts"]
    lines = [f"# VALSE existence negation study — {model_id}", "",
             f"Images: {images_note or 'none (text-only parts)'}. {results['indexing']}.", "",
             f"Items: {c['valid']} valid ({c.get('valid_caption')} negation in caption / {c.get('valid_foil')} in foil); "
             f"{c['aligned']} aligned pairs ({c.get('aligned_caption')} / {c.get('aligned_foil')}).", ""]
    lines += _layout_note(results)
    if model_id.startswith("tiny-negation"):
        lines += [f"> This run uses the shipped toy model `{model_id}` with synthesized scenes. Its findings are about "
                  "that toy model, not about OpenAI's CLIP; the reference column is the paper's ViT-B/32.", ""]
    if "replication" in results:
        lines += replication_section(results["replication"], results.get("replication_reference"))
    if "scores" in results:
        s = results["scores"]
        lines += ["## Scores", "", "| sentences | group | n | accuracy | correct / ambiguous / incorrect | paper (ViT-B/32) |",
                  "|---|---|---|---|---|---|"]
        for kind, paper in (("original", ref["accuracy_original_505"]), ("aligned", ref["accuracy_aligned_490"])):
            for g, t in s[kind].items():
                seg = t["segments"]
                pref = f"{paper:.1%}" + (" · 153 / 295 / 42" if kind == "aligned" else "") if g == "all" else ""
                lines.append(f"| {kind} | {g} | {t['n']} | {_fmt(None if t['accuracy'] is None else 100 * t['accuracy'], 1)}% | "
                             f"{seg['correct']} / {seg['ambiguous']} / {seg['incorrect']} | {pref} |")
        lines.append("")
    if "cte" in results:
        lines += ["## Causal tracing (CTE = d*/d), correct segment", "",
                  "Rows: generic positions; columns: hidden-state layer (0 = embeddings output).", ""]
        for loc in LOCATIONS:
            m = results["cte"][loc]["correct"]
            lines.append(f"### Negation in {loc} (n = {m['n']}); paper's negator row at layers 3 → 4: "
                         f"{ref['cte_negator_layers_3_4'][loc][0]} → {ref['cte_negator_layers_3_4'][loc][1]}")
            lines.append("")
            if m["n"]:
                n_l = len(m["std"])
                lines += ["| row | " + " | ".join(str(l) for l in range(n_l)) + " |", "|---" * (n_l + 1) + "|"]
                for name, vals in zip(m["rows"], m["matrix"]):
                    lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in vals) + " |")
                lines.append("| CTE std (rows ≥ negator) | " + " | ".join(_fmt(v) for v in m["std"]) + " |")
            lines.append("")
    if "heads" in results:
        lines += ["## Negator-selective heads (mean max attention difference Δ, 1-indexed)", ""]
        for loc, h in results["heads"].items():
            top = ", ".join(f"{t['head']} {_fmt(t['delta'])}" for t in h["top"])
            lines.append(f"- negation in {loc} (n = {h['n']}): top heads {top}")
        paper = ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in ref["head_delta"].items())
        lines += [f"- paper (ViT-B/32, caption / foil): {paper}", "",
                  "The full Δ matrix (layer × head) is in `heads_delta_caption.csv` / `heads_delta_foil.csv` and "
                  "`heads.png`; the per-head Pearson r of Δ with d in `heads_corr_d_caption.csv` / "
                  "`heads_corr_d_foil.csv` (with image scores only); the layer zoom below also in "
                  "`zoom_layer<L>_<location>.csv` and `heads_layer_zoom.png`.", ""]
        lines += _zoom_section(results["zoom"])
    conf = results["confounds"]
    lines += ["## Confounds (Pearson r with d)", "", "| relation | n | r | paper |", "|---|---|---|---|"]
    paper_r = PAPER_R
    for k, v in conf.items():
        if isinstance(v, dict) and "r" in v:
            lines.append(f"| {k} | {v['n']} | {_fmt(v['r'])} | {paper_r.get(k, '')} |")
    lines.append("")
    if "subjects" in conf:
        sub = conf["subjects"]
        lines += [f"Subjects: {sub['with_subject']} of {sub['foil_pairs']} foil-negated pairs have a subject prompt "
                  f"(paper: 236 of 240); without one: {sub['without_subject'] or 'none'}.", ""]
    if "similarity_vs_d_caption" not in conf:
        lines += ["Image-dependent parts (scores, causal tracing, confounds with d) were skipped: no images were given.", ""]
    if figures or html:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
        if html:
            lines.append(f"\nAttention view (offline HTML): [{html}]({html})")
    lines += ["", "Files: `results.json` (every number with its n), CSV tables, `items.csv` (per item)."]
    return "\n".join(lines) + "\n"
