"""Batched activation patching over layer x position, layer x head and layer x position x head.

Semantics are TransformerLens's ``transformer_lens.patching``: *denoising* runs the corrupt input and
patches in the clean activation at one index; *noising* runs the clean input and patches in the corrupt
one. Numbers are the same as a one-forward-per-patch loop. It is a plan for the batched engine
(:mod:`hooked_clip.analyses.engine`), which

- runs many patched variants per forward (batch expansion), in chunks of at most ``batch_size`` rows;
- starts every patched row at the patched layer from the cached unpatched residual, rows of different
  layers sharing one forward (each joins the batch at its own block), so earlier layers run once;
- for per-position patches in a causal tower, runs only the positions from the patched one on, reading
  the earlier positions' keys and values from the unpatched run (``prefix``): they cannot change;
- skips, exactly, every (variant, example) whose patch cannot change anything, and reports the unpatched
  value for it: the patched state equals the state it replaces (e.g. the shared prefix of a minimal pair
  under the causal mask); it lies after the example's pooling position (a causal tower reads nothing from
  there); or it is a last-block residual/MLP-output state away from the pooling position;
- inherits EOT trimming from the model.

The metric maps output embeddings [..., batch, d_proj] to [..., batch] (see ``hooked_clip.analyses.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from hooked_clip.analyses.validation import check_act_index, check_alignment, check_count, checked_indices
from hooked_clip.analyses.engine import BaseRun, Chunk, Hooks, Plan, execute
from hooked_clip.analyses.metrics import Metric, check_metric, normalized_patching_metric
from hooked_clip.analyses.pairs import Direction, RunPair, Tokens, same_inputs, source_tower
from hooked_clip.names import HEAD_ACTS, act_name as hook_name
from hooked_clip.tower import Tower, get_tower

# the activations activation_patch can patch (hook names: hooked_clip.names.act_name)
PATCHABLE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern")
# In the last block these activations reach the output only through their own position, so only the
# pooling position can matter (ln_final is per position and pooling reads one position).
POOL_ONLY_LAST_LAYER = ("resid_mid", "resid_post", "mlp_out")
INDEX_AXES = {"layer": ("layer",), "layer_pos": ("layer", "pos"), "layer_head": ("layer", "head"), "layer_pos_head": ("layer", "pos", "head")}

Index = Literal["layer", "layer_pos", "layer_head", "layer_pos_head"]
_ALIGNMENT_HINT = "Pass alignment=[batch, pos] mapping each position of the patched run to its counterpart."


@dataclass
class PatchingResult:
    """Metric after each patch, labelled.

    ``values``: [*axes, batch] (e.g. [layer, pos, batch]); ``axes`` names the leading axes and
    ``labels`` their index values (layer numbers are 0-indexed blocks). ``clean``/``corrupt``: [batch]
    metric of the unpatched runs. NaN marks patches that do not exist (a position without a counterpart
    under ``alignment``). ``tokens``: where the inputs are texts, each run's token strings [example][pos] by
    run (``"clean"``, ``"corrupt"``; only the patched run's under ``alignment``), which ``to_dataframe`` adds
    as ``clean_token`` / ``corrupt_token`` columns beside ``pos``.
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[int]]
    act_name: str
    direction: str
    clean: Tensor
    corrupt: Tensor
    extra: dict = field(default_factory=dict)
    tokens: Optional[dict[str, list[list[str]]]] = None

    def __repr__(self) -> str:  # shapes and labels, not every number (TL users print results)
        axes = ", ".join(f"{a}={len(self.labels[a])}" for a in self.axes)
        return (f"PatchingResult({self.act_name}, {self.direction}, values [{axes}, batch={self.values.shape[-1]}], "
                f"clean mean {float(self.clean.float().mean()):.4g}, corrupt mean {float(self.corrupt.float().mean()):.4g})")

    def normalized(self) -> Tensor:
        """Fraction of the gap moved towards the run the activations come from: denoising
        (patched - corrupt) / (clean - corrupt); noising (patched - clean) / (corrupt - clean)."""
        if self.direction == "denoise":
            return normalized_patching_metric(self.values, self.clean, self.corrupt)
        return normalized_patching_metric(self.values, self.corrupt, self.clean)

    def to_dataframe(self):
        """One row per (index, example): the axes, ``example``, ``metric`` and ``normalized``; with a ``pos`` axis
        and text inputs, each run's token at that position (``clean_token``, ``corrupt_token``)."""
        import pandas as pd

        grids = torch.meshgrid(
            *[torch.tensor(self.labels[a]) for a in self.axes], torch.arange(self.values.shape[-1]), indexing="ij"
        )
        data = {a: g.flatten().numpy() for a, g in zip((*self.axes, "example"), grids)}
        if "pos" in self.axes and self.tokens:
            for run, rows in self.tokens.items():
                data[f"{run}_token"] = [rows[ex][pos] for pos, ex in zip(data["pos"].tolist(), data["example"].tolist())]
        data["metric"] = self.values.flatten().cpu().numpy()
        data["normalized"] = self.normalized().flatten().cpu().numpy()
        return pd.DataFrame(data)


