"""The VALSE negation study: per-item measurements, written incrementally and atomically, resumable.

Built only from the generic analyses: scores (``hooked_clip.analyses.metrics``), the paper's causal tracing
(``hooked_clip.analyses.causal_tracing.minimal_pair_trace``), optionally ROME noise tracing, and head scores
(``hooked_clip.analyses.heads.negator_head_scores``). Segments by ``segments.py``; aggregation in ``aggregate.py``;
the outputs (tables, figures, the report) by ``report.write_outputs``.

A run directory holds ``config.json`` (model, fingerprint — :func:`hooked_clip.fingerprint.fingerprint`, so the
same weights under two names are one model and different weights are never mixed — settings), ``image_embeds.safetensors`` (the
image embeddings, computed once), ``items/<id>.json`` (one record per valid item, each written to a
temporary file and renamed into place), then the outputs of ``report.write_outputs``. A run directory from
another model or configuration is refused.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hooked_clip.devices import no_tf32
from hooked_clip.errors import UnreadableFileError
from hooked_clip.fingerprint import fingerprint

from hooked_clip.loaders.files import read_json, read_safetensors

from hooked_clip.analyses.causal_tracing import embedding_std, minimal_pair_trace, rome_trace
from hooked_clip.analyses.heads import negator_head_scores
from hooked_clip.analyses.run_dirs import RunDirMismatchError, atomic_save, atomic_write, claim  # noqa: F401 (re-exported)
from hooked_clip.analyses.metrics import normalized_patching_metric, similarity_metric
from hooked_clip.analyses.valse_negation.data import Item, SubjectParser, align, load_items
from hooked_clip.analyses.valse_negation.demo_scenes import PHOTOS_REFUSED, reads_scenes
from hooked_clip.analyses.valse_negation.images import SceneImages
from hooked_clip.analyses.valse_negation.layout import check_token_layout, to_rows
from hooked_clip.analyses.valse_negation.segments import segment

STUDY_VERSION = 2  # 2: the negator's own zoom row; subject prompt and both areas on the aligned pair


DEMO_FIX = ("drop --images (in Python: images=SceneImages(), the scenes synthesized from the items), or pass a real "
            "CLIP with --model")


@dataclass(frozen=True)
class Settings:
    limit: Optional[int] = None  # first N valid items (for quick runs)
    chunk: int = 64  # items per incremental write
    batch_size: int = 1024  # rows per forward in the patching engine
    rome: bool = False  # also the ROME-noise variant of causal tracing (slower)
    rome_samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("chunk", "batch_size", "rome_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be a positive integer, got {value!r}.")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit (--limit) must be a positive number of items or None, got {self.limit!r}.")


def _recorded_model(config: dict) -> dict:
    """The model a run's config records, as :func:`hooked_clip.analyses.run_dirs.claim` compares it."""
    return {"model": {"name": config.get("model"), "fingerprint": config.get("fingerprint")}}


def _check_config(run_dir: Path, config: dict) -> None:
    # the model's name is not compared: the fingerprint says which weights ran (two names, one model)
    claim(run_dir, config, ignore=("model", "fingerprint"), models=_recorded_model,
          has_results=lambda d: any((d / "items").glob("*.json")))


def _image_embeds(model, run_dir: Path, items: Sequence[Item], images) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    path = run_dir / "image_embeds.safetensors"
    fix = "Delete it and run again: the image embeddings are recomputed."
    cached = read_safetensors(path, fix) if path.exists() else {}
    todo = [x for x in items if x.id not in cached]
    if todo:
        emb = images.embed(model, todo)
        cached.update({x.id: e.detach().cpu().contiguous() for x, e in zip(todo, emb)})
        atomic_save(path, lambda tmp: save_file(cached, str(tmp)))
    return cached


@torch.no_grad()
def _text_embeds(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, unit-norm) text embeddings."""
    raw = model.text(model.text.as_tokens(texts))
    return raw, F.normalize(raw, dim=-1)


@torch.no_grad()
def _scores(model, e_c: torch.Tensor, e_f: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S(caption, image), S(foil, image) in logits (the model's own similarity, bias included), from raw
    text embeddings."""
    return model.paired_similarity(e_c, img), model.paired_similarity(e_f, img)


def rome_noise_std(model, items: Sequence[Item]) -> float:
    """ROME's sigma for a run: the std of the token embeddings over every aligned item's negated sentence (its
    text, padding left out), computed once, recorded in the run's config and used for every chunk, so chunking,
    batch mates and resuming cannot change a number."""
    negated = [p.negated for p in (align(x) for x in items) if p is not None]
    if not negated:
        raise ValueError("no item aligns to a minimal pair, so ROME has no sentence to corrupt; drop --rome.")
    return round(embedding_std(model, negated), 10)


