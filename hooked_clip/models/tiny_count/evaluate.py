"""Quality of ``tiny-count``, as recorded in docs/models/tiny-count.md.

    python -m hooked_clip.models.tiny_count.evaluate [--n 2000]

Prints pairwise accuracy S(true statement) > S(false counterpart) per phenomenon (counting: the number changed;
existence: the negation flipped) on held-out items (scenes from a seed never used in training), with the templates
and trailing phrases held out of training ("In the picture there are exactly N X", "Here you see N X", "...
beside the <place>") and with the training templates; chance is 50%; and the held-out counting accuracy per
(true count, foil's count). The accuracy on the VALSE pairs the world
covers belongs to the study layer: ``python -m hooked_clip.analyses.valse_negation.demo_scenes --model tiny-count``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

from hooked_clip.models.tiny_count import WEIGHTS, load
from hooked_clip.models.tiny_count.train import sample_batch
from hooked_clip.models.tiny_negation.train import pairwise_correct
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

HELD_OUT_SEED = 20261205
PHENOMENA = ("counting", "existence")


def held_out_accuracy(model, phenomenon: str, n: int = 2000, seed: int = HELD_OUT_SEED,
                      held_out_templates: bool = True) -> float:
    """Pairwise accuracy on ``n`` held-out items of one phenomenon."""
    if phenomenon not in PHENOMENA:
        raise ValueError(f"no phenomenon {phenomenon!r} in tiny-count's world; it has {list(PHENOMENA)}.")
    batch = sample_batch(random.Random(seed), n, held_out=held_out_templates, phenomenon=phenomenon)
    return float(pairwise_correct(model, CLIPTokenizer(), *batch).float().mean())


def counting_breakdown(model, n: int = 2000, seed: int = HELD_OUT_SEED) -> dict:
    """Held-out counting accuracy per (true count, foil's count): {"1 vs 0": {"n": items, "accuracy": fraction}}."""
    scenes, true, false = sample_batch(random.Random(seed), n, held_out=True, phenomenon="counting")
    correct = pairwise_correct(model, CLIPTokenizer(), scenes, true, false).tolist()
    groups: dict[str, list[bool]] = {}
    for a, b, ok in zip(true, false, correct):
        groups.setdefault(f"{min(a.counts)} vs {min(b.counts)}", []).append(ok)
    return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)} for k, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    model = load()
    report = {f"{ph}_{which}": round(held_out_accuracy(model, ph, args.n, held_out_templates=held), 4)
              for ph in PHENOMENA for which, held in (("held_out_templates", True), ("training_templates", False))}
    report["counting_by_counts"] = counting_breakdown(model, args.n)
    report.update(n=args.n, chance=0.5, weights_sha256=hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
                  weights_bytes=WEIGHTS.stat().st_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
