"""What the checkpoint-diff study measures, on scene-reading models (the toy pair ``tiny-pair-base`` /
``tiny-pair-tuned``, or any ``HookedCLIP`` whose ``encode_image`` takes scenes).

Negation behaviour of a negated sentence N about subject x ("There is no dog."): with two scenes that differ only
in x — S⁻ without it (N true), S⁺ with it (N false), the VALSE item's synthesized scene and its counterpart —

    b(N) = S(N, S⁻) − S(N, S⁺)   (logits)

positive when the model reads the negation, negative when it reads "no dog" as "dog". Both models' texts are read
against the base model's images and logit scale (``tiny-pair-tuned`` keeps the base's scene tower, so this is each
model's own similarity; for a pair whose image towers differ it is the base's view, and the report says so).

Patching (cross-checkpoint, the same sentence in both runs): ``restore`` runs the base and patches in the tuned
model's state; its fraction = (b_patched − b_base) / (b_tuned − b_base), as a ratio of means over items (one
number per cell, robust to items whose gap is near 0). ``break`` runs the tuned model with the base's state:
fraction = (b_patched − b_tuned) / (b_base − b_tuned), how much of the fix that one state undoes. Per hidden state
(0 = embeddings, l = after block l) × token role, and per head (its ``z`` at every position)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from hooked_clip.analyses.metrics import similarity_metric
from hooked_clip.analyses.patching import activation_patch, hidden_state_patch
from hooked_clip.analyses.valse_negation.demo_scenes import synthesize_scene, valid_items

ROLES = ("start", "before 'no'", "'no'", "subject", "after subject", "end (pooled)")
DIRECTIONS = {"restore": "tuned state into the base", "break": "base state into the tuned model"}


@dataclass
class Items:
    """The negated sentences and, per sentence, the scene without its subject (``absent``) and with it
    (``present``)."""

    ids: list[str]
    negated: list[str]
    absent: list[list[str]]
    present: list[list[str]]

    def __len__(self) -> int:
        return len(self.negated)

    def __getitem__(self, index: slice) -> "Items":
        if not isinstance(index, slice):
            raise TypeError(f"Items are sliced (items[a:b]), not indexed by {type(index).__name__}.")
        return Items(self.ids[index], self.negated[index], self.absent[index], self.present[index])


def load_items(path=None, limit: Optional[int] = None) -> Items:
    """The valid VALSE existence items (``path``: any file in its format) as negated sentences and scene pairs."""
    items = valid_items(path)[:limit]
    if not items:
        raise ValueError(f"no valid items in {path or 'the shipped VALSE existence file'}.")
    out = Items([], [], [], [])
    for x in items:
        swapped = {**x, "caption": x["foil"], "foil": x["caption"]}  # the same distractors, the subject flipped
        a, b = synthesize_scene(x), synthesize_scene(swapped)
        absent, present = (a, b) if len(a) < len(b) else (b, a)
        negated = x["caption"] if " no " in f" {x['caption'].lower()} " else x["foil"]
        out.ids.append(str(x.get("dataset_idx", len(out.ids))))
        out.negated.append(negated)
        out.absent.append(absent)
        out.present.append(present)
    return out


def behaviour_metric(model, items: Items):
    """b(text) = S(text, S⁻) − S(text, S⁺) per item, on ``model``'s images and logit scale."""
    with torch.inference_mode():
        minus = similarity_metric(model, model.encode_image(items.absent))
        plus = similarity_metric(model, model.encode_image(items.present))
    return lambda embeds: minus(embeds) - plus(embeds)