def select_items(items: list[Item], limit: Optional[int]) -> list[Item]:
    """The first ``limit`` items, alternating negation in caption / in foil (the file lists one kind first)."""
    if limit is None:
        return items
    by_loc = [[x for x in items if x.negation_in == loc] for loc in ("caption", "foil")]
    mixed = [x for pair in zip(*by_loc) for x in pair]
    n = min(len(by_loc[0]), len(by_loc[1]))
    mixed += by_loc[0][n:] + by_loc[1][n:]
    return mixed[:limit]


def run_items(model, run_dir, *, model_id: str, images=None, settings: Settings = Settings(),
              items: Optional[list[Item]] = None, progress: bool = True,
              subject_parser: Optional[SubjectParser] = None) -> dict[str, dict]:
    """Measure every valid item (resuming from ``run_dir/items``) and return the records by id.
    ``images=None`` runs the text-only parts (head scores, caption-foil similarity, lengths).
    ``subject_parser``: the subject prompt of each foil-negated aligned pair (the image source adds its size)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {str(run_dir)!r} is a file; a run writes a directory there. Pass a new "
                                 "directory (or an earlier run's directory, to resume it).")
    run_dir.mkdir(parents=True, exist_ok=True)
    items = load_items() if items is None else items
    items = select_items(items, settings.limit)
    if images is not None and getattr(model, "vision", None) is None:
        raise ValueError("this model has no image tower, so image scores cannot be computed; load a full CLIP "
                         "(HookedCLIP.from_pretrained / from_open_clip) or run without --images.")
    if images is not None and not isinstance(images, SceneImages) and reads_scenes(model):
        raise ValueError(PHOTOS_REFUSED.format(model=model_id, fix=DEMO_FIX))
    config = {"study_version": STUDY_VERSION, "model": model_id, "fingerprint": fingerprint(model).as_dict(),
              "images": images.describe() if images is not None else None, "n_items": len(items),
              "images_content": images.identity(items) if images is not None else None,
              "subject_parser": subject_parser.name if subject_parser is not None else None,
              "tf32": False,  # every forward of the run in IEEE fp32 (devices.no_tf32; matters on CUDA only)
              **{k: v for k, v in asdict(settings).items() if k not in ("chunk", "batch_size")}}
    with no_tf32():
        if settings.rome:  # ROME's noise scale: once per run, over every item's negated sentence (not per chunk)
            config["rome_noise_std"] = rome_noise_std(model, items)
        _check_config(run_dir, config)
        img = _image_embeds(model, run_dir, items, images) if images is not None else None
        records = _read_records(run_dir / "items")
        bar = tqdm(total=len(items), initial=sum(x.id in records for x in items), desc="VALSE items",
                   disable=not progress)
        # chunks are fixed slices of the items, so an item is measured beside the same batch mates however the
        # run was interrupted (a kill between two records of a chunk included): resumed = uninterrupted, bit for bit
        for start in range(0, len(items), settings.chunk):
            chunk = items[start:start + settings.chunk]
            missing = sum(x.id not in records for x in chunk)
            if not missing:
                continue
            for rec in _measure(model, chunk, img, images, settings, subject_parser, config.get("rome_noise_std")):
                if rec["id"] not in records:  # a record already written is kept (the chunk gives it the same numbers)
                    atomic_write(run_dir / "items" / f"{rec['id']}.json", json.dumps(rec))
                    records[rec["id"]] = rec
            bar.update(missing)
        bar.close()
    return {x.id: records[x.id] for x in items}


_RECORD_FIELDS = ("negation_in", "caption", "foil", "similarity", "n_tokens")  # written for every item


def _read_records(folder: Path) -> dict[str, dict]:
    """The finished items' records by id. A damaged record (truncated, not JSON, or not this item's) is
    reported and left out, so its item is measured again and the file rewritten."""
    records: dict[str, dict] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            rec = read_json(path, "an item record (JSON)", "It was probably cut short (a crash or a full disk).")
            if not isinstance(rec, dict) or rec.get("id") != path.stem:
                raise UnreadableFileError(f"{str(path)!r} is not the record of item {path.stem!r}.")
            missing = [k for k in _RECORD_FIELDS if k not in rec]
            if missing:
                raise UnreadableFileError(f"{str(path)!r} lacks the fields {missing} that every record holds.")
        except UnreadableFileError as err:
            warnings.warn(f"{err} Measuring item {path.stem!r} again (the file will be replaced).", stacklevel=3)
            continue
        records[rec["id"]] = rec
    return records


@torch.inference_mode()  # reads only: no autograd graph (the logit scale is a Parameter)
def _measure(model, items: list[Item], img: Optional[dict], images, settings: Settings,
             subject_parser: Optional[SubjectParser] = None, rome_std: Optional[float] = None) -> list[dict]:
    text = model.text
    recs = [{"id": x.id, "negation_in": x.negation_in, "caption": x.caption, "foil": x.foil} for x in items]
    (raw_c, e_c), (raw_f, e_f) = _text_embeds(model, [x.caption for x in items]), _text_embeds(model, [x.foil for x in items])
    for r, c, f, x in zip(recs, e_c, e_f, items):
        r["similarity"] = float((c * f).sum())
        r["n_tokens"] = len(text.tokenizer.encode(x.caption))
    if img is not None:
        im = torch.stack([img[x.id] for x in items])
        s_c, s_f = _scores(model, raw_c, raw_f, im)
        for r, a, b in zip(recs, s_c.tolist(), s_f.tolist()):
            r.update(s_caption=a, s_foil=b, d=a - b, segment=segment(a - b))
    pairs = [(i, align(x)) for i, x in enumerate(items)]
    pairs = [(i, p) for i, p in pairs if p is not None]
    if not pairs:
        return recs
    idx = [i for i, _ in pairs]
    pairs = [p for _, p in pairs]
    neg, aff = [p.negated for p in pairs], [p.affirmative for p in pairs]
    layouts = check_token_layout(text, neg, aff)  # every row's position per pair, from the model's tokenizer
    negator = torch.tensor([x.negator for x in layouts])
    heads = negator_head_scores(model, neg, aff, negator)
    (raw_c, e_c), (raw_f, e_f) = _text_embeds(model, [p.caption for p in pairs]), _text_embeds(model, [p.foil for p in pairs])
    head_rows = heads.rows.clone()
    head_rows[torch.arange(len(pairs)), :, :, negator] = heads.self_row  # the negator's own query row, kept as the authors do
    for k, (i, p) in enumerate(zip(idx, pairs)):
        zoom, _ = to_rows(head_rows[k], layouts[k], further="max")  # no further tokens: NaN (see aggregate.zoom_rows)
        recs[i]["aligned"] = {"caption": p.caption, "foil": p.foil, "n_tokens": layouts[k].n_tokens,
                              "positions": layouts[k].to_record(),
                              "similarity": float((e_c[k] * e_f[k]).sum()),
                              "head_delta": heads.delta[k].tolist(), "head_rows": zoom}
    # the subject: foil-negated pairs only (it is in the image, PAPER.md §6.1); prompt from the text, size from the image
    subjects = [{"subject": subject_parser(p.caption)} if subject_parser is not None and p.negation_in == "foil" else None
                for p in pairs]
    if img is not None:
        subjects = images.subjects(pairs, subjects)
    for i, subject in zip(idx, subjects):
        if subject is not None:
            recs[i]["aligned"].update(subject)
    if img is None:
        return recs
    im = torch.stack([img[p.id] for p in pairs])
    s_c, s_f = _scores(model, raw_c, raw_f, im)
    cte = minimal_pair_trace(model, neg, aff, im, batch_size=settings.batch_size, progress=False)
    for k, i in enumerate(idx):
        d = float(s_c[k] - s_f[k])
        rows, n_further = to_rows(cte[k], layouts[k])
        recs[i]["aligned"].update(s_caption=float(s_c[k]), s_foil=float(s_f[k]), d=d, segment=segment(d),
                                  cte_rows=rows, n_further=n_further)
    if settings.rome:  # ROME variant: noise on the negator embedding of the negated sentence, restore one state
        tokens = text.as_tokens(neg)
        noise = torch.zeros(tokens.shape, dtype=torch.bool)
        noise[torch.arange(len(pairs)), negator] = True  # each pair's own negator position
        trace = rome_trace(model, tokens, similarity_metric(model, im), noise, n_samples=settings.rome_samples,
                           noise_std=rome_std,
                           seed=settings.seed, batch_size=settings.batch_size, progress=False)
        norm = normalized_patching_metric(trace.scores, trace.clean[:, None, None], trace.corrupted[:, None, None])
        for k, i in enumerate(idx):
            recs[i]["aligned"]["rome_rows"], _ = to_rows(norm[k], layouts[k])
    return recs
