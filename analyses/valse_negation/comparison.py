"""Several models side by side: ``hooked-clip valse-negation --model A --model B ...``.

Each model runs in its own run directory (resumable as any run); :func:`write_comparison` reads their
``results.json`` and writes ``comparison.md``, ``comparison.json`` and ``comparison_cte.png`` (the CTE's
negator row and EOT row per model, correct segment, both negation locations) into the parent directory.
For a tower that reads another position than its end token (SigLIP: the last padded position) the second row
is its ``[pooled]`` row, the one whose state becomes the embedding, and is labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from hooked_clip.fingerprint import Fingerprint
from hooked_clip.loaders.files import read_json

from hooked_clip.analyses.valse_negation import paper
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS
from hooked_clip.analyses.valse_negation.formatting import fmt, head_name, labelled_head
from hooked_clip.analyses.valse_negation.layout import NEGATOR_ROW, POOLED_ROW, ROWS
from hooked_clip.analyses.valse_negation.markdown import RELATION_LABELS
from hooked_clip.analyses.valse_negation.segments import SEGMENTS, THRESHOLD
from hooked_clip.analyses.run_dirs import atomic_savefig, atomic_write
from hooked_clip.analyses.run_dirs import safe_name as run_dir_name  # noqa: F401 (its old name, kept)

EOT_ROW = ROWS.index("[EOT]")


def summary_table(model_id: str, results: dict) -> dict:
    out: dict = {"model": model_id, "counts": results["counts"],
                 **{k: results.get(k) for k in ("logit_scale", "n_layers", "n_heads", "subject_size_measure",
                                                "preprocessing", "tower_weights", "limit")}}
    if "scores" in results:
        out["scores"] = {kind: {g: {"n": t["n"], "accuracy": t["accuracy"], "segments": t["segments"]}
                                for g, t in results["scores"][kind].items()} for kind in ("original", "aligned")}
    if "cte" in results:
        out["cte"] = {}
        for loc in LOCATIONS:
            m = results["cte"][loc]["correct"]
            read = m["rows"].index(POOLED_ROW) if POOLED_ROW in m["rows"] else EOT_ROW  # the row the tower reads
            out["cte"][loc] = {"n": m["n"], "negator": None if m["matrix"] is None else m["matrix"][NEGATOR_ROW],
                               "eot": None if m["matrix"] is None else m["matrix"][read]}
            if read != EOT_ROW:
                out["cte"][loc]["eot_row"] = m["rows"][read]
    out["top_heads"] = {loc: h["top"][:3] for loc, h in results.get("heads", {}).items()}
    out["confounds"] = {k: v for k, v in results["confounds"].items() if isinstance(v, dict) and "r" in v}
    if "replication" in results:
        out["replication_verdict"] = results["replication"]["verdict"]
    return out


def write_comparison(out_dir, runs: Sequence[tuple[str, Path]], elapsed_s: dict | None = None) -> Path:
    """Compare the runs (model id, run directory holding results.json) and write the comparison files."""
    out_dir = Path(out_dir)
    if len(runs) < 2:
        raise ValueError(f"a comparison needs at least two runs, got {len(runs)}.")
    fingerprints = run_fingerprints(runs)
    summaries = [summary_table(mid, json.loads((Path(d) / "results.json").read_text())) for mid, d in runs]
    data = {"models": [s["model"] for s in summaries], "run_dirs": {mid: str(d) for mid, d in runs},
            "fingerprints": fingerprints,
            "elapsed_s": elapsed_s or {}, "summaries": summaries}
    atomic_write(out_dir / "comparison.json", json.dumps(data, indent=1))
    figure = _figure(out_dir, summaries)
    atomic_write(out_dir / "comparison.md", _markdown(summaries, dict(runs), figure, elapsed_s or {}))
    return out_dir / "comparison.md"


def run_fingerprints(runs: Sequence[tuple[str, Path]]) -> dict[str, Optional[str]]:
    """Each run's model fingerprint (``fp-...``, from its config.json; None for outputs written without a run's
    config). Two runs of the same weights under two names are one model: comparing them is refused, naming both."""
    out: dict[str, Optional[str]] = {}
    for mid, d in runs:
        path = Path(d) / "config.json"
        if not path.exists():
            out[mid] = None
            continue
        record = read_json(path, "the run's settings (JSON)", "Run the study again into a new --out.")
        fp = Fingerprint.from_dict(record["fingerprint"]).short
        same = [m for m, f in out.items() if f == fp]
        if same:
            raise ValueError(f"{same[0]!r} and {mid!r} are one model (the same weights, fingerprint {fp}); compare it once.")
        out[mid] = fp
    return out


def _figure(out_dir: Path, summaries: list[dict]):
    with_cte = [s for s in summaries if "cte" in s]
    if not with_cte:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True, squeeze=False)
    for col, loc in enumerate(("foil", "caption")):
        ax = axes[0, col]
        for k, s in enumerate(with_cte):
            c = s["cte"][loc]
            if c["negator"] is None:
                continue
            color = f"C{k}"
            layers = range(len(c["negator"]))
            ax.plot(layers, c["negator"], color=color, marker="o", label=f"{s['model']}: negator (n={c['n']})")
            ax.plot(layers, c["eot"], color=color, marker="s", linestyle="--", label=f"{s['model']}: {c.get('eot_row', '[EOT]')}")
        ax.set_title(f"Negation in {loc}, correct segment")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("hidden-state layer (0 = embeddings output)")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("mean CTE (d*/d)")
    fig.suptitle("CTE of the negator row and the [EOT] row: " + " vs ".join(s["model"] for s in with_cte))
    atomic_savefig(fig, out_dir / "comparison_cte.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "comparison_cte.png"


def _scale(scale) -> str:
    return "–" if scale is None else f"{scale:.2f} (±{THRESHOLD / scale:.3f})"


def _acc(s: dict, kind: str, group: str) -> str:
    t = s.get("scores", {}).get(kind, {}).get(group)
    return "–" if t is None or t["accuracy"] is None else f"{100 * t['accuracy']:.1f}% (n={t['n']})"


def _markdown(summaries: list[dict], run_dirs: dict, figure, elapsed_s: dict) -> str:
    names = [s["model"] for s in summaries]
    table = ["| | " + " | ".join(f"`{n}`" for n in names) + " | paper (ViT-B/32) |", "|---" * (len(names) + 2) + "|"]
    lines = _intro(summaries, run_dirs, table[1])
    if elapsed_s:
        lines += ["Time per model (this invocation): " + ", ".join(f"`{m}` {t:.1f} s" for m, t in elapsed_s.items()), ""]
    lines += ["## Accuracy and segments", "", *table] + _accuracy_rows(summaries) + [""]
    if any("replication_verdict" in s for s in summaries):
        lines += ["## Against the reference file", ""]
        lines += [f"- `{s['model']}`: {s.get('replication_verdict', 'not compared')}" for s in summaries] + [""]
    if figure:
        lines += ["## Causal tracing: the negator row and the [EOT] row", "", f"![{figure}]({figure})", ""]
        lines += _cte_rows(summaries)
    lines += ["## Top negator-selective heads (mean Δ)", "", *table] + _head_rows(summaries)
    lines += ["", "## Confounds (Pearson r with d, n in brackets)", "", *table] + _confound_rows(summaries)
    return "\n".join(lines) + "\n"


def _intro(summaries: list[dict], run_dirs: dict, rule: str) -> list[str]:
    """Where each model's report is, and what differs from the paper's setting per model."""
    names = [s["model"] for s in summaries]
    return ["# VALSE existence negation study — model comparison", "",
            "Each model's full report is in its own run directory: "
            + ", ".join(f"`{n}` → `{run_dirs[n]}/report.md`" for n in names) + ".", "",
            "Layers in the CTE are hidden-state layers (0 = embeddings output); heads are 0-indexed as in every hooked_clip output (L3H1 = blocks.3 head 1), the paper's label beside them (Layer 4 Head 2).", "",
            "The paper's column is OpenAI's ViT-B/32 on Visual7W photos. Segments (d = ±1 logit) depend on each model's "
            "logit scale, layers and head labels on its depth, so a model other than the paper's checkpoint is compared "
            "by accuracy and by the shape of its tables; each model's report lists what is not like for like "
            "(\"Like for like?\").", "",
            "| like for like? | " + " | ".join(f"`{n}`" for n in names) + " | paper (ViT-B/32) |", rule,
            "| logit scale (±1 logit in cosine) | " + " | ".join(_scale(s.get("logit_scale")) for s in summaries)
            + f" | {_scale(paper.LOGIT_SCALE)} |",
            "| blocks × heads | " + " | ".join("–" if s.get("n_layers") is None else f"{s['n_layers']} × {s['n_heads']}"
                                             for s in summaries) + f" | {paper.N_LAYERS} × {paper.N_HEADS} |",
            "| subject size | " + " | ".join(s.get("subject_size_measure") or "CLIPSeg area where measured"
                                           for s in summaries) + " | CLIPSeg soft area |",
            "| image pipeline | " + " | ".join(s.get("preprocessing") or "–" for s in summaries)
            + " | transformers 4 CLIPProcessor (PIL) |",
            *[f"| {tower} tower weights | " + " | ".join(_shared(summaries, i, tower) for i in range(len(summaries))) + " | – |"
              for tower in ("text", "vision")],
            "| items | " + " | ".join("all" if s.get("limit") is None else f"first {s['limit']} (--limit)"
                                    for s in summaries) + " | all |", ""]


def _shared(summaries: list[dict], i: int, tower: str) -> str:
    """Whether model i's ``tower`` has the same weights as another model's (by weight hash)."""
    mine = (summaries[i].get("tower_weights") or {}).get(tower)
    if mine is None:
        return "–"
    same = [s["model"] for j, s in enumerate(summaries) if j != i and (s.get("tower_weights") or {}).get(tower) == mine]
    return ("identical to " + ", ".join(f"`{m}`" for m in same) + "'s") if same else "its own"


def _accuracy_rows(summaries: list[dict]) -> list[str]:
    paper_acc = {key: f"{acc:.1%} (n={n})" for key, (n, acc, _) in paper.SCORES.items()}
    lines = [f"| accuracy, {kind}, {group} | " + " | ".join(_acc(s, kind, group) for s in summaries)
             + f" | {paper_acc.get((kind, group), '')} |" for kind in ("original", "aligned") for group in ("all", *LOCATIONS)]
    paper_segments = " / ".join(str(n) for n in paper.SCORES[("aligned", "all")][2])
    return lines + [f"| segments, aligned ({' / '.join(SEGMENTS)}) | " + " | ".join(
        " / ".join(str(s["scores"]["aligned"]["all"]["segments"][k]) for k in SEGMENTS)
        if "scores" in s else "–" for s in summaries) + f" | {paper_segments} |"]


def _cte_rows(summaries: list[dict]) -> list[str]:
    """Each model's CTE of the negator row and the row its tower reads, correct segment, per location."""
    lines = []
    for loc in LOCATIONS:
        lines += [f"Negation in {loc}, correct segment:", ""]
        for s in summaries:
            c = s.get("cte", {}).get(loc)
            if c is None or c["negator"] is None:
                lines.append(f"- `{s['model']}`: no items in the correct segment")
                continue
            lines.append(f"- `{s['model']}` (n = {c['n']}): negator " + " ".join(fmt(v) for v in c["negator"])
                         + f" · {c.get('eot_row', '[EOT]')} " + " ".join(fmt(v) for v in c["eot"]))
        lines.append("")
    return lines


