"""``hooked-clip localize``: where the changed tokens of minimal pairs reach the read-out, per phenomenon and model.

Pairs come from the shipped datasets (``--dataset valse:counting-hard``, ``--dataset sugarcrepe`` for a whole
collection; ``--list`` shows them with their counts) and from your own JSON-lines files (``--data FILE``: one pair
per line, ``{"id": ..., "caption": ..., "foil": ..., "image": optional, "phenomenon": optional}``). Every pair left
out is named with the reason in the run's ``dropped.csv``.

Without ``--images`` the metric is text-only: the foil's cosine to the caption's embedding (where the change's
information reaches the text embedding, not whether the model gets the pair right). With ``--images DIR`` (the
pairs' ``image`` files) it is the paper's image-text similarity. The default model is the shipped demo model
``tiny-negation``, trained on existence only (the report says so); ``tiny-count`` learnt existence and counting
(0-4). The demo models read scenes, not photos: ``--scenes`` builds one per pair from its caption (the caption true,
the foil false) for the image metric, and ``--world-only`` keeps only the pairs their world covers (both imply
dropping, and naming, the others). ``--model`` takes an HF hub id or directory, or ``open_clip:NAME:TAG``, and
repeats for a side-by-side atlas. Runs resume: chunks already written are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.localize.pairs_file import PairSet, dataset_names, load_dataset, read_pairs

SUBCOMMAND = "localize"  # hooked-clip localize (found by hooked_clip.analyses.cli)
HELP = "an atlas of where minimal pairs' changed tokens reach the read-out (VALSE, SugarCrepe, ARO, your own pairs)"
DEMO_MODELS = ("tiny-negation", "tiny-negation-pixels", "tiny-count")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", action="append", default=[],
                   help="a shipped dataset (valse:counting-hard, sugarcrepe:replace-rel, aro:negclip) or a whole "
                        "collection (valse, sugarcrepe, aro); repeat for several; --list shows them")
    p.add_argument("--data", action="append", type=Path, default=[],
                   help="your own pairs: a JSON-lines file (id, caption, foil, optional image and phenomenon); repeat")
    p.add_argument("--model", action="append", default=None,
                   help="tiny-negation (default, offline), an HF hub id or local directory, or open_clip:NAME:TAG; "
                        "repeat for one row per model in the atlas")
    p.add_argument("--list", action="store_true", help="list the shipped datasets with their pair counts and exit")
    p.add_argument("--images", type=Path, help="folder holding the pairs' image files: the paper's image metric")
    p.add_argument("--scenes", action="store_true",
                   help="demo models: read each pair against a scene built from its caption (caption true, foil false), "
                        "the image metric; implies --world-only")
    p.add_argument("--world-only", action="store_true",
                   help="demo models: keep only the pairs their synthetic world covers (its sentence forms, objects, "
                        "counts and words); the others are named in dropped.csv")
    p.add_argument("--out", type=Path, default=Path("runs") / "localize", help="run directory (default: runs/localize)")
    p.add_argument("--limit", type=int, help="only the first N pairs of each phenomenon (quick runs)")
    p.add_argument("--chunk", type=int, default=64, help="pairs per engine call and per resumable write")
    p.add_argument("--batch-size", type=int, default=1024, help="most patched rows per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available, else the CPU)")
    p.add_argument("--no-progress", action="store_true")


def list_datasets() -> str:
    lines = [f"{'dataset':<28} pairs"]
    for name in dataset_names():
        lines.append(f"{name:<28} {len(load_dataset(name))}")
    return "\n".join(lines)


def image_embeddings(model, pairs: PairSet, folder: Path) -> tuple[dict, list[tuple[str, str]]]:
    """{pair id: image embedding} of the pairs whose image file is in ``folder``; the others named as dropped."""
    import torch
    from PIL import Image

    if not folder.is_dir():
        raise NotADirectoryError(f"--images {folder} is not a folder; pass the folder holding the pairs' image files.")
    found, dropped = [], []
    for p in pairs.pairs:
        if not p.image:
            dropped.append((p.id, "no image named in the pair (--images needs one per pair)"))
        elif not (folder / p.image).is_file():
            dropped.append((p.id, f"image {p.image} is not in {folder}"))
        else:
            found.append(p)
    embeds = {}
    for start in range(0, len(found), 32):
        batch = found[start:start + 32]
        with torch.inference_mode():
            e = model.encode_image([Image.open(folder / p.image).convert("RGB") for p in batch])
        embeds.update({p.id: row for p, row in zip(batch, e)})
    return embeds, dropped


def scene_embeddings(model, pairs: PairSet) -> dict:
    """{pair id: the embedding of a scene built from the pair's caption} (a demo model; pairs it covers)."""
    import torch

    from hooked_clip.analyses.valse_negation.demo_scenes import caption_scenes, scene_input

    with torch.inference_mode():
        e = model.encode_image(scene_input(model, caption_scenes(model, pairs)))
    return {p.id: row for p, row in zip(pairs.pairs, e)}


def run(args: argparse.Namespace) -> Optional[Path]:
    if args.list:
        print(list_datasets())
        return None
    if not args.dataset and not args.data:
        raise SystemExit("name the pairs: --dataset NAME (see --list) and/or --data FILE (JSON lines: id, caption, foil, "
                         "optional image and phenomenon).")
    for name, value in (("--limit", args.limit), ("--chunk", args.chunk), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SystemExit(f"{name} must be a positive number, got {value}.")
    from hooked_clip.analyses.localize.report import write_report
    from hooked_clip.analyses.localize.study import run_model
    from hooked_clip.analyses.valse_negation.cli import load  # model ids as the negation study reads them
    from hooked_clip.analyses.valse_negation.comparison import run_dir_name
    from hooked_clip.analyses.valse_negation.demo_scenes import world_pairs

    pairs = PairSet([])
    for name in args.dataset:
        pairs = pairs + load_dataset(name)
    for path in args.data:
        pairs = pairs + read_pairs(path)
    if len({p.id for p in pairs.pairs}) != len(pairs):
        raise SystemExit("two pairs share an id across the datasets and files given; give each file's pairs their own ids.")
    pairs = pairs.head(args.limit)
    models = args.model or [DEMO_MODELS[0]]
    if len(set(models)) != len(models):
        raise SystemExit(f"--model lists a model twice ({models}); name each model once.")
    if args.images is not None and any(m in DEMO_MODELS for m in models):
        raise SystemExit("the demo models see synthesized scenes, not photos: drop --images for them (the text-only "
                         "metric, or --scenes for scenes built from the captions), or pass a real --model.")
    if args.images is not None and args.scenes:
        raise SystemExit("--images and --scenes both give the image metric: pass one (--scenes: demo models only).")
    real = [m for m in models if m not in DEMO_MODELS]
    if (args.scenes or args.world_only) and real:
        raise SystemExit(f"--scenes and --world-only are for the demo models ({', '.join(DEMO_MODELS)}), not {real[0]}: "
                         "drop them, or pass --images DIR for a real model.")
    runs, elapsed = {}, {}
    for model_id in models:
        start = time.perf_counter()
        model = load(model_id, args.device)
        embeds, model_pairs = None, pairs
        if args.scenes or args.world_only:
            model_pairs = world_pairs(model, pairs)
            if not model_pairs.pairs:
                raise SystemExit(f"no pair is in {model_id}'s synthetic world (e.g. {model_pairs.dropped[0][0]}: "
                                 f"{model_pairs.dropped[0][1]}); drop --scenes/--world-only for the text-only atlas.")
        if args.scenes:
            embeds = scene_embeddings(model, model_pairs)
        if args.images is not None:
            embeds, dropped = image_embeddings(model, pairs, args.images)
            model_pairs = PairSet(pairs.pairs, pairs.dropped + dropped)
        runs[model_id] = run_model(model, model_pairs, args.out / run_dir_name(model_id), image_embeds=embeds,
                                   chunk=args.chunk, batch_size=args.batch_size, progress=not args.no_progress)
        elapsed[model_id] = time.perf_counter() - start
        print(f"{model_id}: {len(runs[model_id].ids)} pairs localized, {len(runs[model_id].dropped)} dropped "
              f"({elapsed[model_id]:.1f} s)", file=sys.stderr)
    path = write_report(args.out, runs, datasets=[*args.dataset, *map(str, args.data)], demo_models=DEMO_MODELS,
                        elapsed=elapsed, scenes=args.scenes)
    print(f"wrote {path}")
    return args.out
