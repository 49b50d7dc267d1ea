"""The default study (the README's first command, ``hooked-clip valse-negation`` on ``tiny-negation-pixels``):
wall and CPU time of a first run and of a rerun over the finished run, each against its baseline in the same
invocation.

- first run: the default (1 torch thread for the demo models) vs ``--threads 2`` (torch's default on 2 cores,
  what the study used before);
- rerun: the default (outputs up to date, nothing rebuilt) vs a rerun that rebuilds the outputs (its
  ``.outputs.json`` removed first, as every rerun did before).

Each process is fresh (``python -m hooked_clip.analyses.cli``); the pairs alternate order over ``--repeats``.
CPU time is the child's user + system time. Prints the load at start and end.

    python benchmarks/study_default.py [--repeats 1] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh study process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hooked_clip.analyses.cli", "valse-negation", "--no-progress", *args],
                   check=True, cwd=tempfile.gettempdir(), env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def show(label: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
    print(f"  {label:<44} wall {wall:6.2f} s   CPU {cpu:6.2f} s")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    limit = ["--limit", str(args.limit)] if args.limit else []
    work = Path(tempfile.mkdtemp(prefix="study_default_"))
    print(f"{os.cpu_count()} cores, load at start {load()}, items: {args.limit or 'all'}")
    first = {"default (1 thread)": [], "--threads 2": []}
    rerun = {"default (outputs up to date)": [], "outputs rebuilt": []}
    for i in range(args.repeats):
        for label in (list(first) if i % 2 == 0 else list(first)[::-1]):
            out = work / f"first{i}-{label.split()[0]}"
            first[label].append(timed(["--out", str(out), *limit] + (["--threads", "2"] if "2" in label else [])))
        out = work / f"first{i}-default"
        for label in (list(rerun) if i % 2 == 0 else list(rerun)[::-1]):
            if label == "outputs rebuilt":
                (out / ".outputs.json").unlink(missing_ok=True)
            rerun[label].append(timed(["--out", str(out), *limit]))
    print("first run:")
    w1, c1 = show("default (1 thread)", first["default (1 thread)"])
    w2, c2 = show("--threads 2", first["--threads 2"])
    print(f"  ratio --threads 2 / default: wall {w2 / w1:.2f}x, CPU {c2 / c1:.2f}x")
    print("rerun over the finished run:")
    w1, c1 = show("default (outputs up to date)", rerun["default (outputs up to date)"])
    w2, c2 = show("outputs rebuilt", rerun["outputs rebuilt"])
    print(f"  ratio rebuilt / default: wall {w2 / w1:.2f}x, CPU {c2 / c1:.2f}x")
    print(f"load at end {load()}, {args.repeats} repeat(s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