def canonical_layout(act: Tensor, act_name: str) -> Tensor:
    """A view with positions on dim 1 (and heads on dim 2 for head activations): pattern
    [b, head, q, k] -> [b, q, head, k]. Writing into the view writes into ``act``."""
    return act.permute(0, 2, 1, 3) if act_name == "pattern" else act


def _crop(t: Tensor, n_pos: int, act_name: str) -> Tensor:
    """Source activation (canonical layout) cut to a (trimmed) run's length."""
    t = t[:, :n_pos]
    return t[..., :n_pos] if act_name == "pattern" else t


def _variants(index: Index, positions: list[int], heads: list[int]) -> tuple[Tensor, Tensor]:
    """(position, head) of each variant; -1 = all positions / all heads."""
    if index == "layer":
        return torch.tensor([-1]), torch.tensor([-1])
    if index == "layer_pos":
        return torch.tensor(positions), torch.full((len(positions),), -1)
    if index == "layer_head":
        return torch.full((len(heads),), -1), torch.tensor(heads)
    grid = torch.cartesian_prod(torch.tensor(positions), torch.tensor(heads))
    return grid[:, 0], grid[:, 1]


def activation_patch(
    model,
    clean: Tokens,
    corrupt: Optional[Tokens],
    metric: Metric,
    act_name: str = "resid_pre",
    *,
    index: Index = "layer_pos",
    direction: Direction = "denoise",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    alignment: Optional[Int[Tensor, "batch pos"]] = None,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
    tower: Optional[Literal["text", "vision"]] = None,
    source_model=None,
) -> PatchingResult:
    """Patch ``act_name`` at every index of the sweep and return the metric after each patch.

    Args:
        clean, corrupt: texts or tokens [batch, pos] (``tower="text"``), or images — PIL images or preprocessed
            pixels [batch, channel, H, W] — (``tower="vision"``); example b of one paired with example b of
            the other.
        metric: output embeddings [..., batch, d] -> [..., batch] (``return_type`` chooses the output).
        act_name: resid_pre | resid_mid | resid_post | attn_out | mlp_out | z | q | k | v | pattern.
        index: layer (the whole activation) | layer_pos | layer_head (all positions) | layer_pos_head.
            For ``pattern`` the position is the query position.
        direction: ``denoise`` runs corrupt with clean activations, ``noise`` the reverse
            (see :mod:`hooked_clip.analyses.pairs`).
        layers, positions, heads: subsets to sweep (default: all; positions of the patched run).
        alignment: [batch, pos of the patched run] -> position in the run the activation comes from (-1:
            no counterpart, result NaN). Needed when clean and corrupt differ in token length.
        batch_size: most rows (sequences) per forward pass; bounds memory.
        tower: which tower of a ``HookedCLIP`` to patch, ``"text"`` (the default) or ``"vision"`` (a tower
            passed as ``model`` is patched itself). Image-side positions are the ViT's (0 = class token, then
            the patches row by row: ``model.vision.position_labels()``); the metric then maps image
            embeddings to [..., batch] (e.g. ``similarity_metric(model, text_embeds)``).
        source_model: another checkpoint of the same architecture (a ``HookedCLIP`` or tower) on which the
            source run is recorded; the patched run stays on ``model``. ``corrupt=None`` then runs ``clean`` in
            both (denoising: ``clean`` on ``source_model`` patched into ``clean`` on ``model``); ``clean``/``corrupt``
            stays the result's wording (the source run is ``clean`` when denoising). A model differing in anything
            but weights is refused (:class:`~hooked_clip.errors.ArchitectureMismatchError`).

    Returns:
        :class:`PatchingResult` with ``values`` [*axes, batch] in the metric's units.
    """
    patched = get_tower(model, tower)
    source = source_tower(patched, source_model)
    corrupt = same_inputs(clean, corrupt, source_model)
    check_act_index(act_name, index, PATCHABLE, INDEX_AXES, HEAD_ACTS)
    check_count("batch_size", batch_size, what="rows per forward")
    if alignment is not None and act_name == "pattern":
        raise ValueError("alignment is not supported for attention patterns (both axes are positions).")
    if alignment is not None and patched.name == "vision":
        raise ValueError("alignment is for texts of different token lengths; two images always share the patch grid.")
    pair = RunPair.build(patched, clean, corrupt, direction, same_pooling=alignment is None,
                         hint=_ALIGNMENT_HINT)
    layer_list = checked_indices("layers", layers, patched.cfg.n_layers)
    return _sweep(patched, pair, metric, [(act_name, l) for l in layer_list], index, positions, heads, alignment,
                  return_type, batch_size, progress, ("layer", layer_list), act_name, source)


