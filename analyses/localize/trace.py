"""Where a minimal pair's changed tokens reach the read-out: the paper's causal-tracing map (CTE) generalised
to any caption/foil pair, and head scores where a changed token exists.

For each pair the foil is run with the caption's hidden state (l, p) patched in (denoising, the caption is the
clean run; positions matched by the token alignment of ``align.py``, so the two sentences may differ in length)
and the normalised patching metric is read::

    CTE(l, p) = (M*(foil) - M(foil)) / (M(caption) - M(foil))

``direction="foil-into-caption"`` patches the other way, the foil's state (l, p) into the caption run (the foil
is the clean run), ``CTE = (M*(caption) - M(caption)) / (M(foil) - M(caption))``, and the roles below are then the
caption's positions. That is the negation study's trace when the foil is the negated sentence: the paper patches
the negated sentence's states into the affirmative one (``DIRECTIONS``; docs/api/localize.md).

- with an image per pair, ``M = S(text, image)``, the model's similarity (the paper's metric);
- without images (**text-only**), ``M = cos(text, caption embedding)``: CTE is the fraction of the foil's
  cosine distance to the caption that one hidden state closes. It measures where the change's information
  reaches the text embedding, not whether the model gets the pair right.

The per-position map is summarised per pair over position *roles* of the foil (``ROLES``): ``before`` (tokens
before the first change, start token included), ``changed`` (substituted foil tokens; inserted ones have no
counterpart and are not patched), ``between`` (unchanged tokens between changes), ``after`` (unchanged tokens
after the last change, the pooled one excepted) and ``pooled`` (the position the read-out takes); each role is the
mean over its positions. Hidden states follow the paper: 0 = embeddings output, l = output of block l.

Head score (the paper's negator-selective Δ generalised): for each head, the largest difference over the foil's
query positions after its first change (up to its last token, each with a counterpart in the caption) of the
attention mass on the foil's changed tokens minus the caption's attention mass on its own changed tokens at the
counterpart query. For an equal-length pair with one substituted token this is exactly the paper's Δ with the
foil as the "negated" sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.heads import attention_patterns
from hooked_clip.analyses.localize.align import Alignment, align_tokens, alignment_tensor
from hooked_clip.analyses.localize.pairs_file import MinimalPair, PairSet
from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.analyses.patching import hidden_state_patch
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.errors import TextTooLongError
from hooked_clip.tower import get_tower

ROLES = ("before", "changed", "between", "after", "pooled")
DIRECTIONS = ("caption-into-foil", "foil-into-caption")  # whose hidden states are patched into which run
TEXT_ONLY = "text-only: cos(foil, caption embedding); CTE = share of the foil's distance to the caption closed"
TEXT_ONLY_REVERSED = ("text-only: cos(caption, caption embedding) = 1 moved towards cos(foil, caption embedding); CTE = "
                      "share of the caption-foil distance one foil state opens")
WITH_IMAGES = "S(text, image), the model's similarity (logits); CTE = share of the caption-foil gap d closed"


@dataclass(repr=False)
class Localization(CompactRepr):
    """One run of :func:`localize` over pairs (one row per kept pair).

    ``cte`` [pairs, n_layers + 1, role] (roles: ``ROLES``; NaN where a pair has no position of the role);
    ``heads`` [pairs, layer, head] (the generalised Δ); ``caption_metric`` / ``foil_metric`` [pairs] (M of each
    sentence); ``kinds``: each pair's alignment kind (substitution / insertion / deletion / mixed); ``metric``:
    what M is; ``dropped``: (id, reason) of every pair left out; ``direction``: which run's states were patched
    into which (``DIRECTIONS``)."""

    ids: list[str]
    phenomena: list[str]
    cte: Tensor
    heads: Tensor
    caption_metric: Tensor
    foil_metric: Tensor
    kinds: list[str]
    metric: str
    dropped: list[tuple[str, str]] = field(default_factory=list)
    direction: str = DIRECTIONS[0]

    @property
    def d(self) -> Tensor:
        """M(caption) - M(foil) per pair (with images: positive = the model prefers the caption)."""
        return self.caption_metric - self.foil_metric

    def select(self, phenomenon: str) -> Tensor:
        """Boolean [pairs] mask of one phenomenon's pairs."""
        return torch.tensor([p == phenomenon for p in self.phenomena], dtype=torch.bool)

    def phenomenon_map(self, phenomenon: str) -> Float[Tensor, "states roles"]:
        """Mean CTE over the phenomenon's pairs (NaN ignored) [n_layers + 1, role]."""
        return self.cte[self.select(phenomenon)].nanmean(0)

    def phenomenon_heads(self, phenomenon: str) -> Float[Tensor, "layer head"]:
        """Mean head score over the phenomenon's pairs [layer, head]."""
        return self.heads[self.select(phenomenon)].nanmean(0)

    @classmethod
    def concat(cls, parts: Sequence["Localization"], dropped: Sequence[tuple[str, str]] = ()) -> "Localization":
        first = parts[0]
        return cls(sum((p.ids for p in parts), []), sum((p.phenomena for p in parts), []),
                   torch.cat([p.cte for p in parts]), torch.cat([p.heads for p in parts]),
                   torch.cat([p.caption_metric for p in parts]), torch.cat([p.foil_metric for p in parts]),
                   sum((p.kinds for p in parts), []), first.metric, sum((p.dropped for p in parts), []) + list(dropped),
                   first.direction)

    def to_dataframe(self):
        """One row per (pair, state, role): ``id``, ``phenomenon``, ``kind``, ``state``, ``role``, ``cte``, ``d``."""
        import pandas as pd

        n, s, r = self.cte.shape
        pair, state, role = (g.flatten() for g in torch.meshgrid(torch.arange(n), torch.arange(s), torch.arange(r),
                                                                  indexing="ij"))
        pair_l = pair.tolist()
        return pd.DataFrame({"id": [self.ids[i] for i in pair_l], "phenomenon": [self.phenomena[i] for i in pair_l],
                             "kind": [self.kinds[i] for i in pair_l], "state": state.numpy(),
                             "role": [ROLES[i] for i in role.tolist()], "cte": self.cte.flatten().numpy(),
                             "d": self.d[pair].numpy()})


