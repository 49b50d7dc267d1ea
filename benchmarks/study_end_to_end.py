"""The VALSE negation study end to end at real size: a random-weight open_clip ViT-B/32 (saved to a file and
read back by the study's own loader) on synthetic stand-ins for the Visual7W photos (one deterministic noise
JPEG of 640x480 per image file the items name), every stage the real study runs (image preprocessing, scores,
CTE, heads, confounds, ROME with ``--rome``, report and figures). Random weights and noise photos: a timing,
not a finding. Also the default demo run (``hooked-clip valse-negation``), and each run again over its
finished records (what a rerun costs).

    python benchmarks/study_end_to_end.py [--device cuda] [--limit N] [--rome] [--work DIR]

Prints the command's wall time for each run. The study's own timer and stage timings are in its run
directory's config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "analyses" / "valse_negation" / "data" / "existence.json"


def write_images(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted({item["image_file"] for item in json.loads(DATA.read_text()).values()})
    for i, name in enumerate(names):
        pixels = np.random.default_rng(i).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
    return len(names)


def write_random_b32(path: Path) -> None:
    import open_clip

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)


def timed_run(args: list[str]) -> float:
    start = time.perf_counter()
    # run from a neutral folder: `-m` puts the working directory first on sys.path
    subprocess.run([sys.executable, "-m", "hooked_clip.analyses.cli", *args], check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rome", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="study_e2e_"))
    start = time.perf_counter()
    n_images = write_images(work / "images")
    write_random_b32(work / "b32.pt")
    print(f"set-up: {n_images} noise photos and a random ViT-B/32 file in {time.perf_counter() - start:.1f} s")
    common = ["--device", args.device, "--no-progress"] + (["--limit", str(args.limit)] if args.limit else [])
    real = ["valse-negation", "--model", f"open_clip:ViT-B-32:{work / 'b32.pt'}", "--images", str(work / "images"),
            "--subject-parser", "regex", "--out", str(work / "b32")] + (["--rome"] if args.rome else []) + common
    demo = ["valse-negation", "--out", str(work / "demo")] + common
    for label, cmd in (("random ViT-B/32 + noise photos" + (" + ROME" if args.rome else ""), real),
                       ("demo (tiny-negation-pixels)", demo)):
        first = timed_run(cmd)
        again = timed_run(cmd)
        print(f"study end to end, {label}, device {args.device}: {first:.1f} s wall; rerun over the finished "
              f"records {again:.1f} s")


if __name__ == "__main__":
    main()
