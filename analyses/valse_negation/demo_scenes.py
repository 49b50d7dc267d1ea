"""VALSE existence items as scenes of the demo models' synthetic world (rendered to images for the pixel
model ``tiny-negation-pixels``), and the demo models' accuracy on them (the number their card reports). The model package knows nothing of VALSE; this
study-side module maps VALSE items onto the demo model's world.

Any minimal pair, too (the localisation atlas): :func:`world_pairs` keeps the pairs a scene-reading demo model's
world covers (both sentences of its forms, about one of its objects, counts it can see, words it was trained on)
and names every other with the reason; :func:`caption_scenes` builds, for each, a seeded scene in which the
caption is true and the foil false (``tiny-count``'s world: counts 0-4 and existence)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional, Union

import torch

from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip.errors import UnknownObjectError
from hooked_clip.models.tiny_count import world as count_world
from hooked_clip.models.tiny_negation.render import reads_rendered_scenes, render_images
from hooked_clip.models.tiny_negation.world import object_of, random_scene


def scene_source(item) -> tuple[str, str, str]:
    """(caption, foil, seed key) of what :func:`synthesize_scene` takes: a raw VALSE record (dict), the study's
    :class:`~hooked_clip.analyses.valse_negation.data.Item` or aligned ``Pair`` (built by ``load_items`` /
    ``align`` or in Python), or any pair with ``caption`` and ``foil`` (a localize ``MinimalPair``). The seed key is
    the record's ``dataset_idx`` where there is one (an Item's ``raw``, a Pair's item), else the caption, so an
    item, its aligned pair and its raw record get the same scene."""
    if isinstance(item, dict):
        missing = [k for k in ("caption", "foil") if not isinstance(item.get(k), str)]
        if missing:
            raise ValueError(f"a scene needs the item's caption and foil; this record lacks {missing} ({item!r:.80}).")
        return item["caption"], item["foil"], str(item.get("dataset_idx", item["caption"]))
    if hasattr(item, "item") and hasattr(item, "negation_in"):  # an aligned Pair: its item's scene
        return scene_source(item.item)
    caption, foil = getattr(item, "caption", None), getattr(item, "foil", None)
    if not isinstance(caption, str) or not isinstance(foil, str):
        raise TypeError(f"a scene is built from a VALSE record (dict), an Item, a Pair or a pair with caption and foil "
                        f"strings; got a {type(item).__name__}.")
    raw = getattr(item, "raw", None) or {}
    return caption, foil, str(raw.get("dataset_idx", raw.get("caption", caption)))


def synthesize_scene(item, seed: int = 0, n_distractors: tuple[int, int] = (1, 5)) -> list[str]:
    """A scene for a VALSE existence item (a raw JSON record, an ``Item`` or ``Pair`` of the study, or any pair
    with ``caption`` and ``foil``: see :func:`scene_source`): the subject (the word after "no" in the negated
    sentence) is present iff the affirmative sentence is true, plus seeded random distractors. The draw depends
    only on (seed, the item's ``dataset_idx``, else its caption). A subject the demo world does not know is an
    error naming the word and the nearest known names."""
    caption, foil, key = scene_source(item)
    negated_caption = re.search(r"\bno\b", caption, re.I) is not None
    negated = caption if negated_caption else foil
    m = re.search(r"\bno\s+([A-Za-z']+)", negated, re.I)
    if m is None:
        raise ValueError(f"no negator 'no' followed by a word in {negated!r}: the demo world depicts only existence "
                         "pairs ('There is no X' / 'There is a X').")
    try:
        subject = object_of(m.group(1))
    except UnknownObjectError as err:
        raise UnknownObjectError(f"the subject of {negated!r}: {err}") from None
    # the caption is the true sentence: the affirmative is true iff the negation sits in the foil
    present = not negated_caption
    rng = random.Random(f"{seed}:{key}")
    scene = random_scene(rng, *n_distractors, exclude=subject)
    if present:
        scene.add(subject)
    return sorted(scene)


PHOTOS_REFUSED = ("the demo model {model} sees synthesized scenes, not photos, so images of your own mean nothing to it: "
                  "{fix}")
"""The one answer (CLI and Python) to images given to a demo model; ``fix`` names the route's way out."""


def reads_scenes(model) -> bool:
    """Whether ``model``'s image tower reads the demo world's scenes (the symbolic scene tower of
    ``tiny-negation`` and its siblings, or the rendered-scene pixel tower of ``tiny-negation-pixels``)."""
    from hooked_clip.models.tiny_negation.scene import SceneTower

    return isinstance(getattr(model, "vision", None), SceneTower) or reads_rendered_scenes(model)


def scene_input(model, scenes: list[list[str]], seed: int = 0) -> list:
    """What the demo model's ``encode_image`` takes for these scenes: the scenes themselves for the symbolic
    tower (``tiny-negation``), the scenes rendered to 32 x 32 glyph images (PIL, cells drawn from ``seed``)
    for the pixel tower (``tiny-negation-pixels``)."""
    return render_images(scenes, seed=seed) if reads_rendered_scenes(model) else scenes


def _valse_records() -> dict[str, dict]:
    """The shipped VALSE existence records by their id in the localize dataset ``valse:existence``
    (``existence/<VALSE key>``)."""
    return {f"existence/{k}": x for k, x in json.loads(EXISTENCE_JSON.read_text()).items()}


@torch.no_grad()
def embed_scenes(model, pairs, seed: int = 0, batch_size: int = 256) -> tuple[dict, list[tuple[str, str]]]:
    """Image embeddings of synthesized scenes for minimal pairs (anything :func:`synthesize_scene` takes, with an
    ``id``): ({id: embedding}, [(id, reason)] for each pair no scene can depict). A pair of the shipped
    ``valse:existence`` or of :func:`~hooked_clip.analyses.valse_negation.data.paper_pairs` (id ``existence/<VALSE
    key>``, the record's sentences or their aligned pair) gets the negation study's scene, seeded by its VALSE
    record; others are seeded by their caption. Only existence pairs ("There is no X" / "There is a
    X", the subject a word of the demo world) can be depicted; the others are named with the reason."""
    from hooked_clip.analyses.valse_negation.data import Item, align

    records = _valse_records()
    found, scenes, dropped = [], [], []
    for p in pairs:
        record, same = records.get(p.id), False
        if record is not None:  # the record's own sentences or the paper's aligned pair, in either order
            aligned = align(Item(p.id, record["caption"], record["foil"], "", "caption" if re.search(
                r"\bno\b", record["caption"], re.I) else "foil"))
            versions = [{record["caption"], record["foil"]}] + ([{aligned.caption, aligned.foil}] if aligned else [])
            same = {p.caption, p.foil} in versions
        try:
            scenes.append(synthesize_scene(record if same else p, seed=seed))
            found.append(p.id)
        except ValueError as err:  # no negator, or an unknown subject (UnknownObjectError)
            dropped.append((p.id, f"no scene of the demo world depicts it ({err})"))
    out = {}
    for start in range(0, len(scenes), batch_size):
        rows = scene_input(model, scenes[start:start + batch_size], seed=seed)
        out.update(zip(found[start:start + batch_size], model.encode_image(rows, normalize=False)))
    return out, dropped


def max_count(model) -> int:
    """How many of one object the demo model's scene tower can see (1: existence only; ``tiny-count``: 4)."""
    if reads_rendered_scenes(model):
        return 1
    if not reads_scenes(model):
        raise ValueError("this model's image tower is not a demo model's scene tower: scenes built from captions are "
                         "for the shipped demo models (tiny-negation, tiny-count, ...); pass real images instead.")
    return int(model.vision.encoder.max_count)


class _Vocabulary:
    """The words a demo model was trained on: a word is known iff each of its tokens has a non-zero embedding
    row (the demo models store rows only for the tokens of their world)."""

    def __init__(self, model):
        self.tokenizer = model.text.tokenizer
        self.known = model.text.embed.W_E.detach().abs().sum(-1) > 0
        self.cache: dict[str, bool] = {}

    def unknown(self, sentence: str) -> list[str]:
        out = []
        for word in sentence.split():
            if word not in self.cache:
                ids = torch.tensor(self.tokenizer.encode(word, special_tokens=False), dtype=torch.long)
                self.cache[word] = bool(self.known[ids].all())
            if not self.cache[word]:
                out.append(word.strip(".,!?;:"))
        return out


def pair_statements(model, caption: str, foil: str, vocabulary: Optional[_Vocabulary] = None):
    """(caption statement, foil statement, None) of a pair the demo model's world covers, else (None, None,
    reason)."""
    top = max_count(model)
    vocabulary = vocabulary or _Vocabulary(model)
    cap, fo = count_world.parse(caption), count_world.parse(foil)
    beyond = sorted(n for st in (cap, fo) if st is not None for n in st.counts if n > count_world.MAX_COUNT)
    if beyond:
        return None, None, f"a count outside the world's 0-{count_world.MAX_COUNT} ({beyond[0]})"
    unknown = list(dict.fromkeys(vocabulary.unknown(caption) + vocabulary.unknown(foil)))
    if unknown:
        return None, None, f"words outside the model's vocabulary ({', '.join(unknown)})"
    for name, st, text in (("caption", cap, caption), ("foil", fo, foil)):
        if st is None:
            return None, None, f"not a sentence of the toy world's forms (the {name}: {text!r})"
    if cap.subject != fo.subject:
        return None, None, f"the caption and foil are about different objects ({cap.subject}, {fo.subject})"
    if top == 1 and "counting" in (cap.phenomenon, fo.phenomenon):
        return None, None, "counting, which this model's world lacks (existence only)"
    if not {n for n in cap.counts - fo.counts if n <= top}:
        return None, None, "no scene makes the caption true and the foil false"
    return cap, fo, None


def world_pairs(model, pairs):
    """The pairs (a ``PairSet``) whose caption and foil the scene-reading demo ``model``'s world covers; every
    other is added to ``dropped`` with the reason (words it never learnt, a sentence not of the world's forms,
    another subject, a count beyond 4, ...)."""
    from hooked_clip.analyses.localize.pairs_file import PairSet

    kept, dropped, vocabulary = [], list(pairs.dropped), _Vocabulary(model)
    for p in pairs.pairs:
        _, _, reason = pair_statements(model, p.caption, p.foil, vocabulary)
        (kept.append(p) if reason is None else dropped.append((p.id, f"not in the toy world: {reason}")))
    return PairSet(kept, dropped)


def caption_scenes(model, pairs, seed: int = 0) -> list[list[str]]:
    """One scene per pair (a ``PairSet`` or list of pairs, each covered: :func:`world_pairs`) in which its caption
    is true and its foil false: the subject k times (k drawn from the counts the caption allows and the foil does
    not, up to what the model can see), among 1-5 other objects; the draw depends only on (seed, the pair's id)."""
    top, vocabulary = max_count(model), _Vocabulary(model)
    out = []
    for p in getattr(pairs, "pairs", pairs):
        cap, fo, reason = pair_statements(model, p.caption, p.foil, vocabulary)
        if reason is not None:
            raise ValueError(f"pair {p.id!r}: {reason}; keep only the covered pairs first (world_pairs).")
        rng = random.Random(f"{seed}:{p.id}")
        k = rng.choice(sorted(n for n in cap.counts - fo.counts if n <= top))
        others = count_world.random_scene(rng, 1, 5, exclude=cap.subject)
        if top == 1:
            others = sorted(set(others))
        out.append(sorted(others + [cap.subject] * k))
    return out


@torch.no_grad()
def world_pair_accuracy(model, pairs, seed: int = 0) -> tuple[float, int]:
    """Pairwise accuracy S(caption, scene) > S(foil, scene) of a scene-reading demo model on the pairs (a
    ``PairSet``) its world covers, each against its :func:`caption_scenes` scene: (accuracy, pairs covered)."""
    kept = world_pairs(model, pairs).pairs
    if not kept:
        return float("nan"), 0
    img = model.encode_image(scene_input(model, caption_scenes(model, kept, seed=seed), seed=seed))
    s_c = model.similarity(model.encode_text([p.caption for p in kept]), img).diagonal()
    s_f = model.similarity(model.encode_text([p.foil for p in kept]), img).diagonal()
    return float((s_c > s_f).float().mean()), len(kept)


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


if __name__ == "__main__":  # python -m hooked_clip.analyses.valse_negation.demo_scenes [--model tiny-count]
    import argparse

    from hooked_clip import load_model

    parser = argparse.ArgumentParser(description="The demo model's VALSE accuracy on synthesized scenes.")
    parser.add_argument("--model", choices=("tiny-negation", "tiny-negation-pixels", "tiny-count"), default="tiny-negation")
    parser.add_argument("--seed", type=int, default=0, help="the scenes' seed (distractors; for the pixel model, also the cells)")
    args = parser.parse_args()
    model = load_model(args.model)
    if args.model == "tiny-count":  # every VALSE counting and existence pair its world covers
        from hooked_clip.analyses.localize.pairs_file import load_dataset

        report = {"model": args.model, "seed": args.seed}
        for name in ("valse:existence", "valse:counting-small-quant", "valse:counting-hard", "valse:counting-adversarial"):
            pairs = load_dataset(name)
            acc, n = world_pair_accuracy(model, pairs, seed=args.seed)
            report[name] = {"pairs": len(pairs), "covered": n, "pairwise_accuracy": round(acc, 4)}
    else:
        acc, n = demo_model_accuracy(model, seed=args.seed)
        report = {"model": args.model, "valse_pairwise_accuracy": acc, "n_valse": n, "seed": args.seed}
    print(json.dumps(report, indent=2))