def prepare(model, pairs: Sequence[MinimalPair]) -> tuple[list[MinimalPair], list[Alignment], list[tuple[str, str]]]:
    """Each pair's token alignment; pairs that cannot be aligned are dropped and named: a sentence longer than
    the model's context, or two sentences sharing no token besides the start/end tokens."""
    text = get_tower(model, "text")
    if text.cfg.pads_to_context:
        raise ValueError("this text tower reads its padding (it pads every text to its context length), so positions "
                         "after the shorter sentence have no counterpart; localize needs a tower that masks its "
                         "padding or pools at the EOT.")
    kept, alignments, dropped = [], [], []
    for p in pairs:
        try:
            ids = text.to_tokens([p.foil, p.caption])
        except TextTooLongError as e:
            dropped.append((p.id, f"longer than the model's context ({str(e).split(';')[0]})"))
            continue
        lengths = text.input_lengths(ids).tolist()
        foil, caption = ids[0, : lengths[0]].tolist(), ids[1, : lengths[1]].tolist()
        if foil == caption:
            dropped.append((p.id, "the caption and foil have the same tokens (the change is lost in tokenization)"))
            continue
        a = align_tokens(foil, caption)
        if sum(op.foil_end - op.foil_start for op in a.ops if op.kind == "equal") <= 2:
            dropped.append((p.id, "the caption and foil share no token besides the start and end tokens (no alignment)"))
            continue
        kept.append(p)
        alignments.append(a)
    return kept, alignments, dropped


def roles(a: Alignment, pool: int) -> list[int]:
    """The role (index into ``ROLES``) of each foil position."""
    changed = set(a.changed_foil())
    marks = [op.foil_start for op in a.ops if op.kind != "equal"]
    first, last = min(marks), max(op.foil_end for op in a.ops if op.kind != "equal")
    out = []
    for p in range(a.n_foil):
        if p == pool:
            out.append(ROLES.index("pooled"))
        elif p in changed:
            out.append(ROLES.index("changed"))
        elif p < first:
            out.append(ROLES.index("before"))
        elif p >= last:
            out.append(ROLES.index("after"))
        else:
            out.append(ROLES.index("between"))
    return out


def localize(model, pairs, image_embeds: Optional[Float[Tensor, "pairs d_proj"]] = None, *, chunk: int = 64,
             batch_size: int = 1024, progress: bool = True, direction: str = DIRECTIONS[0]) -> Localization:
    """The generalised CTE map and head scores of every pair (see the module docstring). ``pairs``: a
    :class:`PairSet` or a list of :class:`MinimalPair`; ``image_embeds``: one image embedding per pair (the
    paper's metric) or None (the text-only metric); ``chunk``: pairs per engine call; ``direction``: the caption's
    states patched into the foil run (default) or the foil's into the caption run (``DIRECTIONS``)."""
    check_direction(direction)
    dropped_in = list(pairs.dropped) if isinstance(pairs, PairSet) else []
    pairs = list(pairs.pairs if isinstance(pairs, PairSet) else pairs)
    if image_embeds is not None and (image_embeds.ndim != 2 or image_embeds.shape[0] != len(pairs)):
        raise ValueError(f"image_embeds must be [pairs={len(pairs)}, d_proj], got {tuple(image_embeds.shape)}.")
    index = {p.id: i for i, p in enumerate(pairs)}
    kept, alignments, dropped = prepare(model, pairs)
    if not kept:
        raise ValueError(f"no pair can be localized: {dropped[:5]}")
    parts = []
    bar = tqdm(range(0, len(kept), chunk), desc="localize", disable=not progress, unit="chunk")
    for start in bar:
        sl = slice(start, start + chunk)
        imgs = None if image_embeds is None else image_embeds[[index[p.id] for p in kept[sl]]]
        parts.append(localize_chunk(model, kept[sl], alignments[sl], imgs, batch_size, direction))
    return Localization.concat(parts, dropped_in + dropped)


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: use one of {list(DIRECTIONS)} (whose hidden states are patched "
                         "into which run).")


