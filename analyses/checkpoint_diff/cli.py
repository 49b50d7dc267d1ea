"""``hooked-clip checkpoint-diff --base A --tuned B``: where does a fine-tune fix negation?

Patches each hidden state (per token role) and each head of the tuned checkpoint into the base (``restore``)
and of the base into the tuned one (``break``), on the negated sentences of VALSE existence (``--data``: any
file in its format) with scenes synthesized in the toy world, beside the weight diff; writes report.md,
results.json and figures named by both models into ``--out`` (default: runs/checkpoint-diff-<base
fingerprint>-<tuned fingerprint>). Default pair: the shipped toy pair ``tiny-pair-base`` / ``tiny-pair-tuned``.
Models must read scenes (the demo worlds' image towers) and differ only in their weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hooked_clip.fingerprint import fingerprint, hash_tensors

SUBCOMMAND = "checkpoint-diff"
HELP = "patch a fine-tune's states into its base model (and back): where does it fix negation?"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="tiny-pair-base", help="the base checkpoint (default: tiny-pair-base, shipped)")
    p.add_argument("--tuned", default="tiny-pair-tuned", help="its fine-tune (default: tiny-pair-tuned, shipped)")
    p.add_argument("--data", type=Path, help="a file in VALSE existence.json's format (default: the shipped copy)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/checkpoint-diff-<fp base>-<fp tuned>)")
    p.add_argument("--limit", type=int, help="only the first N valid items")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per forward in the patching engine")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available, else the CPU)")


def run(args: argparse.Namespace) -> Path:
    from hooked_clip.analyses.checkpoint_diff.measure import accuracy, behaviour_metric, load_items, roles, sweep
    from hooked_clip.analyses.checkpoint_diff.report import results_dict, write_report
    from hooked_clip.analyses.valse_negation.cli import load
    from hooked_clip.analyses.weight_diff import weight_diff
    from hooked_clip.tower import check_same_architecture

    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be a positive number of items.")
    start = time.perf_counter()
    items = load_items(args.data, args.limit)  # a bad file fails before any model loads
    base, tuned = load(args.base, args.device), load(args.tuned, args.device)
    check_same_architecture(base.text, tuned.text, ("--base", "--tuned"))
    fp_base, fp_tuned = fingerprint(base), fingerprint(tuned)
    if fp_base == fp_tuned:
        raise SystemExit(f"--base {args.base} and --tuned {args.tuned} are one model (the same weights, fingerprint "
                         f"{fp_base}); pass the fine-tune as --tuned.")
    if not hasattr(getattr(base, "vision", None), "encoder") or not hasattr(base.vision.encoder, "multi_hot"):
        raise SystemExit(f"--base {args.base} does not read scenes; checkpoint-diff runs on scene-reading models "
                         "(the toy pair tiny-pair-base / tiny-pair-tuned) for now.")
    out = args.out or Path("runs") / f"checkpoint-diff-{fp_base.short}-{fp_tuned.short}"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; pass a directory.")
    metric = behaviour_metric(base, items)
    role = roles(base, items.negated)
    sweeps = {"restore": sweep(base, tuned, items, metric, role, args.batch_size),
              "break": sweep(tuned, base, items, metric, role, args.batch_size)}
    restore = sweeps["restore"]
    same_images = hash_tensors(base.vision.state_dict().items()) == hash_tensors(tuned.vision.state_dict().items()) \
        and torch.equal(base.logit_scale.detach().cpu(), tuned.logit_scale.detach().cpu())
    info = lambda name, fp, b, model: {"name": name, "fingerprint": fp.short, "mean_b": round(float(b.mean()), 4),  # noqa: E731
                                       "accuracy": round(accuracy(model, items), 4)}
    diff = weight_diff(base, tuned, names=(args.base, args.tuned))
    results = results_dict(info(args.base, fp_base, restore.patched_b, base),
                           info(args.tuned, fp_tuned, restore.source_b, tuned), len(items.negated), sweeps, diff,
                           same_images)
    path = write_report(out, results, sweeps, diff)
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return out
