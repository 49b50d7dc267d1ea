"""Per-unit overhead of ``hooked-clip sweep --backend ray`` against the in-process backend, same manifest.

The manifest: the shipped ``tiny-negation`` model × ``--units`` small datasets (``--items`` VALSE existence items
each, text-only), ``threads = 1``. Ray runs on this machine with ``--ray-cpus`` CPUs (default 1: units one
after another, as in-process, so the difference is Ray's own cost per unit: task submission, argument
transfer, the worker's model load). Ray's start and its first sweep (cold workers importing torch and
hooked_clip) are timed apart; then in-process and Ray sweeps alternate ``--repeats`` times, each into a fresh
folder, and the medians are compared. Both backends' item records are checked equal before any number is
printed.

    python benchmarks/sweep.py                    # 6 units × 8 items, 3 repeats
    python benchmarks/sweep.py --units 12 --items 4 --ray-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hooked_clip.analyses.sweep.manifest import load_manifest  # noqa: E402
from hooked_clip.analyses.sweep.run import run_sweep  # noqa: E402
from hooked_clip.analyses.valse_negation import EXISTENCE_JSON  # noqa: E402


def write_manifest(root: Path, units: int, items: int) -> Path:
    data = json.loads(EXISTENCE_JSON.read_text())
    ids = list(data)
    lines = ["[sweep]", "threads = 1", "", "[[models]]", 'name = "tiny-negation"', 'path = "tiny-negation"', ""]
    for u in range(units):
        chosen = ids[u * items:(u + 1) * items]
        (root / f"d{u}.json").write_text(json.dumps({k: data[k] for k in chosen}))
        lines += ["[[datasets]]", f'name = "d{u}"', f'path = "d{u}.json"', ""]
    lines += ["[analyses.valse-negation]", "chunk = 4"]
    (root / "sweep.toml").write_text("\n".join(lines) + "\n")
    return root / "sweep.toml"


def timed(manifest, out: Path, backend: str) -> float:
    start = time.perf_counter()
    run = run_sweep(manifest, out, backend=backend, progress=False, report=False)
    elapsed = time.perf_counter() - start
    assert set(run.unit_status.values()) == {"ran"}
    return elapsed


def records(out: Path) -> dict:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in (out / "units").rglob("items/*.json")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=6)
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ray-cpus", type=int, default=1)
    args = p.parse_args()
    import ray

    print("load at start:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    manifest = load_manifest(write_manifest(root, args.units, args.items))
    start = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_start = time.perf_counter() - start
    cold = timed(manifest, root / "ray-cold", "ray")
    local, remote = [], []
    for r in range(args.repeats):  # interleaved
        local.append(timed(manifest, root / f"local-{r}", "local"))
        remote.append(timed(manifest, root / f"ray-{r}", "ray"))
    assert records(root / "local-0") == records(root / "ray-0"), "in-process and Ray records differ"
    ray.shutdown()
    n = args.units
    lo, re_ = statistics.median(local), statistics.median(remote)
    print(f"{n} units × {args.items} items (tiny-negation, text-only), 1 torch thread per unit, "
          f"Ray with {args.ray_cpus} CPU(s), {args.repeats} interleaved repeats (medians)")
    print(f"Ray start: {ray_start:.1f} s; first Ray sweep (cold workers): {cold:.1f} s")
    print(f"in-process: {lo:.2f} s ({lo / n:.3f} s/unit); Ray: {re_:.2f} s ({re_ / n:.3f} s/unit)")
    print(f"Ray / in-process: {re_ / lo:.2f}x; overhead per unit: {(re_ - lo) / n:+.3f} s")
    print("records identical in-process and on Ray: yes")
    print("load at end:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