def localize_chunk(model, pairs: list[MinimalPair], alignments: list[Alignment], image_embeds=None,
                   batch_size: int = 1024, direction: str = DIRECTIONS[0]) -> Localization:
    """:func:`localize` of pairs already aligned by :func:`prepare` (one engine call)."""
    check_direction(direction)
    text = get_tower(model, "text")
    foil = text.to_tokens([p.foil for p in pairs])
    caption = text.to_tokens([p.caption for p in pairs])
    foil_pool, cap_pool = text.pool_positions(foil), text.pool_positions(caption)
    if text.cfg.trims:
        foil, caption = foil[:, : int(foil_pool.max()) + 1], caption[:, : int(cap_pool.max()) + 1]
    with torch.inference_mode():
        cap_embeds = model.encode_text(caption)
    if image_embeds is None:
        metric, what = cosine_to_target(cap_embeds), TEXT_ONLY if direction == DIRECTIONS[0] else TEXT_ONLY_REVERSED
    else:
        metric, what = similarity_metric(model, image_embeds.to(cap_embeds.device)), WITH_IMAGES
    # the patched run, its pooled positions and its alignment (each of its positions -> the source run's)
    if direction == DIRECTIONS[0]:
        source, patched, pool, patched_al = caption, foil, foil_pool, alignments
    else:
        source, patched, pool, patched_al = foil, caption, cap_pool, [a.reversed() for a in alignments]
    width = max(foil.shape[1], caption.shape[1]) if not text.cfg.trims else patched.shape[1]
    states = hidden_state_patch(model, source, patched, metric, alignment=alignment_tensor(patched_al, width),
                                batch_size=batch_size, progress=False)
    per_pos = states.normalized()  # [state, pos, pair]
    n_states = per_pos.shape[0]
    cte = torch.full((len(pairs), n_states, len(ROLES)), float("nan"))
    for b, a in enumerate(patched_al):
        role = torch.tensor(roles(a, int(pool[b])))
        vals = per_pos[:, : a.n_foil, b]  # [state, pos]
        for r in role.unique().tolist():
            cte[b, :, r] = vals[:, role == r].nanmean(-1)
    heads = _head_scores(text, foil, caption, alignments)
    m_caption, m_foil = (states.clean, states.corrupt) if direction == DIRECTIONS[0] else (states.corrupt, states.clean)
    return Localization([p.id for p in pairs], [p.phenomenon for p in pairs], cte, heads, m_caption.float(),
                        m_foil.float(), [a.kind for a in alignments], what, direction=direction)


def _head_scores(text, foil: Tensor, caption: Tensor, alignments: list[Alignment]) -> Float[Tensor, "pairs layer head"]:
    """The generalised Δ of each pair (module docstring)."""
    pat_f, pat_c = attention_patterns(text, foil).float().cpu(), attention_patterns(text, caption).float().cpu()
    out = torch.full((len(alignments), text.cfg.n_layers, text.cfg.n_heads), float("nan"))
    for b, a in enumerate(alignments):
        cf, cc = a.changed_foil(), a.changed_caption()
        first = min(op.foil_start for op in a.ops if op.kind != "equal")
        to_cap = a.foil_to_caption()
        queries = [q for q in range(first + 1, a.n_foil) if to_cap[q] >= 0]
        if not queries:
            continue
        q_f, q_c = torch.tensor(queries), torch.tensor([to_cap[q] for q in queries])
        mass_f = pat_f[b][:, :, q_f][..., cf].sum(-1) if cf else torch.zeros(*pat_f.shape[1:3], len(queries))
        mass_c = pat_c[b][:, :, q_c][..., cc].sum(-1) if cc else torch.zeros(*pat_c.shape[1:3], len(queries))
        out[b] = (mass_f - mass_c).amax(-1)
    return out


__all__ = ["DIRECTIONS", "Localization", "ROLES", "check_direction", "TEXT_ONLY", "WITH_IMAGES", "localize", "localize_chunk", "prepare", "roles"]
