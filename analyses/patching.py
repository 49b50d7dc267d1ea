"""Batched activation patching over layer x position, layer x head and layer x position x head.

Semantics are TransformerLens's ``transformer_lens.patching``: *denoising* runs the corrupt input and
patches in the clean activation at one index; *noising* runs the clean input and patches in the corrupt
one. Numbers are the same as a one-forward-per-patch loop; the engine is faster because it

- runs many patched variants per forward (batch expansion), in chunks of at most ``batch_size`` rows;
- starts every patched forward at the patched layer from the cached unpatched residual
  (``start_at_layer``), so the earlier layers are computed once;
- for per-position patches in a causal tower, runs only the positions from the patched one on, reading
  the earlier positions' keys and values from the unpatched run (``prefix_kv``): they cannot change;
- skips, exactly, every (variant, example) whose patch cannot change anything, and reports the unpatched
  value for it: the patched state equals the state it replaces (e.g. the shared prefix of a minimal pair
  under the causal mask); it lies after the example's pooling position (a causal tower reads nothing from
  there); or it is a last-block residual/MLP-output state away from the pooling position;
- inherits EOT trimming from the model.

The metric maps output embeddings [..., batch, d_proj] to [..., batch] (see ``hooked_clip.analyses.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.metrics import Metric, check_metric, normalized_patching_metric
from hooked_clip.text import HookedCLIPText

POSITIONAL_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_ACTS = ("z", "q", "k", "v", "pattern")
ACT_HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre", "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post", "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out", "z": "blocks.{}.attn.hook_z", "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k", "v": "blocks.{}.attn.hook_v", "pattern": "blocks.{}.attn.hook_pattern",
}
# In the last block these activations reach the output only through their own position, so only the
# pooling position can matter (ln_final is per position and pooling reads one position).
POOL_ONLY_LAST_LAYER = ("resid_mid", "resid_post", "mlp_out")
INDEX_AXES = {"layer": ("layer",), "layer_pos": ("layer", "pos"), "layer_head": ("layer", "head"), "layer_pos_head": ("layer", "pos", "head")}

Index = Literal["layer", "layer_pos", "layer_head", "layer_pos_head"]
Tokens = Union[str, Sequence[str], Int[Tensor, "batch pos"]]


@dataclass
class PatchingResult:
    """Metric after each patch, labelled.

    ``values``: [*axes, batch] (e.g. [layer, pos, batch]); ``axes`` names the leading axes and
    ``labels`` their index values (layer numbers are 0-indexed blocks). ``clean``/``corrupt``: [batch]
    metric of the unpatched runs. NaN marks patches that do not exist (a position without a counterpart
    under ``alignment``).
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[int]]
    act_name: str
    direction: str
    clean: Tensor
    corrupt: Tensor
    extra: dict = field(default_factory=dict)

    def normalized(self) -> Tensor:
        """Fraction of the gap moved towards the run the activations come from: denoising
        (patched - corrupt) / (clean - corrupt); noising (patched - clean) / (corrupt - clean)."""
        if self.direction == "denoise":
            return normalized_patching_metric(self.values, self.clean, self.corrupt)
        return normalized_patching_metric(self.values, self.corrupt, self.clean)

    def to_dataframe(self):
        """One row per (index, example): the axes, ``example``, ``metric`` and ``normalized``."""
        import pandas as pd

        grids = torch.meshgrid(
            *[torch.tensor(self.labels[a]) for a in self.axes], torch.arange(self.values.shape[-1]), indexing="ij"
        )
        data = {a: g.flatten().numpy() for a, g in zip((*self.axes, "example"), grids)}
        data["metric"] = self.values.flatten().cpu().numpy()
        data["normalized"] = self.normalized().flatten().cpu().numpy()
        return pd.DataFrame(data)


def _text(model) -> HookedCLIPText:
    text = getattr(model, "text", model)
    if not isinstance(text, HookedCLIPText):
        raise TypeError(f"expected a HookedCLIP or HookedCLIPText, got {type(model).__name__}.")
    return text


