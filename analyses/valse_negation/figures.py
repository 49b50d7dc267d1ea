"""The paper's figures as PNGs in a run directory. Every title names the model; panels of one figure share a
colour range that covers the data (CTE above 1 or below 0 is shown, not clipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from hooked_clip.analyses.run_dirs import atomic_savefig
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS
from hooked_clip.analyses.valse_negation.formatting import fmt
from hooked_clip.analyses.valse_negation.segments import segment_all

SEGMENT_COLORS = {"incorrect": "tab:red", "ambiguous": "tab:grey", "correct": "tab:green"}

Save = Callable[..., None]  # save(fig, file name, title)


def write_figures(run_dir: Path, records: dict[str, dict], results: dict, model_id: str = "") -> list[str]:
    """Write the figures the results allow; returns their file names (in ``run_dir``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    name = model_id or results.get("model", "")

    def save(fig, file, title):
        fig.suptitle(f"{name}: {title}" if name else title)
        atomic_savefig(fig, run_dir / file, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(file)

    if "cte" in results:
        _cte_figure(plt, results["cte"], save)
    if "heads" in results:
        _heads_figure(plt, results["heads"], save)
    if results.get("zoom", {}).get("layer") is not None:
        _zoom_figure(plt, results["zoom"], save)
    aligned = [r for r in records.values() if "aligned" in r and "d" in r["aligned"]]
    if aligned:
        _similarity_figure(plt, aligned, results["confounds"], save)
        _histogram_figure(plt, aligned, save)
        sized = [r for r in aligned if r["negation_in"] == "foil" and r["aligned"].get("subject_area") is not None]
        if sized:
            _subject_size_figure(plt, sized, results, save)
    return made


def _limits(mats, low: float, high: float) -> tuple[float, float]:
    """One colour range for every panel: at least [low, high], widened to the data (nothing clipped)."""
    vals = np.concatenate([np.asarray(m, float).ravel() for m in mats] + [np.zeros(0)])
    vals = vals[~np.isnan(vals)]
    return (min(low, float(vals.min())), max(high, float(vals.max()))) if len(vals) else (low, high)


def _cte_figure(plt, cte: dict, save: Save) -> None:
    """The correct segment's mean CTE per location, with the CTE std per layer below."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 6.5), gridspec_kw={"height_ratios": [4, 1], "wspace": 0.35}, squeeze=False)
    mats = {loc: np.array(cte[loc]["correct"]["matrix"], float) for loc in ("foil", "caption") if cte[loc]["correct"]["n"]}
    vmin, vmax = _limits(mats.values(), 0.0, 1.0)
    for col, loc in enumerate(("foil", "caption")):
        m = cte[loc]["correct"]
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


def _heads_figure(plt, heads: dict, save: Save) -> None:
    """Δ per head and layer per location, with the layer means below."""
    locs = [l for l in ("foil", "caption") if l in heads]
    mats = {loc: np.array(heads[loc]["delta_mean"]).T for loc in locs}  # [head, layer]
    vmin, vmax = _limits(mats.values(), 0.0, 0.6)
    fig, axes = plt.subplots(2, len(locs), figsize=(6 * len(locs), 6.5), gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    for col, loc in enumerate(locs):
        mat = mats[loc]
        layers = [str(l + 1) for l in range(mat.shape[1])]
        im = axes[0, col].imshow(mat, cmap="Reds", vmin=vmin, vmax=vmax, aspect="auto")
        axes[0, col].set_xticks(range(mat.shape[1]), layers)
        axes[0, col].set_yticks(range(mat.shape[0]), [str(h + 1) for h in range(mat.shape[0])])
        axes[0, col].set_title(f"Negation in {loc} (n={heads[loc]['n']})")
        axes[0, col].set_ylabel("head (1-indexed)")
        axes[0, col].set_xlabel("layer (1-indexed)")
        fig.colorbar(im, ax=axes[0, col], label="mean max attention difference Δ")
        axes[1, col].bar(range(mat.shape[1]), heads[loc]["layer_mean"], color="grey")
        axes[1, col].set_xticks(range(mat.shape[1]), layers)
        axes[1, col].set_xlabel("layer (1-indexed)")
        axes[1, col].set_ylabel("mean Δ over heads")
    save(fig, "heads.png", "negator-selective heads")


def _zoom_figure(plt, zoom: dict, save: Save) -> None:
    """The layer zoom per location: query row × head, a diverging map symmetric around 0."""
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


def _similarity_figure(plt, aligned: list[dict], confounds: dict, save: Save) -> None:
    """d against the caption-foil cosine per location, coloured by token length."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), squeeze=False)
    for col, loc in enumerate(LOCATIONS):
        g = [r for r in aligned if r["negation_in"] == loc]
        sc = axes[0, col].scatter([r["aligned"]["similarity"] for r in g], [r["aligned"]["d"] for r in g],
                                  c=[r["aligned"]["n_tokens"] for r in g], s=10, cmap="viridis")
        rel = confounds.get(f"similarity_vs_d_{loc}", {})
        axes[0, col].set_title(f"Negation in {loc} (n = {len(g)}, r = {fmt(rel.get('r'))})")
        axes[0, col].set_xlabel("cosine similarity of caption and foil")
        axes[0, col].set_ylabel("classification score d (logits)")
        bar = fig.colorbar(sc, ax=axes[0, col], label="tokens")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    save(fig, "score_vs_similarity.png", "score vs caption-foil similarity")


def _histogram_figure(plt, aligned: list[dict], save: Save) -> None:
    """The distribution of d in bins of 0.25, stacked by segment."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.8))
    d = np.array([r["aligned"]["d"] for r in aligned])
    bins = np.arange(np.floor(d.min() * 4) / 4, d.max() + 0.25, 0.25)
    names = np.array(segment_all(d))
    for seg, color in SEGMENT_COLORS.items():
        mask = names == seg
        ax.hist(d[mask], bins=bins, color=color, label=f"{seg} ({int(mask.sum())})")
    ax.set_xlabel("classification score d (logits), bins of 0.25")
    ax.set_ylabel("items")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    save(fig, "score_histogram.png", f"score distribution (n = {len(d)})")


def _subject_size_figure(plt, sized: list[dict], results: dict, save: Save) -> None:
    """Negation in the foil: d against subject size coloured by segment, and the accuracy above each size."""
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
    save(fig, "score_vs_subject_size.png", f"negation in foil: score vs subject size (n = {rel['n']}, r = {fmt(rel['r'])})")
