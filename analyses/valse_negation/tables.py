"""The run directory's CSV tables: ``items.csv`` (per item), ``scores.csv``, ``cte_<location>_<segment>.csv``,
``heads_delta_<location>.csv``, ``heads_corr_d_<location>.csv``, ``zoom_layer<L>_<location>.csv`` and
``confounds.csv``, ``dropped.csv`` (every item left out, with the stage and the reason), each written atomically."""

from __future__ import annotations

from pathlib import Path

from hooked_clip.analyses.run_dirs import atomic_csv
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS

ITEM_FIELDS = ("id", "negation_in", "caption", "foil", "s_caption", "s_foil", "d", "segment", "similarity", "n_tokens")
ALIGNED_FIELDS = ("caption", "foil", "s_caption", "s_foil", "d", "segment", "similarity", "n_tokens", "subject",
                  "subject_area", "subject_area_binary")


def write_tables(run_dir: Path, records: dict[str, dict], results: dict) -> None:
    """Write every table the results hold."""
    import pandas as pd

    atomic_csv(pd.DataFrame([_item_row(r) for r in records.values()]), run_dir / "items.csv", index=False)
    atomic_csv(pd.DataFrame(results.get("dropped", []), columns=["id", "stage", "reason"]), run_dir / "dropped.csv",
               index=False)
    if "scores" in results:
        rows = [{"sentences": s, "group": g, "n": t["n"], "accuracy": t["accuracy"], **t["segments"]}
                for s, groups in results["scores"].items() for g, t in groups.items()]
        atomic_csv(pd.DataFrame(rows), run_dir / "scores.csv", index=False)
    for loc, segs in results.get("cte", {}).items():
        for seg, m in segs.items():
            if m["n"]:
                df = pd.DataFrame(m["matrix"], index=m["rows"], columns=[f"layer_{l}" for l in range(len(m["std"]))])
                df.loc["CTE std (rows >= negator)"] = m["std"]
                atomic_csv(df, run_dir / f"cte_{loc}_{seg}.csv", index_label="row")
    _write_head_tables(pd, run_dir, results)
    conf = [{"relation": k, **v} for k, v in results["confounds"].items() if isinstance(v, dict) and "r" in v]
    atomic_csv(pd.DataFrame(conf), run_dir / "confounds.csv", index=False)


def _item_row(r: dict) -> dict:
    a = r.get("aligned", {})
    return {**{k: r.get(k) for k in ITEM_FIELDS}, **{f"aligned_{k}": a.get(k) for k in ALIGNED_FIELDS}}


def _write_head_tables(pd, run_dir: Path, results: dict) -> None:
    for loc, h in results.get("heads", {}).items():
        cols = [f"H{i + 1}" for i in range(len(h["delta_mean"][0]))]
        idx = [f"L{l + 1}" for l in range(len(h["delta_mean"]))]
        atomic_csv(pd.DataFrame(h["delta_mean"], index=idx, columns=cols), run_dir / f"heads_delta_{loc}.csv",
                   index_label="layer (1-indexed)")
        if "corr_with_d" in h:
            atomic_csv(pd.DataFrame(h["corr_with_d"], index=idx, columns=cols), run_dir / f"heads_corr_d_{loc}.csv",
                       index_label="layer (1-indexed)")
    zoom = results.get("zoom", {})
    if zoom.get("layer") is not None:
        for loc in LOCATIONS:
            if loc in zoom:
                atomic_csv(pd.DataFrame(zoom[loc], index=[f"H{i + 1}" for i in range(len(zoom[loc]))], columns=zoom["rows"]),
                           run_dir / f"zoom_layer{zoom['layer']}_{loc}.csv", index_label="head")
