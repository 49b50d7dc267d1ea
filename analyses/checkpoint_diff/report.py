"""The checkpoint-diff outputs: ``results.json``, ``report.md`` and three figures whose names and titles carry
both models (``<base>-vs-<tuned>_states.png``, ``_heads.png``, ``_weights.png``); every file is written to a
temporary name and renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hooked_clip.analyses.checkpoint_diff.measure import DIRECTIONS, ROLES
from hooked_clip.analyses.run_dirs import atomic_savefig, atomic_write, safe_name
from hooked_clip.names import head_label


def figure_prefix(base: str, tuned: str) -> str:
    return f"{safe_name(base)}-vs-{safe_name(tuned)}"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(out: Path, results: dict, sweeps: dict, diff) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    base, tuned = results["base"]["name"], results["tuned"]["name"]
    prefix = figure_prefix(base, tuned)
    title = f"{tuned} vs {base}"
    lim = max(1.0, max(float(s.states.nan_to_num().abs().max()) for s in sweeps.values()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (direction, s) in zip(axes, sweeps.items()):
        im = ax.imshow(s.states.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set(title=f"{direction}: {DIRECTIONS[direction]}", xlabel="token role", ylabel="hidden state")
        ax.set_xticks(range(len(ROLES)), ROLES, rotation=30, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the gap")
    fig.suptitle(f"{title}: one hidden state patched across checkpoints")
    _save(fig, out / f"{prefix}_states.png")
    hl = max(1.0, max(float(s.heads.abs().max()) for s in sweeps.values()))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (direction, s) in zip(axes, sweeps.items()):
        im = ax.imshow(s.heads.numpy(), cmap="RdBu_r", vmin=-hl, vmax=hl, aspect="auto")
        ax.set(title=f"{direction}: {DIRECTIONS[direction]}", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}: one head (z, all positions) patched across checkpoints")
    _save(fig, out / f"{prefix}_heads.png")
    fig = diff.plot()
    fig.suptitle(f"{title}: weight diff ({diff.tower} tower)")
    _save(fig, out / f"{prefix}_weights.png")
    results = {**results, "figures": [f"{prefix}_{k}.png" for k in ("states", "heads", "weights")]}
    atomic_write(out / "results.json", json.dumps(results, indent=1))
    atomic_write(out / "report.md", _markdown(results, prefix))
    return out / "report.md"


def results_dict(base: dict, tuned: dict, n_items: int, sweeps: dict, diff, same_images: bool) -> dict:
    """Everything the report says, as numbers (``results.json``)."""
    out = {"base": base, "tuned": tuned, "n_items": n_items, "roles": list(ROLES), "same_images": same_images,
           "weights": _weights_summary(diff)}
    for direction, s in sweeps.items():
        flat = s.heads.flatten()
        order = flat.argsort(descending=True)[:5].tolist()
        n_heads = s.heads.shape[1]
        out[direction] = {
            "states": [[None if v != v else round(v, 4) for v in row] for row in s.states.tolist()],
            "heads": [[round(v, 4) for v in row] for row in s.heads.tolist()],
            "top_heads": [[head_label(i // n_heads, i % n_heads), round(float(flat[i]), 4)] for i in order],
        }
    return out


def _weights_summary(diff) -> dict:
    per_layer = {}
    for comp, kind, layer, r in zip(diff.components, diff.kinds, diff.layers, diff.relative_change.tolist()):
        if layer is not None:
            per_layer.setdefault(layer, {})[comp.split("_", 1)[1]] = round(r, 4)
    for layer in range(diff.head_change.shape[1]):
        per_layer.setdefault(layer, {})
        per_layer[layer]["QK (mean over heads)"] = round(float(diff.head_change[0, layer].mean()), 4)
        per_layer[layer]["OV (mean over heads)"] = round(float(diff.head_change[1, layer].mean()), 4)
        per_layer[layer]["OV read max angle (deg)"] = round(float(torch.rad2deg(diff.angles[2, layer]).max()), 2)
    outside = {c: round(r, 4) for c, l, r in zip(diff.components, diff.layers, diff.relative_change.tolist()) if l is None}
    return {"per_layer": {str(k): v for k, v in sorted(per_layer.items())}, "outside_blocks": outside}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _markdown(r: dict, prefix: str) -> str:
    b, t = r["base"], r["tuned"]
    lines = [f"# Checkpoint diff: `{t['name']}` vs `{b['name']}`", "",
             f"- base `{b['name']}` ({b['fingerprint']}), tuned `{t['name']}` ({t['fingerprint']})",
             f"- {r['n_items']} negated sentences (VALSE existence, scenes synthesized in the toy world); negation "
             "behaviour b = S(N, scene without the subject) − S(N, the same scene with it), in logits",
             f"- base: mean b {b['mean_b']:+.2f}, accuracy (b > 0) {b['accuracy']:.3f}; tuned: mean b {t['mean_b']:+.2f}, "
             f"accuracy {t['accuracy']:.3f}", ""]
    if not r["same_images"]:
        lines += ["**The two models' image towers differ**: both texts are read against the base's images.", ""]
    for direction, what in DIRECTIONS.items():
        d = r[direction]
        lines += [f"## {direction}: {what}", "",
                  "Fraction of the gap moved by patching ONE hidden state (rows: 0 = embeddings, l = after block l) at "
                  "every position of a token role (ratio of means over items).", "",
                  "| state | " + " | ".join(r["roles"]) + " |", "|---" * (len(r["roles"]) + 1) + "|"]
        lines += [f"| {i} | " + " | ".join(_fmt(v) for v in row) + " |" for i, row in enumerate(d["states"])]
        lines += ["", "Heads (each head's z at every position): top " +
                  ", ".join(f"{h} {v:+.2f}" for h, v in d["top_heads"]), ""]
    lines += [f"![states]({prefix}_states.png)", "", f"![heads]({prefix}_heads.png)", "",
              "## Weight diff (relative change ‖W_tuned − W_base‖ / ‖W_base‖)", "",
              "| layer | " + " | ".join(next(iter(r["weights"]["per_layer"].values())).keys()) + " |",
              "|---" * (1 + len(next(iter(r["weights"]["per_layer"].values())))) + "|"]
    for layer, row in r["weights"]["per_layer"].items():
        lines.append(f"| {layer} | " + " | ".join(f"{v:.3g}" for v in row.values()) + " |")
    lines += ["", "Outside the blocks: " + ", ".join(f"{k} {v:.3g}" for k, v in r["weights"]["outside_blocks"].items()),
              "", f"![weights]({prefix}_weights.png)", ""]
    return "\n".join(lines)
