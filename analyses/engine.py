"""The batched patching engine: many patched re-runs of one cached base run, as few forwards as exactness
allows. Every analysis that re-runs the text tower with interventions (activation patching, the CTE, ROME
tracing, path patching) is a plan for this engine plus a hook factory; none builds its own batches.

Contract
--------
- :class:`BaseRun` — the run being patched, recorded once: its pooling positions, its output, and from
  its cache the residual stream entering each block (and, for prefix reuse, each block's keys and values).
- :class:`Plan` — the rows to run. Row i re-runs base example ``example[i]`` from block ``layer[i]`` on
  positions ``offset[i]:`` and its output goes to ``slot[i]`` of the caller's output buffer. An offset > 0
  reuses the base run's keys and values of the earlier positions; it is exact only in a causal tower when
  the row's interventions change nothing before that position, which the planner must guarantee.
- ``hooks(chunk)`` — the intervention: given a :class:`Chunk` (the rows of one forward), the forward hooks
  that apply each row's change. In a chunk, row n sits at batch index n in every block from its own start
  layer on (rows are ordered by start layer and join the batch at their layer), so a hook of block l may
  touch only rows whose ``layer <= l``.
- :func:`execute` — runs a plan: rows grouped by offset, ordered by pooling position (similar lengths
  share a forward), cut into chunks of at most ``batch_size`` rows. Each chunk is ONE forward from its
  smallest start layer: at every block the rows that start there join the batch, with the base run's
  residual. Results are scattered into ``outputs[slot]``; the metric and labels belong to the caller.

Runs under ``torch.inference_mode`` (no autograd graph). Device-agnostic: index building is on the
device of the base run, and the only host reads are one per chunk (its start-layer boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.components import KeyValuePrefix
from hooked_clip.hook_names import act_name
from hooked_clip.text import HookedCLIPText

Hooks = list[tuple[str, Callable]]


@dataclass
class BaseRun:
    """A recorded run of the text tower: ``tokens`` [batch, pos] (cut after the last pooling position),
    ``pool`` [batch], ``output`` [batch, ...] (the tower's output for ``return_type``) and ``cache`` (the
    residual entering blocks ``first_layer``.., and their keys/values when ``prefix_reuse``)."""

    tokens: Tensor
    pool: Tensor
    output: Tensor
    cache: dict
    return_type: str
    first_layer: int
    prefix_reuse: bool

    @classmethod
    def record(cls, text: HookedCLIPText, tokens: Tensor, *, return_type: str = "normalized", first_layer: int = 0,
               prefix_reuse: bool = False, extra_names: Iterable[str] = (), hooks: Hooks = ()) -> "BaseRun":
        """Run ``tokens`` once (with ``hooks``, e.g. ROME's noise) and keep what the engine needs, plus
        ``extra_names`` (the activations the caller patches from or compares against)."""
        names = {act_name("resid_pre", l) for l in range(first_layer, text.cfg.n_layers)} | set(extra_names)
        if prefix_reuse:
            names |= {act_name(kv, l) for l in range(first_layer, text.cfg.n_layers) for kv in "kv"}
        with torch.inference_mode(), text.hooks(fwd_hooks=list(hooks)):
            output, cache = text.run_with_cache(tokens, return_type=return_type, names_filter=sorted(names))
        pool = text.pool_positions(tokens)
        return cls(tokens, pool, output, cache.cache_dict, return_type, first_layer, prefix_reuse)

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
    (ascending: row n is at batch index n from its layer on) and the shared ``offset``."""

    rows: Tensor
    example: Tensor
    layer: Tensor
    offset: int

    def starting_at(self, layer: int) -> Tensor:
        """Batch indices of the rows whose forward starts at block ``layer``."""
        return (self.layer == layer).nonzero().flatten()

    def present_at(self, layer: int) -> Tensor:
        """Batch indices of the rows in the batch at block ``layer`` (started there or before)."""
        return (self.layer <= layer).nonzero().flatten()


def execute(
    text: HookedCLIPText,
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
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size (rows per forward) must be a positive integer, got {batch_size!r}.")
    if len(plan) and int(plan.layer.min()) < base.first_layer:
        raise ValueError(f"the plan starts rows at block {int(plan.layer.min())} but the base run was recorded "
                         f"from block {base.first_layer}.")
    if len(plan) and int(plan.offset.max()) > 0 and not base.prefix_reuse:
        raise ValueError("the plan reuses prefixes but the base run was recorded without prefix_reuse=True.")
    flat = outputs.view(-1, *outputs.shape[-1:]) if outputs.ndim > 1 else outputs.view(-1)
    bar = tqdm(total=len(plan), disable=not progress, desc=desc)
    with torch.inference_mode():
        for chunk in _chunks(base, plan, batch_size):
            flat[plan.slot[chunk.rows]] = _run_chunk(text, base, chunk, hooks(chunk))
            bar.update(len(chunk.rows))
    bar.close()
    return outputs


def _chunks(base: BaseRun, plan: Plan, batch_size: int):
    """Chunks of rows with one offset, similar lengths together, each ordered by start layer."""
    n_ctx = int(base.tokens.shape[1]) + 1
    order = torch.argsort(plan.offset * n_ctx + base.pool[plan.example], stable=True)
    offsets = plan.offset[order]
    for offset in torch.unique_consecutive(offsets).tolist():
        group = order[offsets == offset]
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            rows = rows[torch.argsort(plan.layer[rows], stable=True)]
            yield Chunk(rows, plan.example[rows], plan.layer[rows], int(offset))


def _run_chunk(text: HookedCLIPText, base: BaseRun, chunk: Chunk, hooks: Hooks) -> Tensor:
    """One forward: blocks from the chunk's first start layer on, rows joining at their own layer."""
    n_layers, o = text.cfg.n_layers, chunk.offset
    pool = base.pool[chunk.example] - o
    width = int(pool.max()) + 1 if text.cfg.trims else base.tokens.shape[1] - o
    first = int(chunk.layer[0])
    # rows present at each block: the start layers are sorted, so rows with layer <= l are a prefix
    present = torch.searchsorted(chunk.layer, torch.arange(first, n_layers, device=chunk.layer.device), right=True).tolist()
    resid = None
    with text.hooks(fwd_hooks=hooks):
        for layer, n in zip(range(first, n_layers), present):
            have = 0 if resid is None else resid.shape[0]
            if n > have:
                joining = base[act_name("resid_pre", layer)][chunk.example[have:n], o : o + width]
                resid = joining if resid is None else torch.cat([resid, joining])
            prefix = None
            if o:
                ex = chunk.example[:n]
                prefix = KeyValuePrefix(base[act_name("k", layer)][ex, :o], base[act_name("v", layer)][ex, :o])
            resid = text.blocks[layer](resid, prefix)
        return text.read_out(resid, pool, base.return_type)


__all__ = ["BaseRun", "Chunk", "Plan", "execute"]
