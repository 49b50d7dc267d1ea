"""``hooked-clip valse-negation``: the whole study in one command.

Default: the shipped demo model ``tiny-negation-pixels`` (its hooked ViT reads synthesized scenes rendered to
images), fully offline; ``--model tiny-negation`` runs the symbolic-scene demo model. With ``--model``
(an HF hub id or directory, or ``open_clip:NAME:TAG``) and ``--images DIR`` the real study; without
``--images`` the image-dependent parts are skipped and the text-only parts still run. ``--reference FILE``
compares the run item by item with a per-item file in the authors' format; ``--model A --model B`` runs each
model into its own run directory and writes a comparison report beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.valse_negation.aggregate import ZOOM_RULES, aggregate
from hooked_clip.analyses.run_dirs import default_run_dir, model_dir_name
from hooked_clip.analyses.valse_negation.comparison import write_comparison
from hooked_clip.analyses.valse_negation.data import SubjectParser, dropped_items, load_items
from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages, clipseg_subject_size, preprocessing_name
from hooked_clip.analyses.valse_negation.reference import DEFAULT_TOLERANCE, compare, load_reference
from hooked_clip.analyses.valse_negation.report import write_outputs
from hooked_clip.analyses.valse_negation.demo_scenes import PHOTOS_REFUSED
from hooked_clip.analyses.valse_negation.study import DEMO_FIX, Settings, run_items, select_items

SUBCOMMAND = "valse-negation"  # hooked-clip valse-negation (found by hooked_clip.analyses.cli)
HELP = "replicate Quantmeyer et al. (2024) on VALSE existence"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help="tiny-negation-pixels (default, offline), tiny-negation (symbolic scenes), an HF hub id or "
                        "local directory, or open_clip:NAME:TAG; "
                        "repeat (--model A --model B) to run each and write a comparison report")
    p.add_argument("--images", type=Path, help="folder with the Visual7W images (v7w_<id>.jpg) for a real model")
    p.add_argument("--data", type=Path, help="a VALSE existence.json (default: the shipped copy)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory, used as given (default: runs/valse-negation-<model>-<fingerprint>); with several "
                        "models the parent of one run directory <model>-<fingerprint> per model (default: "
                        "runs/valse-negation-comparison); a directory holding a run of other weights is refused")
    p.add_argument("--limit", type=int, help="only the first N valid items (quick runs)")
    p.add_argument("--chunk", type=int, default=64, help="items per incremental, atomic write")
    p.add_argument("--rome", action="store_true", help="also run the ROME-noise variant of causal tracing")
    p.add_argument("--clipseg", type=Path, help="local CLIPSeg weights (save_pretrained dir) for subject size")
    p.add_argument("--subject-parser", choices=("spacy", "regex"), default="spacy",
                   help="subject prompts: spacy (the authors' first noun chunk, needs the spacy extra and "
                        "en_core_web_sm) or regex (approximate fallback, reported as such)")
    p.add_argument("--zoom", choices=sorted(ZOOM_RULES), default="paper",
                   help="layer-zoom rule: paper (default: layer 4, missing rows count 0) or strongest-layer")
    p.add_argument("--reference", type=Path,
                   help="a per-item file in the authors' format (JSON keyed by VALSE id): adds a replication section")
    p.add_argument("--reference-tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest |Δ logit| / |Δ d| against --reference that counts as reproduced (default "
                        f"{DEFAULT_TOLERANCE:g} logits: 0.0001 cosine at CLIP's logit scale 100)")
    p.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda, cuda:1, ... (default: CUDA when available, else the CPU, "
                        "as every loader)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for the demo models, whose small matrices gain little from more "
                        "threads and lose much on a busy machine; torch's default, or OMP_NUM_THREADS, otherwise)")
    p.add_argument("--no-progress", action="store_true")


DEMO_MODELS = ("tiny-negation-pixels", "tiny-negation")  # shipped; they see synthesized scenes, not photos


def load(model_id: str, device: Optional[str] = None):
    from hooked_clip import HookedCLIP, load_model

    if model_id.startswith("open_clip:"):
        parts = model_id.split(":")
        if len(parts) != 3:
            raise SystemExit(f"--model {model_id!r}: write open_clip models as open_clip:NAME:TAG, e.g. open_clip:ViT-B-32:openai")
        return HookedCLIP.from_open_clip(parts[1], pretrained=parts[2], device=device)
    return load_model(model_id, device=device)


def threads_for(args: argparse.Namespace, model_id: str) -> Optional[int]:
    """Torch threads for one model's run, None for torch's default (see ``--threads``; ``hooked-clip localize``
    shares the rule)."""
    if args.threads is not None:
        return args.threads
    return 1 if model_id in DEMO_MODELS and "OMP_NUM_THREADS" not in os.environ else None


@contextmanager
def torch_threads(n: Optional[int]):
    """Run with ``n`` torch CPU threads (None: leave them), put back after."""
    import torch

    old = torch.get_num_threads()
    if n is None or n == old:  # nothing to change
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _canonical(model_id: str) -> str:
    """One spelling per model: a local directory as its absolute path (``D``, ``D/`` and ``/abs/D`` are one
    model, one run); hub ids, shipped names and ``open_clip:`` ids as given."""
    path = Path(model_id).expanduser()
    return str(path.resolve()) if model_id not in DEMO_MODELS and path.is_dir() else model_id


def run(args: argparse.Namespace) -> Path:
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be a positive number of items.")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be a positive number of CPU threads, got {args.threads}.")
    tolerance = getattr(args, "reference_tolerance", DEFAULT_TOLERANCE)
    if not (tolerance >= 0 and tolerance < float("inf")):  # NaN fails too
        raise SystemExit(f"--reference-tolerance must be a finite number of logits >= 0, got {tolerance}.")
    models = [_canonical(m) for m in (args.model or [DEMO_MODELS[0]])]
    if len(set(models)) != len(models):
        raise SystemExit(f"--model lists a model twice ({models}); name each model once.")
    if args.clipseg is not None and (all(m in DEMO_MODELS for m in models) or args.images is None):
        raise SystemExit("--clipseg measures subject sizes in the --images photos of a real --model; pass both, "
                         "or drop --clipseg.")
    Settings(limit=args.limit, chunk=args.chunk, rome=args.rome)  # checks the values before any work
    items = load_items(args.data)
    reference = load_reference(args.reference) if args.reference else None  # fail before any work
    parser = None  # subject prompts: for subject size (--clipseg) and for the comparison with a reference
    if (args.clipseg or args.reference) and any(m not in DEMO_MODELS for m in models):
        parser = SubjectParser.regex() if args.subject_parser == "regex" else SubjectParser.spacy()
    if len(models) == 1:
        return run_one(args, models[0], args.out, items, reference, parser)
    root = args.out or Path("runs") / "valse-negation-comparison"
    runs, elapsed, seen = [], {}, {}
    for model_id in models:
        start = time.perf_counter()
        out = run_one(args, model_id, root, items, reference, parser, several=True, seen=seen)
        runs.append((model_id, out))
        elapsed[model_id] = time.perf_counter() - start
    path = write_comparison(root, runs, elapsed)
    print(f"wrote {path}")
    return root


def run_one(args: argparse.Namespace, model_id: str, out, items, reference, parser=None, several: bool = False,
            seen: Optional[dict] = None) -> Path:
    """One model's study into ``out`` (None: ``runs/valse-negation-<model>-<fingerprint>``). ``parser``: the
    subject prompts (not used by the demo models, whose scenes have their own subjects). With ``several``, ``out``
    is the comparison's folder, the run goes to ``out/<model>-<fingerprint>``, a demo model keeps its scenes
    while the others use ``--images``, and ``seen`` ({fingerprint: model id}) refuses a model run already under
    another name."""
    with torch_threads(threads_for(args, model_id)):
        return _run_one(args, model_id, out, items, reference, parser, several, {} if seen is None else seen)


def _run_one(args: argparse.Namespace, model_id: str, out, items, reference, parser, several: bool,
             seen: dict) -> Path:
    from hooked_clip.fingerprint import fingerprint

    start = time.perf_counter()
    model = load(model_id, args.device)
    fp = fingerprint(model)
    if fp.short in seen:  # before any work: one model under two names is compared once
        raise SystemExit(f"--model {seen[fp.short]} and --model {model_id} are one model (the same weights, "
                         f"fingerprint {fp.short}); name it once.")
    seen[fp.short] = model_id
    if several:
        out = Path(out) / model_dir_name(model_id, fp)
    elif out is None:
        out = default_run_dir("valse-negation", (model_id, fp))
    if model_id in DEMO_MODELS:
        if args.images is not None and not several:
            raise SystemExit(PHOTOS_REFUSED.format(model=model_id, fix=DEMO_FIX))
        images, parser = SceneImages(), None  # its subjects are the toy scenes' objects
    else:
        if args.images is not None:
            images = FolderImages(args.images, clipseg_subject_size(args.clipseg) if args.clipseg else None)
            images.check(select_items(items, args.limit))  # fail before any work
        else:
            print(f"{model_id}: no --images given: skipping scores, causal tracing and the confounds with d; running "
                  "the text-only parts (head scores, caption-foil similarity).", file=sys.stderr)
            images = None
    settings = Settings(limit=args.limit, chunk=args.chunk, rome=args.rome)
    records = run_items(model, out, model_id=model_id, images=images, settings=settings, items=items,
                        progress=not args.no_progress, subject_parser=parser)
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads, zoom=args.zoom)
    results["model"] = model_id
    results["dropped"] = dropped_items(items, records)
    _print_dropped(model_id, results["dropped"], len(records), name_each=args.data is not None)
    if isinstance(images, SceneImages):
        results["subject_size_measure"] = "1 / the number of objects in the synthesized scene"
    if reference is not None:
        results["replication"] = compare(records, reference, limited=args.limit is not None,
                                         tolerance=getattr(args, "reference_tolerance", DEFAULT_TOLERANCE))
        results["replication_reference"] = str(args.reference)
    note = "none (text-only parts)" if images is None else f"{images.describe()}; pixels: {preprocessing_name(model)}"
    if parser is not None:
        note += f"; subject prompts: {parser.name}"
    results["limit"] = args.limit  # the report's "like for like?" says when only part of the data ran
    results["preprocessing"] = None if images is None else preprocessing_name(model)
    if write_outputs(out, records, results, model=model, model_id=model_id, images_note=note, items=items):
        print(f"wrote {out}/report.md and results.json ({time.perf_counter() - start:.1f} s)")
    else:
        print(f"{out}/report.md and results.json are up to date: nothing changed ({time.perf_counter() - start:.1f} s)")
    return out


def _print_dropped(model_id: str, dropped: list[dict], measured: int, name_each: bool, shown: int = 20) -> None:
    """Say on stderr how many items were left out, by stage; ``name_each`` (a user's ``--data``) names each with its
    reason (the first ``shown``). Every one is named in dropped.csv and report.md."""
    if not dropped:
        return
    stages = Counter(d["stage"] for d in dropped)
    by_stage = ", ".join(f"{k}: {v}" for k, v in stages.items())
    print(f"{model_id}: {len(dropped)} items left out of the aligned pairs ({by_stage}; {measured} items measured); "
          "each is named with its reason in dropped.csv and report.md" + (":" if name_each else "."), file=sys.stderr)
    if name_each:
        for d in dropped[:shown]:
            print(f"  {d['id']}: {d['stage']}: {d['reason']}", file=sys.stderr)
        if len(dropped) > shown:
            print(f"  ... and {len(dropped) - shown} more (dropped.csv)", file=sys.stderr)