def hidden_state_patch(
    model,
    clean: Tokens,
    corrupt: Optional[Tokens],
    metric: Metric,
    *,
    direction: Direction = "denoise",
    states: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    alignment: Optional[Int[Tensor, "batch pos"]] = None,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
    source_model=None,
) -> PatchingResult:
    """Patch every hidden state (state, position), the paper's unit (transformers' ``hidden_states``): state
    0 is the embeddings' output, state l the output of block l (1-indexed), state n_layers the residual
    entering ``ln_final``. One sweep of the engine (the runs are recorded once); the same numbers as
    :func:`activation_patch` of ``resid_pre`` (states 0..n_layers-1) and of the last block's ``resid_post``.

    Returns a :class:`PatchingResult` with axes ("state", "pos") and ``act_name`` "hidden_state"; the other
    arguments (``source_model=`` and ``corrupt=None`` for patching across checkpoints included) are
    :func:`activation_patch`'s.
    """
    text = get_tower(model, "text")
    source = source_tower(text, source_model)
    corrupt = same_inputs(clean, corrupt, source_model)
    check_count("batch_size", batch_size, what="rows per forward")
    pair = RunPair.build(text, clean, corrupt, direction, same_pooling=alignment is None,
                         hint=_ALIGNMENT_HINT)
    n_layers = text.cfg.n_layers
    state_list = checked_indices("states", states, n_layers + 1)
    sites = [("resid_pre", l) if l < n_layers else ("resid_post", n_layers - 1) for l in state_list]
    return _sweep(text, pair, metric, sites, "layer_pos", positions, None, alignment, return_type, batch_size,
                  progress, ("state", state_list), "hidden_state", source)


def _sweep(tower: Tower, pair: RunPair, metric: Metric, sites: list[tuple[str, int]], index: Index, positions, heads,
           alignment, return_type: str, batch_size: int, progress: bool, first_axis: tuple[str, list[int]],
           label: str, source: Tower) -> PatchingResult:
    """The plan for the engine: patch activation ``act`` of block ``layer`` for every (act, layer) site at
    every index; one BaseRun and one source run (on ``source``: ``tower`` or another checkpoint's) for
    all sites."""
    names = [hook_name(act, layer) for act, layer in sites]
    # Per-position patches in a trimmed causal tower leave every earlier position unchanged: run only the
    # positions from the patched one on, with the earlier keys/values taken from the unpatched run.
    reuse_prefix = getattr(tower.cfg, "trims", False) and "pos" in index and all(act != "pattern" for act, _ in sites)
    base = BaseRun.record(tower, pair.base, return_type=return_type, first_layer=min(l for _, l in sites),
                          prefix_reuse=reuse_prefix, extra_names=names)
    with torch.inference_mode():
        source_out, source_cache = source.run_with_cache(pair.source, return_type=return_type, names_filter=sorted(set(names)))
    base_metric, source_metric = check_metric(metric, base.output), check_metric(metric, source_out)

    n_pos, n_ex = base.n_pos, base.output.shape[0]
    pos_list = checked_indices("positions", positions, n_pos) if "pos" in index else []
    head_list = checked_indices("heads", heads, tower.cfg.n_heads) if "head" in index else []
    device = base.output.device
    pos_v, head_v = (t.to(device) for t in _variants(index, pos_list, head_list))
    n_var = len(pos_v)
    if alignment is not None:
        alignment = check_alignment(alignment, n_ex, n_pos, source_cache[names[0]].shape[1], device)

    sources, missing, plans = [], {}, []
    for si, ((act, layer), name) in enumerate(zip(sites, names)):
        tgt, src = canonical_layout(base[name], act), canonical_layout(source_cache[name], act)
        if alignment is not None:
            src, missing[si] = align_positions(src, tgt, alignment)
        sources.append(src)
        needs = _needs_patch(src, tgt, pos_v, head_v, base.pool if base.trims else None)
        if layer == tower.cfg.n_layers - 1 and act in POOL_ONLY_LAST_LAYER and (pos_v >= 0).all() and base.pool is not None:
            needs &= pos_v[:, None] == base.pool[None, :]  # nothing else reaches the pooled output
        var_idx, ex_idx = needs.nonzero(as_tuple=True)
        offset = pos_v[var_idx] if reuse_prefix else torch.zeros_like(var_idx)
        plans.append(Plan(ex_idx, torch.full_like(ex_idx, layer), offset, (si * n_var + var_idx) * n_ex + ex_idx))
    plan = Plan.concat(plans)
    site, variant = plan.slot // (n_var * n_ex), plan.slot // n_ex % n_var  # per plan row
    row_pos, row_head = pos_v[variant], head_v[variant]

    def hooks(chunk: Chunk) -> Hooks:
        out, chunk_site = [], site[chunk.rows]
        for si in chunk_site.unique().tolist():
            idx = (chunk_site == si).nonzero().flatten()
            rows = chunk.rows[idx]
            out.append((names[si], _patch_hook(sources[si], idx, chunk.example[idx], row_pos[rows], row_head[rows],
                                               sites[si][0], chunk.offset[idx])))
        return out

    outputs = base.output.expand(len(sites), n_var, *base.output.shape).clone()
    execute(tower, base, plan, hooks, outputs, batch_size=batch_size, progress=progress, desc=f"patching {label}")
    values = check_metric(metric, outputs).float().cpu()
    for si, miss in missing.items():
        values[si][_missing_mask(miss, pos_v, head_v)] = float("nan")

    axis, axis_labels = first_axis
    axes = (axis, *INDEX_AXES[index][1:])
    shape = [len(sites)] + [len(pos_list)] * ("pos" in index) + [len(head_list)] * ("head" in index) + [n_ex]
    labels = {axis: axis_labels, "pos": pos_list, "head": head_list}
    clean_m, corrupt_m = pair.clean_and_corrupt(base_metric, source_metric)
    return PatchingResult(values.reshape(shape), axes, {a: labels[a] for a in axes}, label, pair.direction,
                          clean_m.float().cpu(), corrupt_m.float().cpu(),
                          tokens=pair.str_tokens(tower, patched_only=alignment is not None) if "pos" in index else None)


