"""The report's sections on the mechanism: causal tracing (CTE per segment) and the negator-selective heads
with the layer zoom, each beside the paper's numbers (``paper.py``)."""

from __future__ import annotations

import numpy as np

from hooked_clip.analyses.valse_negation import paper
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS
from hooked_clip.analyses.valse_negation.formatting import fmt, head_name, header, labelled_head, row
from hooked_clip.analyses.valse_negation.layout import NEGATOR_ROW, ROWS

CTE_SUBSETS = (("caption", "correct"), ("foil", "correct"), ("foil", "incorrect"))


def cte_section(results: dict) -> list[str]:
    lines = ["## Causal tracing (CTE = d*/d)", "",
             "Rows: generic positions; columns: hidden-state layer (0 = embeddings output). The paper stored the "
             "correct segment of both negation locations and the incorrect segment of negation in the foil; the same "
             "subsets are shown here (every subset: `cte_<location>_<segment>.csv`). Column sums are not 1: "
             "single-state effects do not add up.", ""]
    for loc, seg in CTE_SUBSETS:
        m, published = results["cte"][loc][seg], paper.CTE[(loc, seg)]
        lines += [f"### Negation in {loc}, {seg} segment", "", f"This run (n = {m['n']}):", ""]
        if m["n"]:
            lines += header("row", range(len(m["std"])))
            lines += [row(name, vals) for name, vals in zip(m["rows"], m["matrix"])]
            lines += [row("CTE std (rows ≥ negator)", m["std"]), row("column sum", m["column_sums"]), "",
                      f"Mean CTE std: {fmt(m['mean_std'], 3)}.", ""]
        lines += [f"Paper (ViT-B/32, n = {published['n']}; rows [SOT], there, is/are are exactly 0):", ""]
        lines += header("row", range(13)) + [row(name, vals) for name, vals in published["rows"].items()]
        if published["std"]:
            lines.append(row("CTE std (rows ≥ negator)", published["std"]))
        if published["column_sums"]:
            lines.append(row("column sum", published["column_sums"]))
        lines += ["", f"Mean CTE std: {fmt(published['mean_std'], 3)}.", ""]
    if results.get("n_layers") == paper.N_LAYERS:
        lines += _negator_collapse(results["cte"])
    return lines


def _negator_collapse(cte: dict) -> list[str]:
    """The negator row's fall from layer 3 to 4, this run and the paper (12-layer models only)."""
    lines = []
    for loc in LOCATIONS:
        m = cte[loc]["correct"]
        if m["n"]:
            ours = m["matrix"][NEGATOR_ROW][3:5]
            published = paper.CTE[(loc, "correct")]["rows"][ROWS[NEGATOR_ROW]][3:5]
            lines.append(f"- Negator row, layers 3 → 4, negation in {loc}: this run {fmt(ours[0])} → {fmt(ours[1])}; "
                         f"paper {fmt(published[0])} → {fmt(published[1])}.")
    return lines + [""]


def heads_section(results: dict) -> list[str]:
    lines = ["## Negator-selective heads (mean max attention difference Δ; tables' layers and heads 1-indexed)", ""]
    for loc, h in results["heads"].items():
        top = ", ".join(f"{labelled_head(t['head'])} {fmt(t['delta'])}" for t in h["top"])
        lines.append(f"- This run, negation in {loc} (n = {h['n']}): top heads {top}")
    lines.append("- Paper (ViT-B/32, caption / foil): " + ", ".join(
        f"{head_name(*k)} {fmt(c)} / {fmt(f)}" for k, (c, f) in paper.TOP_HEADS.items()))
    lines += ["", "The full Δ matrix (layer × head) is also in `heads_delta_caption.csv` / `heads_delta_foil.csv` and "
              "`heads.png`; the per-head Pearson r of Δ with d in `heads_corr_d_caption.csv` / "
              "`heads_corr_d_foil.csv` (with image scores only); the layer zoom below also in "
              "`zoom_layer<L>_<location>.csv` and `heads_layer_zoom.png`.", ""]
    for loc, h in results["heads"].items():
        mat = np.array(h["delta_mean"], float).T  # [head, layer]
        lines += [f"Δ, negation in {loc}, this run (n = {h['n']}):", ""] + header("head \\ layer", range(1, mat.shape[1] + 1))
        lines += [row(f"H{i + 1}", r) for i, r in enumerate(mat)] + [row("layer mean", h["layer_mean"], 3), ""]
    for loc in LOCATIONS:
        lines += [f"Δ, negation in {loc}, paper (n = {paper.HEAD_N[loc]}):", ""] + header("head \\ layer", range(1, 13))
        lines += [row(f"H{i + 1}", r) for i, r in enumerate(paper.HEAD_DELTA[loc])]
        lines += [row("layer mean", paper.LAYER_MEAN[loc], 3), ""]
    return lines + _head_correlations(results["heads"]) + _zoom_section(results["zoom"])


def _head_correlations(heads: dict) -> list[str]:
    """The largest per-head |r| of Δ with d per location, beside the paper's note."""
    corr = {loc: h["corr_with_d"] for loc, h in heads.items() if "corr_with_d" in h}
    if not corr:
        return []
    parts = []
    for loc, c in corr.items():
        arr = np.array([[np.nan if v is None else v for v in r] for r in c], float)
        if np.isfinite(arr).any():
            l, hd = np.unravel_index(np.nanargmax(np.abs(arr)), arr.shape)
            parts.append(f"negation in {loc}: largest |r| {fmt(abs(arr[l, hd]))} at {head_name(l, hd)}, r = {fmt(arr[l, hd])}")
    return ["Pearson r of Δ with d per head: this run " + ("; ".join(parts) or "undefined (constant values)")
            + f". Paper: {paper.HEAD_CORR_NOTE}.", ""]


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
                      "without further subject tokens):", ""] + header("head", shown)
            lines += [row(f"H{h + 1}", vals[NEGATOR_ROW:]) for h, vals in enumerate(zoom[loc])]
            lines.append("")
    lines += ["Paper (ViT-B/32, layer 4, the paper's rule; caption / foil per cell):", ""] + header("head", paper_rows)
    for head, cells in paper.ZOOM.items():
        lines.append(f"| {head} | " + " | ".join(f"{fmt(cells[r][0])} / {fmt(cells[r][1])}" for r in paper_rows) + " |")
    lines.append("| others | " + " | ".join(f"≤ {fmt(paper.ZOOM_OTHERS[r])}" for r in paper_rows) + " |")
    return lines + ["", f"Exceptions in the paper's \"others\" row: {paper.ZOOM_OTHERS_NOTE}.", ""]
