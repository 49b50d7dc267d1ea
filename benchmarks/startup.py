"""Startup: ``import hooked_clip`` + ``load_model("tiny-negation")`` in a fresh process vs ``import torch``.

Each repeat starts one fresh ``python -c "import torch"`` and one fresh
``python -c "import hooked_clip; hooked_clip.load_model('tiny-negation')"`` (order alternating), so both see the
same load; prints the median wall time of each and their ratio (target: at most 1.5x), the modules the
second process imported that only some paths need, the thread count and the load.

    python benchmarks/startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TORCH = "import torch"
OURS = "import hooked_clip; hooked_clip.load_model('tiny-negation')"
HEAVY = ("open_clip", "transformers", "torchvision", "matplotlib", "pandas", "datasets", "timm", "scipy")
CHECK = OURS + "; import sys; print(' '.join(m for m in {heavy!r} if m in sys.modules))".format(heavy=HEAVY)


def fresh(code: str) -> tuple[float, str]:
    """Wall seconds of a fresh interpreter running ``code`` (and its stdout)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, out.stdout.strip()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load at start {load()}")
    _, heavy = fresh(CHECK)  # also warms the file cache for both
    print(f"heavy modules imported by `{OURS}`: {heavy or 'none'}")
    fresh(TORCH)
    torch_s, ours_s = [], []
    for i in range(args.repeats):
        pair = [(TORCH, torch_s), (OURS, ours_s)]
        for code, times in pair if i % 2 == 0 else pair[::-1]:
            times.append(fresh(code)[0])
    t, o = statistics.median(torch_s), statistics.median(ours_s)
    print(f"import torch:                          median {t:.2f} s  (min {min(torch_s):.2f}, max {max(torch_s):.2f})")
    print(f"import hooked_clip + load tiny-negation: median {o:.2f} s  (min {min(ours_s):.2f}, max {max(ours_s):.2f})")
    print(f"ratio {o / t:.2f}x (target <= 1.5x), {args.repeats} interleaved fresh processes each, load at end {load()}")


if __name__ == "__main__":
    main()