def align_positions(src: Tensor, tgt: Tensor, alignment: Tensor) -> tuple[Tensor, Tensor]:
    """Source activations moved into the patched run's positions; positions without a counterpart keep
    the patched run's own value (so they are never patched) and are returned as a mask [batch, pos]."""
    missing = alignment < 0
    idx = alignment.clamp(min=0)
    gathered = src[torch.arange(src.shape[0], device=src.device)[:, None], idx]
    keep = missing.view(*missing.shape, *([1] * (tgt.ndim - 2)))
    return torch.where(keep, tgt, gathered), missing


def _missing_mask(missing: Tensor, pos_v: Tensor, head_v: Tensor) -> Tensor:
    """[variant, batch]: True where the variant patches a position without counterpart."""
    if (pos_v < 0).all():  # all-position patches: NaN only if every position is missing
        return missing.all(dim=1)[None, :].expand(len(pos_v), -1).cpu()
    return missing[:, pos_v].T.cpu()  # values live on the CPU


def _needs_patch(src: Tensor, tgt: Tensor, pos_v: Tensor, head_v: Tensor, pool: Optional[Tensor]) -> Tensor:
    """[variant, batch]: whether patching can change the output. Not when the patched value equals the
    value it replaces (bitwise) nor, in a trimmed causal tower, when the position is after the pool."""
    differs = src != tgt  # canonical layout: [batch, pos, (head,) ...]
    if (head_v < 0).all() and (pos_v < 0).all():  # the whole activation
        return differs.flatten(1).any(-1)[None, :].expand(len(pos_v), -1).clone()
    if (head_v < 0).all():  # per position
        per = differs.flatten(2).any(-1)  # [batch, pos]
        needs = per[:, pos_v].T
    elif (pos_v < 0).all():  # per head, all positions
        per = differs.transpose(1, 2).flatten(2).any(-1)  # [batch, head]
        needs = per[:, head_v].T
    else:
        per = differs.flatten(3).any(-1)  # [batch, pos, head]
        needs = per[:, pos_v, head_v].T
    if pool is not None and (pos_v >= 0).all():
        needs = needs & (pos_v[:, None] <= pool[None, :])
    return needs


def _patch_hook(src: Tensor, idx: Tensor, examples: Tensor, pos: Tensor, head: Tensor, act: str, offset: Tensor):
    """Hook writing, into batch row idx[n], the source activation of example examples[n] at (pos[n],
    head[n]) (-1: all); row idx[n] holds positions from ``offset[n]`` on (prefix reuse), the source all."""

    def hook(activation: Tensor, hook) -> Tensor:
        view = canonical_layout(activation, act)
        whole = (pos < 0).all()  # all positions (then the offset is 0)
        # cut to the run's length: needed where positions (or a pattern's keys) are written whole; a
        # pattern is never run with a prefix, so its run starts at position 0
        source = _crop(src, view.shape[1], act) if whole or act == "pattern" else src
        if whole:
            if (head < 0).all():
                view[idx] = source[examples]
            else:
                view[idx, :, head] = source[examples, :, head]
        elif (head < 0).all():
            view[idx, pos - offset] = source[examples, pos]
        else:
            view[idx, pos - offset, head] = source[examples, pos, head]
        return activation

    return hook