def aligned_runs(text: HookedCLIPText, clean: Tokens, corrupt: Tokens, direction: str) -> tuple[Tensor, Tensor]:
    """(base run, source run) token ids for a paired analysis, cut after the last EOT: ``denoise`` runs
    ``corrupt`` with ``clean`` activations, ``noise`` the reverse. Both must pool at the same positions."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
    clean_t, corrupt_t = text.as_tokens(clean), text.as_tokens(corrupt)
    pool = text.pool_positions(clean_t)
    if clean_t.shape[0] != corrupt_t.shape[0] or not torch.equal(pool, text.pool_positions(corrupt_t)):
        raise ValueError("clean and corrupt must have the same number of examples and the same pooling (EOT) "
                         "position per example; align the sentences first.")
    width = int(pool.max()) + 1
    base, src = (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)
    return base[:, :width], src[:, :width]


def _canon(act: Tensor, act_name: str) -> Tensor:
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


def _validate(text, act_name, index, direction, batch_size):
    if act_name not in ACT_HOOKS:
        raise ValueError(f"unknown activation {act_name!r}; patchable: {sorted(ACT_HOOKS)}.")
    if index not in INDEX_AXES:
        raise ValueError(f"index must be one of {sorted(INDEX_AXES)}, got {index!r}.")
    if "head" in index and act_name not in HEAD_ACTS:
        raise ValueError(f"{act_name!r} has no head axis; patch per head with one of {HEAD_ACTS}.")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (rows per forward) must be a positive integer, got {batch_size!r}.")


def _checked_list(name: str, values, n: int) -> list[int]:
    values = list(range(n)) if values is None else [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise ValueError(f"{name} {bad} are outside 0..{n - 1}.")
    if not values:
        raise ValueError(f"{name} is empty.")
    return values


def activation_patch(
    model,
    clean: Tokens,
    corrupt: Tokens,
    metric: Metric,
    act_name: str = "resid_pre",
    *,
    index: Index = "layer_pos",
    direction: Literal["denoise", "noise"] = "denoise",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    alignment: Optional[Int[Tensor, "batch pos"]] = None,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
) -> PatchingResult:
    """Patch ``act_name`` at every index of the sweep and return the metric after each patch.

    Args:
        clean, corrupt: texts or tokens [batch, pos], example b of one paired with example b of the other.
        metric: output embeddings [..., batch, d] -> [..., batch] (``return_type`` chooses the output).
        act_name: resid_pre | resid_mid | resid_post | attn_out | mlp_out | z | q | k | v | pattern.
        index: layer (the whole activation) | layer_pos | layer_head (all positions) | layer_pos_head.
            For ``pattern`` the position is the query position.
        layers, positions, heads: subsets to sweep (default: all; positions of the patched run).
        alignment: [batch, pos of the patched run] -> position in the run the activation comes from (-1:
            no counterpart, result NaN). Needed when clean and corrupt differ in token length.
        batch_size: most rows (sequences) per forward pass; bounds memory.

    Returns:
        :class:`PatchingResult` with ``values`` [*axes, batch] in the metric's units.
    """
    text = _text(model)
    _validate(text, act_name, index, direction, batch_size)
    clean_t = text.as_tokens(clean)
    corrupt_t = text.as_tokens(corrupt)
    if clean_t.shape[0] != corrupt_t.shape[0]:
        raise ValueError(f"clean has {clean_t.shape[0]} examples but corrupt has {corrupt_t.shape[0]}.")
    source_t, target_t = (clean_t, corrupt_t) if direction == "denoise" else (corrupt_t, clean_t)
    source_pool, target_pool = text.pool_positions(source_t), text.pool_positions(target_t)
    if alignment is None and not torch.equal(source_pool, target_pool):
        rows = (source_pool != target_pool).nonzero().flatten().tolist()
        raise ValueError(
            f"clean and corrupt differ in token length at examples {rows[:10]}; positions do not correspond. "
            "Pass alignment=[batch, pos] mapping each position of the patched run to its counterpart."
        )
    if alignment is not None and act_name == "pattern":
        raise ValueError("alignment is not supported for attention patterns (both axes are positions).")

    layer_list = _checked_list("layers", layers, text.cfg.n_layers)
    hook_names = {l: ACT_HOOKS[act_name].format(l) for l in layer_list}
    start_names = [f"blocks.{l}.hook_resid_pre" for l in layer_list]
    # Per-position patches in a trimmed causal tower leave every earlier position unchanged: run only the
    # positions from the patched one on, with the earlier keys/values taken from the unpatched run.
    reuse_prefix = text.cfg.trims and "pos" in index and act_name != "pattern"
    kv_names = [f"blocks.{j}.attn.hook_{x}" for j in range(min(layer_list), text.cfg.n_layers) for x in "kv"]
    with torch.no_grad():
        source_out, source_cache = text.run_with_cache(
            source_t, return_type=return_type, names_filter=list(hook_names.values()))
        target_out, target_cache = text.run_with_cache(
            target_t, return_type=return_type,
            names_filter=sorted(set(hook_names.values()) | set(start_names) | (set(kv_names) if reuse_prefix else set())))
    source_metric = check_metric(metric, source_out)
    target_metric = check_metric(metric, target_out)

    n_pos = target_cache[start_names[0]].shape[1]
    pos_list = _checked_list("positions", positions, n_pos) if "pos" in index else []
    head_list = _checked_list("heads", heads, text.cfg.n_heads) if "head" in index else []
    pos_v, head_v = (t.to(source_t.device) for t in _variants(index, pos_list, head_list))
    n_var, n_ex = len(pos_v), source_t.shape[0]

    if alignment is not None:
        alignment = torch.as_tensor(alignment, device=source_t.device)
        if alignment.shape != (n_ex, n_pos):
            raise ValueError(f"alignment must have shape [batch, pos] = {(n_ex, n_pos)}, got {tuple(alignment.shape)}.")
        n_src = source_cache[hook_names[layer_list[0]]].shape[1]
        if int(alignment.max()) >= n_src or int(alignment.min()) < -1:
            raise ValueError(f"alignment values must lie in -1..{n_src - 1} (source positions; -1 = none).")

    values = torch.empty(len(layer_list), n_var, n_ex)
    bar = tqdm(total=len(layer_list) * n_var * n_ex, disable=not progress, desc=f"patching {act_name}")
    for li, layer in enumerate(layer_list):
        name = hook_names[layer]
        tgt = _canon(target_cache[name], act_name)
        src = _canon(source_cache[name], act_name)
        src, missing = _align(src, tgt, alignment) if alignment is not None else (src, None)
        needs = _needs_patch(src, tgt, pos_v, head_v, target_pool if text.cfg.trims else None)
        if layer == text.cfg.n_layers - 1 and act_name in POOL_ONLY_LAST_LAYER and (pos_v >= 0).all():
            needs &= pos_v[:, None] == target_pool[None, :]  # nothing else reaches the pooled output
        outputs = target_out.unsqueeze(0).repeat(n_var, *([1] * target_out.ndim))
        var_idx, ex_idx = needs.nonzero(as_tuple=True)
        bar.update(n_var * n_ex - len(var_idx))
        # similar lengths share a chunk (less padding); with prefix reuse a chunk has one patched position
        prefix = pos_v[var_idx] if reuse_prefix else torch.zeros_like(var_idx)
        order = torch.argsort(prefix * (text.cfg.n_ctx + 1) + target_pool[ex_idx], stable=True)
        var_idx, ex_idx, prefix = var_idx[order], ex_idx[order], prefix[order]
        resid = target_cache[f"blocks.{layer}.hook_resid_pre"]
        for offset in prefix.unique().tolist():
            group = (prefix == offset).nonzero().flatten()
            for start in range(0, len(group), batch_size):
                sel = group[start : start + batch_size]
                v, b = var_idx[sel], ex_idx[sel]
                kv = None
                if offset:
                    kv = [(target_cache[f"blocks.{j}.attn.hook_k"][b, :offset], target_cache[f"blocks.{j}.attn.hook_v"][b, :offset])
                          for j in range(layer, text.cfg.n_layers)]
                hook = _patch_hook(src, b, pos_v[v], head_v[v], act_name, offset)
                with torch.no_grad(), text.hooks(fwd_hooks=[(name, hook)]):
                    outputs[v, b] = text(resid[b, offset:], start_at_layer=layer, pool_positions=target_pool[b] - offset,
                                         prefix_kv=kv, return_type=return_type)
                bar.update(len(v))
        values[li] = check_metric(metric, outputs).float().cpu()
        if missing is not None:
            values[li][_missing_mask(missing, pos_v, head_v)] = float("nan")
    bar.close()

    axes = INDEX_AXES[index]
    shape = [len(layer_list)] + [len(pos_list)] * ("pos" in index) + [len(head_list)] * ("head" in index) + [n_ex]
    labels = {"layer": layer_list, "pos": pos_list, "head": head_list}
    clean_m, corrupt_m = (source_metric, target_metric) if direction == "denoise" else (target_metric, source_metric)
    return PatchingResult(values.reshape(shape), axes, {a: labels[a] for a in axes}, act_name, direction,
                          clean_m.float().cpu(), corrupt_m.float().cpu())


def _align(src: Tensor, tgt: Tensor, alignment: Tensor) -> tuple[Tensor, Tensor]:
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


def _patch_hook(src: Tensor, rows: Tensor, pos: Tensor, head: Tensor, act_name: str, offset: int = 0):
    """Hook writing, for chunk row n, the source activation of example rows[n] at (pos[n], head[n]);
    the run holds positions from ``offset`` on (prefix reuse), the source all of them."""
    n = torch.arange(len(rows), device=rows.device)

    def hook(act: Tensor, hook) -> Tensor:
        view = _canon(act, act_name)
        source = _crop(src, offset + view.shape[1], act_name)
        if (pos < 0).all():  # all positions (then offset is 0)
            if (head < 0).all():
                view[n] = source[rows]
            else:
                view[n, :, head] = source[rows, :, head]
        elif (head < 0).all():
            view[n, pos - offset] = source[rows, pos]
        else:
            view[n, pos - offset, head] = source[rows, pos, head]
        return act

    return hook
