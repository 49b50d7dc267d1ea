"""VALSE existence items as scenes of the demo models' synthetic world (rendered to images for the pixel
model ``tiny-negation-pixels``), and the demo models' accuracy on them (the number their card reports). The model package knows nothing of VALSE; this
study-side module maps VALSE items onto the demo model's world."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional, Union

import torch

from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip.models.tiny_negation.render import reads_rendered_scenes, render_images
from hooked_clip.models.tiny_negation.world import object_of, random_scene


def synthesize_scene(item: dict, seed: int = 0, n_distractors: tuple[int, int] = (1, 5)) -> list[str]:
    """A scene for a VALSE existence item (its raw JSON record): the subject (the word after "no" in the
    negated sentence) is present iff the affirmative sentence is true, plus seeded random distractors.
    The draw depends only on (seed, the item's ``dataset_idx``)."""
    caption, foil = item["caption"], item["foil"]
    negated_caption = re.search(r"\bno\b", caption, re.I) is not None
    negated = caption if negated_caption else foil
    m = re.search(r"\bno\s+([A-Za-z']+)", negated, re.I)
    if m is None:
        raise ValueError(f"no negator 'no' followed by a word in {negated!r}")
    subject = object_of(m.group(1))
    # the caption is the true sentence: the affirmative is true iff the negation sits in the foil
    present = not negated_caption
    rng = random.Random(f"{seed}:{item.get('dataset_idx', caption)}")
    scene = random_scene(rng, *n_distractors, exclude=subject)
    if present:
        scene.add(subject)
    return sorted(scene)


def scene_input(model, scenes: list[list[str]], seed: int = 0) -> list:
    """What the demo model's ``encode_image`` takes for these scenes: the scenes themselves for the symbolic
    tower (``tiny-negation``), the scenes rendered to 32 x 32 glyph images (PIL, cells drawn from ``seed``)
    for the pixel tower (``tiny-negation-pixels``)."""
    return render_images(scenes, seed=seed) if reads_rendered_scenes(model) else scenes


def valid_items(path: Optional[Union[str, Path]] = None) -> list[dict]:
    """The raw VALSE existence records whose caption at least 2 of 3 annotators accepted (505 items)."""
    data = json.loads(Path(path or EXISTENCE_JSON).read_text())
    return [x for x in data.values() if x["mturk"]["caption"] >= 2]


@torch.no_grad()
def demo_model_accuracy(model, limit: Optional[int] = None, seed: int = 0) -> tuple[float, int]:
    """Pairwise accuracy S(caption) > S(foil) of a scene-reading model on the valid VALSE items with
    synthesized scenes: (accuracy, number of items). The demo model's card reports it."""
    items = valid_items()[:limit]
    img = model.encode_image(scene_input(model, [synthesize_scene(x, seed=seed) for x in items], seed=seed))
    s_c = model.similarity(model.encode_text([x["caption"] for x in items]), img).diagonal()
    s_f = model.similarity(model.encode_text([x["foil"] for x in items]), img).diagonal()
    return float((s_c > s_f).float().mean()), len(items)


if __name__ == "__main__":  # python -m hooked_clip.analyses.valse_negation.demo_scenes [--model tiny-negation-pixels]
    import argparse

    from hooked_clip import load_model

    parser = argparse.ArgumentParser(description="The demo model's VALSE accuracy on synthesized scenes.")
    parser.add_argument("--model", choices=("tiny-negation", "tiny-negation-pixels"), default="tiny-negation")
    parser.add_argument("--seed", type=int, default=0, help="the scenes' seed (distractors; for the pixel model, also the cells)")
    args = parser.parse_args()
    acc, n = demo_model_accuracy(load_model(args.model), seed=args.seed)
    print(json.dumps({"model": args.model, "valse_pairwise_accuracy": acc, "n_valse": n, "seed": args.seed}, indent=2))
