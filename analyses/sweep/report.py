"""The cross-model report of a sweep, from its finished units (``OUT/plan.json`` + each ``unit.json``).

:func:`collect` reads them into :class:`SweepResults` (one row per model × dataset × metric,
``to_dataframe()``); :func:`write_report` writes ``OUT/report/``: ``report.md`` (the models, their
fingerprints, duplicates and flags, one table per metric across models and datasets), ``sweep.csv``,
``sweep_metrics.png``, and per dataset the VALSE study's model comparison (``<dataset>/comparison.md``,
:func:`hooked_clip.analyses.valse_negation.comparison.write_comparison`) over the distinct models. A model that
is a duplicate of another carries that model's numbers, marked as such. Unfinished units are listed, not
guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.run_dirs import atomic_savefig, atomic_write
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS
from hooked_clip.analyses.valse_negation.comparison import summary_table, write_comparison
from hooked_clip.loaders.files import read_json

COLUMNS = ("model", "runs_as", "fingerprint", "dataset", "analysis", "metric", "value", "detail")


@dataclass(frozen=True, repr=False)
class SweepResults(CompactRepr):
    """``rows``: one dict per (model, dataset, analysis, metric) with the columns :data:`COLUMNS` (``value`` a
    number or None, ``detail`` a label such as the head that holds it); ``plan``: the sweep's ``plan.json``;
    ``missing``: the units not finished (model, dataset)."""

    rows: list
    plan: dict
    missing: list

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r["metric"] for r in self.rows))


def valse_metrics(results: dict) -> list[tuple[str, Optional[float], str]]:
    """(metric, value, detail) of one VALSE-negation run, read through the study's comparison summary."""
    s = summary_table("", results)
    out = [("valid items", results["counts"]["valid"], ""), ("aligned pairs", results["counts"]["aligned"], "")]
    for kind in ("original", "aligned"):
        for group, t in s.get("scores", {}).get(kind, {}).items():
            out.append((f"accuracy, {kind}, {group}", t["accuracy"], f"n={t['n']}"))
    for loc in LOCATIONS:
        top = s["top_heads"].get(loc)
        if top:
            out.append((f"top negator head Δ, negation in {loc}", top[0]["delta"], top[0]["head"]))
    for loc, sim in results["confounds"].get("similarity_by_location", {}).items():
        out.append((f"caption-foil cosine, negation in {loc}", sim, ""))
    for loc, c in s.get("cte", {}).items():
        if c["negator"]:
            peak = max(range(len(c["negator"])), key=lambda i: c["negator"][i])
            out.append((f"CTE negator peak, negation in {loc}", c["negator"][peak], f"layer {peak} (n={c['n']})"))
    return out


METRICS = {"valse-negation": valse_metrics}


def collect(out) -> SweepResults:
    """The finished units of the sweep in ``out`` as rows (every name of a model, duplicates included)."""
    out = Path(out)
    plan = read_json(out / "plan.json", "a sweep's plan (JSON)", "Run the sweep again: the plan is rewritten.")
    units = {(u["model"], u["dataset"]): u for u in plan["units"]}
    rows, missing = [], []
    for model, info in plan["models"].items():
        for dataset in plan["datasets"]:
            unit = units[(info["runs_as"], dataset)]
            path = out / unit["folder"] / "unit.json"
            if not path.exists() or read_json(path, "a unit record").get("key") != unit["key"]:
                missing.append((model, dataset))
                continue
            record = read_json(path, "a unit record")
            for analysis, folder in record["analyses"].items():
                results = read_json(out / unit["folder"] / folder / "results.json", "a unit's results")
                for metric, value, detail in METRICS[analysis](results):
                    rows.append({"model": model, "runs_as": info["runs_as"],
                                 "fingerprint": info["fingerprint"]["digest"][:12], "dataset": dataset,
                                 "analysis": analysis, "metric": metric,
                                 "value": None if value is None else float(value), "detail": detail})
    return SweepResults(rows, plan, missing)


def write_report(out) -> Path:
    """Write ``OUT/report/`` from the finished units; returns the path of ``report.md``."""
    out = Path(out)
    results = collect(out)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "sweep.csv", results.to_dataframe().to_csv(index=False))
    figure = _figure(folder, results)
    comparisons = _comparisons(out, folder, results.plan)
    atomic_write(folder / "report.md", _markdown(results, figure, comparisons))
    return folder / "report.md"