def roles(model, texts: list[str]) -> Tensor:
    """[item, pos] index into :data:`ROLES` (-1: no token), from each sentence's own tokens: the first ``no``,
    the token after it, the pooled position, the start, and what lies between."""
    tokens = model.text.as_tokens(texts)
    pool = model.text.pool_positions(tokens).cpu()
    out = torch.full(tokens.shape, -1, dtype=torch.long)
    for i, row in enumerate(tokens.cpu()):
        words = [w.strip().lower() for w in model.text.to_str_tokens(row)]
        p = int(pool[i])
        neg = next((j for j in range(1, p) if words[j] == "no"), None)
        if neg is None:
            raise ValueError(f"{texts[i]!r} has no token 'no' in this model's tokenizer; checkpoint-diff needs the negator 'no'.")
        out[i, 1:neg] = 1
        out[i, neg] = 2
        out[i, neg + 1:p] = 4
        if neg + 1 < p:
            out[i, neg + 1] = 3
        out[i, 0] = 0
        out[i, p] = 5
    return out


@dataclass
class Sweep:
    """One direction: ``states`` [state, role] and ``heads`` [layer, head] fractions (ratio of means), the
    per-item behaviour of the patched run (``patched_b``) and the source run (``source_b``)."""

    states: Tensor
    heads: Tensor
    patched_b: Tensor
    source_b: Tensor


def measure(patched, source, items: Items, metric, role: Tensor, batch_size: int = 1024,
            progress: bool = False) -> dict[str, Tensor]:
    """Patch ``source``'s states into ``patched`` (the same sentences): every hidden state × position and every
    head's ``z``. Per item, nothing pooled over items (so chunks of items concatenate, see :func:`fractions`):
    ``roles`` [state, role, item] the move of b by one state, averaged over the item's positions of each role
    (NaN where the item has no such token), ``heads`` [layer, head, item], ``own`` / ``other`` [item] b of the
    patched and of the source run."""
    states = hidden_state_patch(patched, items.negated, None, metric, source_model=source, batch_size=batch_size,
                                progress=progress)
    heads = activation_patch(patched, items.negated, None, metric, "z", index="layer_head", source_model=source,
                             batch_size=batch_size, progress=progress)
    own, other = states.corrupt, states.clean  # denoising: the source run is "clean"
    moved = states.values - own  # [state, pos, item]
    r = role[:, : moved.shape[1]].T  # [pos, item]
    by_role = torch.full((moved.shape[0], len(ROLES), moved.shape[2]), float("nan"))
    for k in range(len(ROLES)):
        mask = (r == k).float()
        n = mask.sum(0)  # positions of role k per item
        has = n > 0
        by_role[:, k, has] = (moved * mask).sum(1)[:, has] / n[has]
    return {"roles": by_role, "heads": heads.values - own, "own": own, "other": other}


def fractions(parts: list[dict[str, Tensor]]) -> Sweep:
    """The fractions of the patched-to-source gap (ratios of means over items) from :func:`measure`'s per-item
    results, of one chunk or of several in item order."""
    cat = {k: torch.cat([p[k] for p in parts], dim=-1) for k in ("roles", "heads", "own", "other")}
    gap = cat["other"] - cat["own"]
    by_role = torch.full(cat["roles"].shape[:2], float("nan"))
    for k in range(len(ROLES)):
        has = ~cat["roles"][0, k].isnan()
        if has.any():
            by_role[:, k] = cat["roles"][:, k, has].mean(-1) / gap[has].mean()
    return Sweep(by_role, cat["heads"].mean(-1) / gap.mean(), cat["own"], cat["other"])


def sweep(patched, source, items: Items, metric, role: Tensor, batch_size: int = 1024, progress: bool = False) -> Sweep:
    """Patch ``source``'s states into ``patched`` (the same sentences): every hidden state × position and every
    head's ``z``; fractions of the patched-to-source gap, per state × role and per head (all items at once;
    the command measures chunks of items, resumably, and pools them the same way)."""
    return fractions([measure(patched, source, items, metric, role, batch_size, progress)])


def accuracy(model, items: Items) -> float:
    """VALSE-style pairwise accuracy of the negated sentences: S(N, S⁻) > S(N, S⁺)."""
    with torch.inference_mode():
        e = model.encode_text(items.negated)
        return float((behaviour_metric(model, items)(e) > 0).float().mean())


__all__ = ["DIRECTIONS", "ROLES", "Items", "Sweep", "accuracy", "behaviour_metric", "fractions", "load_items", "measure",
           "roles", "sweep"]
