"""``hooked-clip checkpoint-diff --base A --tuned B``: where does a fine-tune fix negation?

Patches each hidden state (per token role) and each head of the tuned checkpoint into the base (``restore``)
and of the base into the tuned one (``break``), on the negated sentences of VALSE existence (``--data``: any
file in its format) with scenes synthesized in the toy world, beside the weight diff; writes report.md,
results.json and figures named by both models into ``--out`` (default: runs/checkpoint-diff-<base>-<its
fingerprint>-vs-<tuned>-<its fingerprint>). Default pair: the shipped toy pair ``tiny-pair-base`` /
``tiny-pair-tuned``. Models must read scenes (the demo worlds' image towers) and differ only in their weights.

Resumable: items are measured in chunks of ``--chunk``, each saved atomically in ``OUT/chunks/`` with the key of
what it was computed from (both fingerprints, the chunk's items, the batch size); a rerun after an interruption
reuses the chunks already there and gives the same outputs, bit for bit, as a run never interrupted. A chunk
whose key differs (other items: ``--data``, ``--limit``; another ``--chunk`` or ``--batch-size``) is computed
again and replaced. A directory holding a run of other weights is refused, naming both runs' models (its
``config.json``); the same weights under other names are one model and resume it. Nothing is drawn at random
here; the scenes' distractors are drawn from (seed 0, the item's VALSE index) only (``synthesize_scene``), so an
item gets the same scenes in any chunk.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hooked_clip.devices import no_tf32
from hooked_clip.fingerprint import fingerprint, hash_tensors

SUBCOMMAND = "checkpoint-diff"
HELP = "patch a fine-tune's states into its base model (and back): where does it fix negation?"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="tiny-pair-base", help="the base checkpoint (default: tiny-pair-base, shipped)")
    p.add_argument("--tuned", default="tiny-pair-tuned", help="its fine-tune (default: tiny-pair-tuned, shipped)")
    p.add_argument("--data", type=Path, help="a file in VALSE existence.json's format (default: the shipped copy)")
    p.add_argument("--out", type=Path, help="output directory, used as given (default: "
                   "runs/checkpoint-diff-<base>-<fingerprint>-vs-<tuned>-<fingerprint>); a run of other weights there "
                   "is refused, an interrupted run of these is resumed")
    p.add_argument("--limit", type=int, help="only the first N valid items")
    p.add_argument("--chunk", type=int, default=64, help="items per resumable, atomic write (default 64)")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per forward in the patching engine")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available, else the CPU)")
    p.add_argument("--no-progress", action="store_true")


CONFIG_VERSION = 1  # what a chunk holds (measure.measure's fields)


def run(args: argparse.Namespace) -> Path:
    from hooked_clip.analyses.checkpoint_diff.measure import load_items
    from hooked_clip.analyses.checkpoint_diff.report import write_report
    from hooked_clip.analyses.run_dirs import claim, default_run_dir, models_record
    from hooked_clip.analyses.valse_negation.cli import load
    from hooked_clip.tower import check_same_architecture

    for name, value in (("--limit", args.limit), ("--chunk", args.chunk), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SystemExit(f"{name} must be a positive number, got {value}.")
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
    out = args.out or default_run_dir("checkpoint-diff", (args.base, fp_base), (args.tuned, fp_tuned))
    config = {"study": SUBCOMMAND, "version": CONFIG_VERSION, "tf32": False,
              "models": models_record(base=(args.base, fp_base), tuned=(args.tuned, fp_tuned))}
    claim(out, config, has_results=lambda d: any((d / "chunks").glob("*.pt")))
    with no_tf32():
        sweeps = measure_chunks(base, tuned, items, out / "chunks", config, args.chunk, args.batch_size,
                                progress=not args.no_progress)
        results, diff = summarize(base, tuned, (args.base, args.tuned), items, sweeps)
    path = write_report(out, results, sweeps, diff)
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return out


def measure_chunks(base, tuned, items, folder: Path, config: dict, chunk: int, batch_size: int,
                   progress: bool = False) -> dict:
    """Both directions' :class:`~hooked_clip.analyses.checkpoint_diff.measure.Sweep`, from chunks of ``chunk``
    items kept in ``folder`` (:class:`~hooked_clip.analyses.run_dirs.ChunkStore`): a chunk saved with the same
    key is loaded, any other computed and saved. Every chunk is measured alone (its own behaviour metric and
    roles), so a resumed run computes exactly what an uninterrupted one does."""
    from tqdm.auto import tqdm

    from hooked_clip.analyses.checkpoint_diff import measure as m
    from hooked_clip.analyses.run_dirs import ChunkStore, chunk_key

    store = ChunkStore(folder)
    fps = {role: rec["fingerprint"]["digest"] for role, rec in config["models"].items()}
    parts: dict[str, list] = {"restore": [], "break": []}
    for index, start in enumerate(tqdm(range(0, len(items), chunk), desc="checkpoint-diff", unit="chunk",
                                       disable=not progress)):
        part = items[start:start + chunk]
        key = chunk_key(config["version"], fps, batch_size, part.ids, part.negated, part.absent, part.present)
        fields = store.load(index, key)
        if fields is None:
            metric, role = m.behaviour_metric(base, part), m.roles(base, part.negated)
            fields = {"restore": m.measure(base, tuned, part, metric, role, batch_size),
                      "break": m.measure(tuned, base, part, metric, role, batch_size)}
            store.save(index, key, fields)
        for direction in parts:
            parts[direction].append(fields[direction])
    return {direction: m.fractions(p) for direction, p in parts.items()}


def summarize(base, tuned, names: tuple[str, str], items, sweeps: dict):
    """``results.json``'s content and the weight diff, from the two sweeps."""
    from hooked_clip.analyses.checkpoint_diff.measure import accuracy
    from hooked_clip.analyses.checkpoint_diff.report import results_dict
    from hooked_clip.analyses.weight_diff import weight_diff

    restore = sweeps["restore"]
    same_images = hash_tensors(base.vision.state_dict().items()) == hash_tensors(tuned.vision.state_dict().items()) \
        and torch.equal(base.logit_scale.detach().cpu(), tuned.logit_scale.detach().cpu())
    info = lambda name, model, b: {"name": name, "fingerprint": fingerprint(model).short,  # noqa: E731
                                   "mean_b": round(float(b.mean()), 4), "accuracy": round(accuracy(model, items), 4)}
    diff = weight_diff(base, tuned, names=names)
    results = results_dict(info(names[0], base, restore.patched_b), info(names[1], tuned, restore.source_b),
                           len(items), sweeps, diff, same_images)
    return results, diff
