"""``hooked-clip localize``: where the changed tokens of minimal pairs reach the read-out, per phenomenon and model.

Pairs come from the shipped datasets (``--dataset valse:counting-hard``, ``--dataset sugarcrepe`` for a whole
collection; ``--list`` shows them with their counts) and from your own JSON-lines files (``--data FILE``: one pair
per line, ``{"id": ..., "caption": ..., "foil": ..., "image": optional, "phenomenon": optional}``). Every pair left
out is named with the reason in the run's ``dropped.csv``.

Without ``--images`` the metric is text-only: the foil's cosine to the caption's embedding (where the change's
information reaches the text embedding, not whether the model gets the pair right). With ``--images DIR`` (the
pairs' ``image`` files) it is the paper's image-text similarity. The default model is the shipped demo model
``tiny-negation``, trained on existence only (the report says so); ``tiny-count`` learnt existence and counting
(0-4). ``--model`` takes an HF hub id or directory, or ``open_clip:NAME:TAG``, and repeats for a side-by-side
atlas. Runs resume: chunks already written are reused.

The demo models see synthesized scenes, not photos: ``--scenes`` gives the existence-only ones the image metric on the
negation study's scenes (existence pairs only; the others are dropped and named) and ``tiny-count`` a scene built
from each caption by its world (the caption true, the foil false); ``--world-only`` keeps only the pairs a demo
model's world covers (``--scenes`` implies it for ``tiny-count``), naming the others. ``--direction foil-into-caption`` patches the foil's
states into the caption run; with the study's aligned pairs (``valse_negation.data.paper_pairs``, written with
``pairs_file.write_pairs``) and ``--scenes`` that is the negation study's trace (docs/api/localize.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.localize.pairs_file import PairSet, dataset_names, load_dataset, read_pairs
from hooked_clip.analyses.localize.trace import DIRECTIONS

SUBCOMMAND = "localize"  # hooked-clip localize (found by hooked_clip.analyses.cli)
HELP = "an atlas of where minimal pairs' changed tokens reach the read-out (VALSE, SugarCrepe, ARO, your own pairs)"
DEMO_MODELS = ("tiny-negation", "tiny-negation-pixels", "tiny-count")
DEMO_FIX = ("pass --scenes instead of --images (the image metric on scenes synthesized from existence pairs), drop "
            "--images (the text-only metric), or pass a real --model")


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
                   help="the demo models: the image metric on synthesized scenes (tiny-negation*: the negation study's "
                        "scenes of existence pairs; tiny-count: a scene built from each caption, implies --world-only); "
                        "pairs no scene depicts are dropped and named")
    p.add_argument("--world-only", action="store_true",
                   help="demo models: keep only the pairs their synthetic world covers (its sentence forms, objects, "
                        "counts and words); the others are named in dropped.csv")
    p.add_argument("--direction", choices=DIRECTIONS, default=DIRECTIONS[0],
                   help="whose hidden states are patched into which run (default caption-into-foil; the negation "
                        "study's trace, with the negated sentence as the foil, is foil-into-caption)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory, used as given; each model's chunks go to OUT/<model>-<fingerprint> (default: "
                        "runs/localize-<model>-<fingerprint>, with several models runs/localize-atlas)")
    p.add_argument("--limit", type=int, help="only the first N pairs of each phenomenon (quick runs)")
    p.add_argument("--chunk", type=int, default=64, help="pairs per engine call and per resumable write")
    p.add_argument("--batch-size", type=int, default=1024, help="most patched rows per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available, else the CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for the demo models, whose small matrices lose much to more "
                        "threads on a busy machine; torch's default, or OMP_NUM_THREADS, otherwise)")
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
    for name, value in (("--limit", args.limit), ("--chunk", args.chunk), ("--batch-size", args.batch_size),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise SystemExit(f"{name} must be a positive number, got {value}.")
    from hooked_clip.analyses.localize.report import write_report
    from hooked_clip.analyses.run_dirs import RUNS
    from hooked_clip.analyses.valse_negation.cli import threads_for, torch_threads  # as the negation study
    from hooked_clip.analyses.valse_negation.demo_scenes import PHOTOS_REFUSED

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
    demo = [m for m in models if m in DEMO_MODELS]
    if args.images is not None and demo:
        raise SystemExit(PHOTOS_REFUSED.format(model=demo[0], fix=DEMO_FIX))
    if args.scenes and len(demo) < len(models):
        raise SystemExit(f"--scenes is the demo models' image metric (synthesized scenes); {sorted(set(models) - set(demo))} "
                         "read photos: pass --images DIR for them, in a run of their own.")
    if args.world_only and len(demo) < len(models):
        raise SystemExit(f"--world-only is for the demo models ({', '.join(DEMO_MODELS)}), not "
                         f"{sorted(set(models) - set(demo))[0]}: drop it.")
    runs, elapsed, seen = {}, {}, {}
    out = args.out if args.out is not None or len(models) == 1 else RUNS / "localize-atlas"
    for model_id in models:
        start = time.perf_counter()
        with torch_threads(threads_for(args, model_id)):
            runs[model_id], out = _localize_one(args, model_id, pairs, out, seen)
        elapsed[model_id] = time.perf_counter() - start
        print(f"{model_id}: {len(runs[model_id].ids)} pairs localized, {len(runs[model_id].dropped)} dropped "
              f"({elapsed[model_id]:.1f} s)", file=sys.stderr)
    path = write_report(out, runs, datasets=[*args.dataset, *map(str, args.data)], demo_models=DEMO_MODELS,
                        elapsed=elapsed, scenes=args.scenes)
    print(f"wrote {path}")
    return out


def _localize_one(args: argparse.Namespace, model_id: str, pairs: PairSet, out: Optional[Path], seen: dict):
    """One model's run of the pairs (its image metric, ``--images`` or ``--scenes``, or the text-only one) into
    ``out/<model>-<fingerprint>`` (``out`` None: ``runs/localize-<model>-<fingerprint>``), and ``out``. ``seen``
    ({fingerprint: model id}) refuses a model already run under another name."""
    from hooked_clip.analyses.localize.study import run_model
    from hooked_clip.analyses.valse_negation.cli import load  # model ids as the negation study reads them
    from hooked_clip.analyses.run_dirs import default_run_dir, model_dir_name
    from hooked_clip.analyses.valse_negation.demo_scenes import embed_scenes, max_count, world_pairs
    from hooked_clip.fingerprint import fingerprint

    model = load(model_id, args.device)
    fp = fingerprint(model)
    if fp.short in seen:
        raise SystemExit(f"--model {seen[fp.short]} and --model {model_id} are one model (the same weights, "
                         f"fingerprint {fp.short}); name it once.")
    seen[fp.short] = model_id
    out = out if out is not None else default_run_dir("localize", (model_id, fp))
    embeds, images = None, ""
    counts = (args.scenes or args.world_only) and max_count(model) > 1  # tiny-count: its world builds the scenes
    if args.world_only or counts:
        pairs = world_pairs(model, pairs)
        if not pairs.pairs:
            raise SystemExit(f"no pair is in {model_id}'s synthetic world (e.g. {pairs.dropped[0][0]}: "
                             f"{pairs.dropped[0][1]}); drop --scenes/--world-only for the text-only atlas.")
    if args.images is not None:
        embeds, dropped = image_embeddings(model, pairs, args.images)
        pairs, images = PairSet(pairs.pairs, pairs.dropped + dropped), f"images in {args.images.resolve()}"
    elif args.scenes and counts:
        embeds, images = scene_embeddings(model, pairs), "scenes built from the captions (seed 0)"
    elif args.scenes:  # the existence-only demo models: the negation study's scenes (localize reproduces the study)
        embeds, dropped = embed_scenes(model, pairs.pairs)
        pairs, images = PairSet(pairs.pairs, pairs.dropped + dropped), "synthesized scenes (seed 0)"
    return run_model(model, pairs, out / model_dir_name(model_id, fp), image_embeds=embeds, chunk=args.chunk,
                     batch_size=args.batch_size, progress=not args.no_progress, direction=args.direction,
                     images=images), out
