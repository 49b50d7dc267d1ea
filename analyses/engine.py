"""The batched patching engine: many patched re-runs of one cached base run, as few forwards as exactness
allows. Every analysis that re-runs a tower with interventions (activation patching of either tower, the
CTE, ROME tracing, path patching) is a plan for this engine plus a hook factory; none builds its own batches.

Towers: any tower that implements the :class:`~hooked_clip.tower.Tower` contract (the text tower, the ViT
image tower, a family's own), never told apart by class. The engine uses of a tower only ``blocks``,
``cfg.n_layers``, ``cfg.trims``, ``run_with_cache``, ``hooks``, ``pool_positions(input)`` (the one position each
row's output reads, or None when pooling reads all), ``key_mask(input)`` (the padding attention must never read,
or None) and ``read_out(resid, pool, return_type, key_mask)``; each block is called as
``block(resid, prefix, query_pos, key_mask=...)``. Padded batches of bidirectional towers (BERT/RoBERTa,
masked pre-LN towers) are exact: every row carries its example's key mask through every block and the
read-out (mean pooling skips the padding). A trimming tower (causal, EOT-pooled: ``cfg.trims``) runs rows only up to their pooling
position and can reuse key/value prefixes; an image tower attends bidirectionally, so neither applies there
(every patched row runs every position from its block on).

Contract
--------
- :class:`BaseRun` — the run being patched, recorded once: its pooling positions, its output, and from
  its cache the residual stream entering each block (and, for prefix reuse, each block's keys and values).
- :class:`Plan` — the rows to run. Row i re-runs base example ``example[i]`` from block ``layer[i]`` on
  positions ``offset[i]:`` and its output goes to ``slot[i]`` of the caller's output buffer. An offset > 0
  reuses the base run's keys and values of the earlier positions; it is exact only in a causal tower when
  the row's interventions change nothing before that position, which the planner must guarantee. Rows of
  different offsets share forwards.
- ``hooks(chunk)`` — the intervention: given a :class:`Chunk` (the rows of one forward), the forward hooks
  that apply each row's change. In a chunk, row n sits at batch index n in every block from its own start
  layer on (rows are ordered by start layer and join the batch at their layer), so a hook of block l may
  touch only rows whose ``layer <= l``, and row n's position p is at index ``p - chunk.offset[n]``.
- :func:`execute` — runs a plan: rows sorted by how many positions they run (similar lengths share a
  forward, whatever their offsets: each row reads its own prefix), cut into chunks of at most
  ``batch_size`` rows in which no row runs fewer than ``PAD_RATIO`` (70%) of the longest row's positions (at
  most 30% padding). Each chunk is ONE forward from its
  smallest start layer: at every block the rows that start there join the batch, with the base run's
  residual. The last block computes only each row's pooling position (keys and values at all of them)
  unless a hook of the chunk touches that block after its keys and values. Results are scattered into ``outputs[slot]``; the metric and labels belong to the
  caller.

Runs under ``torch.inference_mode`` (no autograd graph). Device-agnostic: index building is on the
device of the base run; the host reads a few numbers per chunk (its widths, prefix lengths and start-layer
boundaries) and the plan's widths once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.validation import check_count
from hooked_clip.components import KeyValuePrefix
from hooked_clip.names import act_name
from hooked_clip.tower import Tower

Hooks = list[tuple[str, Callable]]


@dataclass
class BaseRun:
    """A recorded run of a tower: ``input`` (token ids [batch, pos], cut after the last pooling position, or
    pixels), ``pool`` [batch] (None when the output reads every position), ``n_pos`` (positions of the
    residual stream), ``output`` [batch, ...] (the tower's output for ``return_type``), ``cache`` (the
    residual entering blocks ``first_layer``.., and their keys/values when ``prefix_reuse``) and ``key_mask``
    [batch, n_pos] (True at keys attention never reads: the padding of a tower that masks it; None when no
    row has any), which every re-run row carries beside its prefix length."""

    input: Tensor
    pool: Optional[Tensor]
    n_pos: int
    output: Tensor
    cache: dict
    return_type: str
    first_layer: int
    prefix_reuse: bool
    trims: bool
    key_mask: Optional[Tensor] = None

    @classmethod
    def record(cls, tower: Tower, input: Tensor, *, return_type: str = "normalized", first_layer: int = 0,
               prefix_reuse: bool = False, extra_names: Iterable[str] = (), hooks: Hooks = ()) -> "BaseRun":
        """Run ``input`` once (with ``hooks``, e.g. ROME's noise) and keep what the engine needs, plus
        ``extra_names`` (the activations the caller patches from or compares against)."""
        trims = bool(getattr(tower.cfg, "trims", False))
        if prefix_reuse and not trims:
            raise ValueError("prefix reuse is exact only in a causal tower that trims after its pooling position.")
        names = {act_name("resid_pre", l) for l in range(first_layer, tower.cfg.n_layers)} | set(extra_names)
        if prefix_reuse:
            names |= {act_name(kv, l) for l in range(first_layer, tower.cfg.n_layers) for kv in "kv"}
        with torch.inference_mode(), tower.hooks(fwd_hooks=list(hooks)):
            output, cache = tower.run_with_cache(input, return_type=return_type, names_filter=sorted(names))
        n_pos = cache[act_name("resid_pre", first_layer)].shape[1]
        key_mask = tower.key_mask(input)
        if key_mask is not None:
            key_mask = key_mask[:, :n_pos]
        return cls(input, tower.pool_positions(input), n_pos, output, cache.cache_dict, return_type, first_layer,
                   prefix_reuse, trims, key_mask)

    def __getitem__(self, name: str) -> Tensor:
        return self.cache[name]


@dataclass
class Plan:
    """Rows to run (all [rows] int64 tensors on the base run's device); see the module docstring."""

    example: Tensor
    layer: Tensor
    offset: Tensor
    slot: Tensor

    def __post_init__(self):
        n = {len(self.example), len(self.layer), len(self.offset), len(self.slot)}
        if len(n) != 1:
            raise ValueError(f"plan arrays differ in length: {sorted(n)}.")

    def __len__(self) -> int:
        return len(self.example)

    @classmethod
    def concat(cls, plans: Sequence["Plan"]) -> "Plan":
        return cls(*(torch.cat([getattr(p, f) for p in plans]) for f in ("example", "layer", "offset", "slot")))


@dataclass
class Chunk:
    """The rows of one forward: ``rows`` (indices into the plan), their ``example``, start ``layer``
    (ascending: row n is at batch index n from its layer on) and ``offset`` (row n holds positions
    ``offset[n]:``, so position p is at index ``p - offset[n]``)."""

    rows: Tensor
    example: Tensor
    layer: Tensor
    offset: Tensor

    def starting_at(self, layer: int) -> Tensor:
        """Batch indices of the rows whose forward starts at block ``layer``."""
        return (self.layer == layer).nonzero().flatten()

    def present_at(self, layer: int) -> Tensor:
        """Batch indices of the rows in the batch at block ``layer`` (started there or before)."""
        return (self.layer <= layer).nonzero().flatten()


# Rows of one chunk run as many positions as its longest row: a chunk closes when a row would run fewer
# than PAD_RATIO of that (padding is at most 1 - PAD_RATIO = 30% of a row's positions in its chunk; fewer, larger
# forwards).
PAD_RATIO = 0.7

def execute(
    tower: Tower,
    base: BaseRun,
    plan: Plan,
    hooks: Callable[[Chunk], Hooks],
    outputs: Tensor,
    *,
    batch_size: int = 1024,
    progress: bool = True,
    desc: str = "patching",
) -> Tensor:
    """Run every row of ``plan`` and write its output into ``outputs[slot]`` (flat slot index into the
    leading dimensions of ``outputs``); returns ``outputs``."""
    check_count("batch_size", batch_size, what="rows per forward")
    if len(plan) and int(plan.layer.min()) < base.first_layer:
        raise ValueError(f"the plan starts rows at block {int(plan.layer.min())} but the base run was recorded "
                         f"from block {base.first_layer}.")
    if len(plan) and int(plan.offset.max()) > 0 and not base.prefix_reuse:
        raise ValueError("the plan reuses prefixes but the base run was recorded without prefix_reuse=True.")
    flat = outputs.view(-1, *outputs.shape[-1:]) if outputs.ndim > 1 else outputs.view(-1)
    bar = tqdm(total=len(plan), disable=not progress, desc=desc)
    with torch.inference_mode():
        for chunk in _chunks(base, plan, batch_size):
            flat[plan.slot[chunk.rows]] = _run_chunk(tower, base, chunk, hooks(chunk))
            bar.update(len(chunk.rows))
    bar.close()
    return outputs


def _chunks(base: BaseRun, plan: Plan, batch_size: int):
    """Chunks of rows of similar width (positions run), each ordered by start layer."""
    width = _width(base, plan.example, plan.offset)
    order = torch.argsort(width, descending=True, stable=True)
    widths = width[order].tolist()
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < batch_size and widths[stop] >= PAD_RATIO * widths[start]:
            stop += 1
        rows = order[start:stop]
        rows = rows[torch.argsort(plan.layer[rows], stable=True)]
        yield Chunk(rows, plan.example[rows], plan.layer[rows], plan.offset[rows])
        start = stop


def _width(base: BaseRun, example: Tensor, offset: Tensor) -> Tensor:
    """Positions a row runs: from its offset to its pooling position (a trimmed tower), else to the end."""
    return base.pool[example] - offset + 1 if base.trims else base.n_pos - offset


def _run_chunk(tower: Tower, base: BaseRun, chunk: Chunk, hooks: Hooks) -> Tensor:
    """One forward: blocks from the chunk's first start layer on, rows joining at their own layer."""
    n_layers, offset = tower.cfg.n_layers, chunk.offset
    width = int(_width(base, chunk.example, offset).max())
    columns = (offset[:, None] + torch.arange(width, device=offset.device)).clamp(max=base.n_pos - 1)  # padding: any
    n_prefix = int(offset.max())
    lengths = None if int(offset.min()) == n_prefix else offset
    pool = None if base.pool is None else base.pool[chunk.example] - offset  # index of each row's pooled position
    pooled_only = pool is not None and not _touches_last_block_queries(hooks, n_layers - 1)
    first = int(chunk.layer[0])
    # rows present at each block: the start layers are sorted, so rows with layer <= l are a prefix
    present = torch.searchsorted(chunk.layer, torch.arange(first, n_layers, device=chunk.layer.device), right=True).tolist()
    key_mask = None if base.key_mask is None else base.key_mask[chunk.example[:, None], columns]  # rows' padding
    resid = None
    with tower.hooks(fwd_hooks=hooks):
        for layer, n in zip(range(first, n_layers), present):
            have = 0 if resid is None else resid.shape[0]
            if n > have:
                ex = chunk.example[have:n, None]
                joining = base[act_name("resid_pre", layer)][ex, columns[have:n]]
                resid = joining if resid is None else torch.cat([resid, joining])
            prefix = None
            if n_prefix:
                ex = chunk.example[:n]
                prefix = KeyValuePrefix(base[act_name("k", layer)][ex, :n_prefix], base[act_name("v", layer)][ex, :n_prefix],
                                        None if lengths is None else lengths[:n])
            last = layer == n_layers - 1 and pooled_only
            resid = tower.blocks[layer](resid, prefix, pool if last else None,
                                        key_mask=None if key_mask is None else key_mask[:n])
        if pooled_only:
            pool = torch.zeros_like(pool)
        return tower.read_out(resid, pool, base.return_type, key_mask)


def _touches_last_block_queries(hooks: Hooks, last: int) -> bool:
    """Whether a hook could see or change what a pooled-row-only last block leaves out: any hook but those
    of earlier blocks and of the last block's input, keys and values."""
    allowed = {act_name(n, last) for n in ("resid_pre", "k", "v", "k_input", "v_input")}
    earlier = tuple(f"blocks.{l}." for l in range(last))
    return any(name not in allowed and not name.startswith(earlier) for name, _ in hooks)


__all__ = ["BaseRun", "Chunk", "Plan", "execute"]
