"""One model over a set of pairs, written to a run directory chunk by chunk: each chunk is saved atomically as it
finishes, and a run started again with the same model, pairs and metric loads the chunks already there (the same
chunks, the same numbers, bit for bit) and computes only the rest. A chunk saved for another model, other pairs
or another metric (its key differs) is computed again and replaced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from hooked_clip.analyses.localize.pairs_file import MinimalPair, PairSet
from hooked_clip.analyses.localize.trace import DIRECTIONS, Localization, check_direction, localize_chunk, prepare
from hooked_clip.analyses.run_dirs import ChunkStore
from hooked_clip.fingerprint import fingerprint


def _key(model_fp: str, pairs: list[MinimalPair], images: str, direction: str) -> str:
    h = hashlib.sha256(f"{model_fp}|{images}|{direction}".encode())
    for p in pairs:
        h.update(json.dumps([p.id, p.caption, p.foil, p.phenomenon]).encode())
    return h.hexdigest()[:16]


def run_model(model, pairs: PairSet, run_dir: Optional[Path], *, image_embeds=None, chunk: int = 64,
              batch_size: int = 1024, progress: bool = True, direction: str = DIRECTIONS[0],
              images: str = "") -> Localization:
    """:func:`~hooked_clip.analyses.localize.trace.localize` of ``pairs`` with chunks kept in ``run_dir/chunks``
    (None: nothing written). ``image_embeds``: {pair id: embedding [d_proj]} or None (text-only); ``images``:
    what the embeddings are of (a chunk keyed to other images is computed again); ``direction``: see
    ``trace.DIRECTIONS``."""
    check_direction(direction)
    kept, alignments, dropped = prepare(model, pairs.pairs)
    if image_embeds is not None:
        kept_i = [i for i, p in enumerate(kept) if p.id in image_embeds]
        dropped += [(p.id, "no image embedding") for p in kept if p.id not in image_embeds]
        kept, alignments = [kept[i] for i in kept_i], [alignments[i] for i in kept_i]
    if not kept:
        raise ValueError(f"no pair can be localized with this model; dropped: {(pairs.dropped + dropped)[:5]}")
    fp = str(fingerprint(model))
    store = ChunkStore(None if run_dir is None else run_dir / "chunks")
    parts = []
    for start in tqdm(range(0, len(kept), chunk), desc="localize", unit="chunk", disable=not progress):
        sl = slice(start, start + chunk)
        key = _key(fp, kept[sl], "none" if image_embeds is None else images or "images", direction)
        saved = store.load(start // chunk, key)
        if saved is not None:
            parts.append(Localization(**saved))
            continue
        imgs = None if image_embeds is None else torch.stack([image_embeds[p.id] for p in kept[sl]])
        part = localize_chunk(model, kept[sl], alignments[sl], imgs, batch_size, direction)
        store.save(start // chunk, key, {k: getattr(part, k) for k in ("ids", "phenomena", "cte", "heads", "caption_metric",
                                                                       "foil_metric", "kinds", "metric", "direction")})
        parts.append(part)
    return Localization.concat(parts, list(pairs.dropped) + dropped)


__all__ = ["run_model"]
