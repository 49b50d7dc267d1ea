"""The atlas report: per phenomenon and model, where the changed tokens' information reaches the read-out (the
generalised CTE map), which heads attend to the changed tokens, and the counts of pairs used and dropped.

Outputs in the run directory: ``report.md``, ``atlas_cte.png`` (one panel per phenomenon side by side, one row per
model), ``atlas_heads.png`` (the same grid of head scores), ``results.json`` (every number of the report) and
``dropped.csv`` (every pair left out, with the reason)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import torch

from hooked_clip.analyses.localize.trace import DIRECTIONS, ROLES, Localization
from hooked_clip.analyses.run_dirs import atomic_savefig, atomic_write
from hooked_clip.names import head_label

#: what each demo model learnt, and the sentences it learnt it from (the report's note on its maps)
DEMO_WORLDS = {"tiny-negation": ("existence", "'There is/are (no) X'"),
               "tiny-negation-pixels": ("existence", "'There is/are (no) X'"),
               "tiny-count": ("existence and counting (0-4)", "'There is/are (no) X', 'There are exactly 2 X'")}
DEMO_NOTE = ("The demo model {model} was trained only on {what} sentences about a synthetic world ({examples}); its "
             "maps for any other phenomenon show how an arbitrary token change propagates through a tower that never "
             "learnt that phenomenon, not a learnt mechanism.")
SCENES_NOTE = ("Images: for each pair a synthetic scene built from its caption (the caption true, the foil false), so d "
               "> 0 means the model prefers the caption; only the pairs the model's world covers are kept.")


def demo_note(model: str) -> str:
    """The report's note on a demo model's maps: which phenomena it learnt (``DEMO_WORLDS``)."""
    what, examples = DEMO_WORLDS.get(model, ("existence", "'There is/are (no) X'"))
    return DEMO_NOTE.format(model=model, what=what, examples=examples)
STATES_NOTE = ("Rows are the paper's hidden states: 0 = embeddings output, l = output of block l (1-indexed); heads "
               "are printed `L{layer}H{head}`, 0-indexed.")


def summarize(result: Localization) -> dict:
    """Per phenomenon: counts, alignment kinds, mean d, the mean CTE map [state][role] and the strongest heads."""
    out = {}
    for ph in dict.fromkeys(result.phenomena):
        sel = result.select(ph)
        cte, heads = result.phenomenon_map(ph), result.phenomenon_heads(ph)
        pooled = cte[:, ROLES.index("pooled")]
        half = [s for s in range(len(pooled)) if float(pooled[s]) >= 0.5]
        order = torch.argsort(heads.flatten().nan_to_num(float("-inf")), descending=True)[:3].tolist()
        n_heads = heads.shape[1]
        out[ph] = {
            "pairs": int(sel.sum()),
            "kinds": dict(Counter(k for k, s in zip(result.kinds, sel.tolist()) if s)),
            "mean_d": float(result.d[sel].mean()),
            "no_gap": int((result.d[sel] == 0).sum()),
            "cte": [[None if math.isnan(v) else round(v, 6) for v in row] for row in cte.tolist()],
            "pooled_state_half": half[0] if half else None,
            "top_heads": [[head_label(i // n_heads, i % n_heads), round(float(heads.flatten()[i]), 6)] for i in order],
        }
    return out


def plot_atlas(runs: dict[str, Localization], phenomena: list[str], what: str = "cte", per_row: int = 6):
    """The figure: one panel per phenomenon, side by side (``per_row`` to a row), one block of rows per model;
    ``what``: ``"cte"`` (hidden state x role) or ``"heads"`` (layer x head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(per_row, len(phenomena))
    block = -(-len(phenomena) // cols)  # rows per model
    rows = block * len(runs)
    width, height = 2.3 * cols + 1.2, 2.7 * rows + 0.3
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.7 / width, right=1 - 1.2 / width, bottom=0.75 / height, top=1 - 0.5 / height,
                        wspace=0.25, hspace=0.75 * 2.7 / 2.7)
    grids = {(m, ph): (res.phenomenon_map(ph) if what == "cte" else res.phenomenon_heads(ph))
             for m, res in runs.items() for ph in phenomena if bool(res.select(ph).any())}
    # one colour scale for every panel: CTE in [-1, 1]; head scores to the largest magnitude shown
    lim = 1.0 if what == "cte" else max([0.05] + [float(g.abs().nan_to_num(0).max()) for g in grids.values()])
    image = None
    for m, (model_id, res) in enumerate(runs.items()):
        for k in range(block * cols):
            ax = axes[m * block + k // cols][k % cols]
            if k >= len(phenomena):
                ax.axis("off")
                continue
            ph = phenomena[k]
            sel = res.select(ph)
            grid = grids.get((model_id, ph))
            ax.set_title(f"{ph}\n{model_id} (n={int(sel.sum())})", fontsize=7)
            if grid is None:
                ax.axis("off")
                continue
            image = ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
            if what == "cte":
                ax.set_xticks(range(len(ROLES)), ROLES, rotation=60, fontsize=6)
            else:
                ax.set_xlabel("head", fontsize=6)
            if k % cols == 0:
                ax.set_ylabel("hidden state" if what == "cte" else "layer", fontsize=7)
            ax.tick_params(labelsize=6)
    if image is not None:
        cax = fig.add_axes([1 - 1.0 / width, 0.75 / height, 0.15 / width, 1 - 1.25 / height])
        cax.tick_params(labelsize=6)
        fig.colorbar(image, cax=cax).set_label("mean CTE" if what == "cte" else "mean head score", fontsize=7)
    return fig


def write_report(out: Path, runs: dict[str, Localization], *, datasets: list[str], demo_models: tuple[str, ...] = (),
                 elapsed: dict[str, float] | None = None, scenes: bool = False) -> Path:
    """Write the atlas of ``runs`` ({model id: result}) into ``out``; returns the report's path. ``scenes``: the
    demo models read scenes built from the captions (``--scenes``)."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    phenomena = list(dict.fromkeys(ph for res in runs.values() for ph in res.phenomena))
    for what, name in (("cte", "atlas_cte.png"), ("heads", "atlas_heads.png")):
        fig = plot_atlas(runs, phenomena, what)
        atomic_savefig(fig, out / name, dpi=80)
        plt.close(fig)
    summary = {m: {"metric": res.metric, "direction": res.direction, "phenomena": summarize(res),
                   "dropped": len(res.dropped),
                   "elapsed_s": (elapsed or {}).get(m)} for m, res in runs.items()}
    atomic_write(out / "results.json", json.dumps({"datasets": datasets, "roles": list(ROLES), "models": summary},
                                                  indent=1))
    dropped = io.StringIO(newline="")
    w = csv.writer(dropped)
    w.writerow(["model", "id", "reason"])
    for m, res in runs.items():
        w.writerows([m, pid, why] for pid, why in res.dropped)
    atomic_write(out / "dropped.csv", dropped.getvalue())

    into_foil = all(res.direction == DIRECTIONS[0] for res in runs.values())
    patched, source = ("foil", "caption") if into_foil else ("caption", "foil")
    lines = ["# Localisation atlas", "", f"Data: {', '.join(datasets)}. Models: {', '.join(runs)}.", "",
             f"**What is measured.** Each {patched} is run with one hidden state of its {source} patched in "
             f"(`{DIRECTIONS[0] if into_foil else DIRECTIONS[1]}`; positions matched by a token alignment, so the "
             f"sentences may differ in length); CTE is the share of the caption-foil gap that one state closes, "
             f"averaged over the {patched}'s positions of each role ({', '.join(ROLES)}) and over pairs. {STATES_NOTE}", ""]
    for m, res in runs.items():
        lines.append(f"- `{m}`: metric {res.metric}.")
        if m in demo_models:
            lines.append(f"  {demo_note(m)}" + (f" {SCENES_NOTE}" if scenes else ""))
    lines += ["", "![atlas](atlas_cte.png)", "", "Head scores (attention from later tokens to the changed tokens, foil "
              "minus caption; the paper's Δ for one substituted token):", "", "![heads](atlas_heads.png)", ""]
    lines += ["`no gap`: pairs the model scores alike (d = 0: CTE undefined, left out of the maps).", "",
              "| model | phenomenon | pairs | no gap | kinds | mean d | first state with pooled CTE ≥ 0.5 | top heads |",
              "|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        for ph, t in s["phenomena"].items():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t["kinds"].items()))
            heads = ", ".join(f"{h} ({v:.2f})" for h, v in t["top_heads"])
            lines.append(f"| `{m}` | {ph} | {t['pairs']} | {t['no_gap']} | {kinds} | {t['mean_d']:.3f} | {t['pooled_state_half']} | {heads} |")
    lines += [""]
    for m, res in runs.items():
        reasons = Counter(why.split(" (")[0] for _, why in res.dropped)
        listed = "; ".join(f"{why}: {n}" for why, n in reasons.most_common()) or "none"
        lines.append(f"Dropped for `{m}`: {len(res.dropped)} ({listed}); every one is named in `dropped.csv`.")
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"


__all__ = ["DEMO_WORLDS", "demo_note", "plot_atlas", "summarize", "write_report"]