def _comparisons(out: Path, folder: Path, plan: dict) -> list[str]:
    """The VALSE study's model comparison per dataset, over the distinct models whose unit finished."""
    written = []
    for dataset in plan["datasets"]:
        runs = []
        for u in plan["units"]:
            unit_json = out / u["folder"] / "unit.json"
            if u["dataset"] != dataset or "valse-negation" not in u["key"]["analyses"] or not unit_json.exists():
                continue
            run_dir = out / u["folder"] / read_json(unit_json, "a unit record")["analyses"]["valse-negation"]
            runs.append((u["model"], run_dir))
        if len(runs) >= 2:
            write_comparison(folder / dataset, runs)
            written.append(f"{dataset}/comparison.md")
    return written


def _cell(rows: list[dict]) -> str:
    if not rows:
        return "–"
    r = rows[0]
    value = "–" if r["value"] is None or math.isnan(r["value"]) else f"{r['value']:.4g}"
    return value + (f" ({r['detail']})" if r["detail"] else "") + ("" if r["model"] == r["runs_as"] else f" = `{r['runs_as']}`")


def _markdown(results: SweepResults, figure: Optional[str], comparisons: list[str]) -> str:
    plan = results.plan
    datasets = list(plan["datasets"])
    flags = {}
    for f in plan["flags"]:
        flags.setdefault(f["model"], []).append(f)
    lines = ["# Sweep report", "", f"Manifest: `{plan['manifest']}`.", "", "## Models", "",
             "| model | source | fingerprint | runs as | flags |", "|---|---|---|---|---|"]
    for name, m in plan["models"].items():
        fp = m["fingerprint"]
        marks = ", ".join(f"**{f['kind']}**" for f in flags.get(name, [])) or "–"
        lines.append(f"| `{name}` | `{m['source']}` | `fp-{fp['digest'][:12]}` ({fp['text_act_fn']}, {fp['text_pooling']}) "
                     f"| {'–' if m['runs_as'] == name else '`' + m['runs_as'] + '`'} | {marks} |")
    lines.append("")
    if plan["duplicates"]:
        lines += ["Duplicates (the same fingerprint: run once, under the first name):", ""]
        lines += [f"- `{dup}` = `{first}`" for dup, first in plan["duplicates"].items()] + [""]
    if plan["flags"]:
        lines += ["Flags:", ""] + [f"- `{f['model']}` **{f['kind']}**: {f['message']}" for f in plan["flags"]] + [""]
    if results.missing:
        lines += ["Not finished (run the sweep again to finish them): "
                  + ", ".join(f"`{m}` × `{d}`" for m, d in results.missing), ""]
    lines += ["## Across models and datasets", "", "One table per metric: rows are models, columns datasets. "
              "A duplicate carries its twin's numbers (`= name`).", ""]
    if figure:
        lines += [f"![{figure}]({figure})", ""]
    models = list(plan["models"])
    for metric in results.metrics:
        lines += [f"### {metric}", "", "| model | " + " | ".join(f"`{d}`" for d in datasets) + " |",
                  "|---" * (len(datasets) + 1) + "|"]
        for model in models:
            cells = [_cell([r for r in results.rows if r["model"] == model and r["dataset"] == d and r["metric"] == metric])
                     for d in datasets]
            lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
        lines.append("")
    if comparisons:
        lines += ["## Per-dataset comparisons (the VALSE study's comparison report)", ""]
        lines += [f"- [{c}]({c})" for c in comparisons] + [""]
    return "\n".join(lines)


FIGURE_METRICS = ("accuracy, aligned, all", "top negator head Δ, negation in caption",
                  "top negator head Δ, negation in foil", "caption-foil cosine, negation in caption")


def _figure(folder: Path, results: SweepResults) -> Optional[str]:
    """Bars per model and dataset for the headline metrics present (accuracy where images were scored)."""
    metrics = [m for m in FIGURE_METRICS if m in results.metrics]
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m, info in results.plan["models"].items() if info["runs_as"] == m]  # distinct models
    datasets = list(results.plan["datasets"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / max(len(datasets), 1)
    for ax, metric in zip(axes[0], metrics):
        for k, dataset in enumerate(datasets):
            values = []
            for model in models:
                row = [r for r in results.rows if r["model"] == model and r["dataset"] == dataset and r["metric"] == metric]
                values.append(row[0]["value"] if row and row[0]["value"] is not None else float("nan"))
            ax.bar([i + k * width for i in range(len(models))], values, width, label=dataset, color=f"C{k}")
        ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(models))], models, rotation=30,
                      ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    axes[0][0].legend(fontsize=7, title="dataset", title_fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, folder / "sweep_metrics.png", dpi=100)
    plt.close(fig)
    return "sweep_metrics.png"