def _paper_heads(loc: str) -> str:
    """The paper's top three heads by mean Δ with negation in ``loc`` (its caption / foil columns)."""
    col = ("caption", "foil").index(loc)  # paper.TOP_HEADS: (caption, foil)
    top = sorted(paper.TOP_HEADS.items(), key=lambda kv: -kv[1][col])[:3]
    return ", ".join(f"{head_name(*k)} {fmt(v[col])}" for k, v in top)


def _head_rows(summaries: list[dict]) -> list[str]:
    return [f"| negation in {loc} | " + " | ".join(
        ", ".join(f"{labelled_head(t['head'])} {fmt(t['delta'])}" for t in s["top_heads"].get(loc, [])) or "–"
        for s in summaries)
        + f" | {_paper_heads(loc)} |" for loc in LOCATIONS]


def _confound_rows(summaries: list[dict]) -> list[str]:
    lines = []
    for k in dict.fromkeys(k for s in summaries for k in s["confounds"]):
        cells = ["–" if s["confounds"].get(k) is None else f"{fmt(s['confounds'][k]['r'])} ({s['confounds'][k]['n']})"
                 for s in summaries]
        lines.append(f"| {RELATION_LABELS.get(k, k)} | " + " | ".join(cells)
                     + f" | {fmt(paper.CONFOUNDS[k][1]) if k in paper.CONFOUNDS else ''} |")
    return lines
