"""``hooked-clip valse-negation``: the whole study in one command.

Default: the shipped demo model ``tiny-negation`` with synthesized scenes, fully offline. With ``--model``
(an HF hub id or directory, or ``open_clip:NAME:TAG``) and ``--images DIR`` the real study; without
``--images`` the image-dependent parts are skipped and the text-only parts still run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hooked_clip.analyses.valse_negation.data import load_items
from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages, clipseg_subject_size
from hooked_clip.analyses.valse_negation.report import aggregate, write_outputs
from hooked_clip.analyses.valse_negation.study import Settings, run_items, select_items


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-negation",
                   help="tiny-negation (default, offline), an HF hub id or local directory, or open_clip:NAME:TAG")
    p.add_argument("--images", type=Path, help="folder with the Visual7W images (v7w_<id>.jpg) for a real model")
    p.add_argument("--data", type=Path, help="a VALSE existence.json (default: the shipped copy)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/valse-negation-<model>)")
    p.add_argument("--limit", type=int, help="only the first N valid items (quick runs)")
    p.add_argument("--chunk", type=int, default=64, help="items per incremental, atomic write")
    p.add_argument("--rome", action="store_true", help="also run the ROME-noise variant of causal tracing")
    p.add_argument("--clipseg", type=Path, help="local CLIPSeg weights (save_pretrained dir) for subject size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def load(model_id: str, device: str):
    from hooked_clip import HookedCLIP, load_model

    if model_id.startswith("open_clip:"):
        parts = model_id.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--model {model_id!r}: write open_clip models as open_clip:NAME:TAG, e.g. open_clip:ViT-B-32:openai")
        return HookedCLIP.from_open_clip(parts[1], pretrained=parts[2], device=device)
    return load_model(model_id, device=device)


def run(args: argparse.Namespace) -> Path:
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be a positive number of items.")
    if args.clipseg is not None and (args.model == "tiny-negation" or args.images is None):
        raise SystemExit("--clipseg measures subject sizes in the --images photos of a real --model; pass both, "
                         "or drop --clipseg.")
    settings = Settings(limit=args.limit, chunk=args.chunk, rome=args.rome)  # checks the values before any work
    start = time.perf_counter()
    items = load_items(args.data)
    model = load(args.model, args.device)
    demo = args.model == "tiny-negation"
    if demo:
        if args.images is not None:
            raise SystemExit("the demo model sees synthesized scenes, not photos; drop --images or pass --model.")
        images = SceneImages()
    elif args.images is not None:
        images = FolderImages(args.images, clipseg_subject_size(args.clipseg) if args.clipseg else None)
        images.check(select_items(items, args.limit))  # fail before any work
    else:
        print("No --images given: skipping scores, causal tracing and the confounds with d; running the text-only "
              "parts (head scores, caption-foil similarity).", file=sys.stderr)
        images = None
    out = args.out or Path("runs") / ("valse-negation-" + args.model.replace("/", "_").replace(":", "_"))
    records = run_items(model, out, model_id=args.model, images=images, settings=settings, items=items,
                        progress=not args.no_progress)
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    results["model"] = args.model
    write_outputs(out, records, results, model=model, model_id=args.model,
                  images_note=images.describe() if images is not None else "")
    print(f"wrote {out}/report.md and results.json ({time.perf_counter() - start:.1f} s)")
    return out
