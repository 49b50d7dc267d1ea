"""Quality of the ``tiny-negation`` demo model, as recorded in docs/models/tiny-negation.md.

    python -m hooked_clip.models.tiny_negation.evaluate [--n 2000] [--model tiny-negation-pixels]

Prints pairwise accuracy S(true statement) > S(negation-flipped statement):
  * held-out synthetic items: scenes from a seed never used in training, templates and trailing phrases
    never used in training ("In the picture there are (no) X", "Here you see (no) X", "... beside the
    <place>", ...), and the same scenes with the training templates;
a breakdown of the held-out items by sentence form and by scene size (subject present or absent), and
the sha256 of the weights file (for ``tiny-negation-pixels``: of its ViT file; its scenes are rendered by
``render.py`` on the way into ``encode_image``). The accuracy on VALSE existence items (the card's third number) belongs
to the study layer: ``python -m hooked_clip.analyses.valse_negation.demo_scenes``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

import torch

from hooked_clip.models.tiny_negation import WEIGHTS, load
from hooked_clip.models.tiny_negation.train import pairwise_accuracy, pairwise_correct, sample_batch
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

HELD_OUT_SEED = 20261127


def held_out_accuracy(model, n: int = 2000, seed: int = HELD_OUT_SEED, held_out_templates: bool = True) -> float:
    scenes, true, false = sample_batch(random.Random(seed), n, held_out=held_out_templates)
    return pairwise_accuracy(model, CLIPTokenizer(), scenes, true, false)


@torch.no_grad()
def held_out_breakdown(model, n: int = 2000, seed: int = HELD_OUT_SEED, held_out_templates: bool = True) -> dict:
    """Pairwise accuracy of the ``held_out_accuracy`` items grouped by sentence form (the negated sentence up
    to its negator, e.g. "In the picture there is no X") and by scene size and presence of the subject
    ("4 objects, subject present"): {group: {"n": count, "accuracy": fraction}}."""
    scenes, true, false = sample_batch(random.Random(seed), n, held_out=held_out_templates)
    correct = pairwise_correct(model, CLIPTokenizer(), scenes, true, false).tolist()
    groups: dict[str, list[bool]] = {}
    for scene, a, b, ok in zip(scenes, true, false, correct):
        negated = a if a.negated else b
        form = negated.text.split(" no ")[0].split(" not ")[0] + (" not X" if " not " in negated.text else " no X")
        present = "present" if a.subject in scene else "absent"
        for key in (f"form: {form}", f"scene: {len(scene)} objects, subject {present}"):
            groups.setdefault(key, []).append(ok)
    return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(groups.items())}


def sha256(path=WEIGHTS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--model", choices=("tiny-negation", "tiny-negation-pixels"), default="tiny-negation")
    args = parser.parse_args()
    if args.model == "tiny-negation-pixels":
        from hooked_clip.models.tiny_negation.pixels import PIXEL_WEIGHTS as weights
        from hooked_clip.models.tiny_negation.pixels import load_pixels as load_chosen
    else:
        weights, load_chosen = WEIGHTS, load
    model = load_chosen()
    report = {
        "held_out_synthetic_pairwise_accuracy": held_out_accuracy(model, args.n),
        "held_out_scenes_train_templates_pairwise_accuracy": held_out_accuracy(model, args.n, held_out_templates=False),
        "n_synthetic": args.n,
        "held_out_breakdown": held_out_breakdown(model, args.n),
        "weights_sha256": sha256(weights),
        "weights_bytes": weights.stat().st_size,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
