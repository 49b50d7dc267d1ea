"""Exact edge patching: the reference EAP and EAP-IG estimate.

Patching edge ``sender -> receiver`` is path patching of that one edge (:mod:`hooked_clip.analyses.path_patching`
with one sender and one receiver): the base run, with the receiver's input — and nothing else — changed by the
sender's output difference between the runs (Δ = source - base); everything downstream recomputed. Each
(edge, example) is one row of the batched engine (:mod:`hooked_clip.analyses.engine`), started at the
receiver's block from the cached base run; in a causal tower that pools at EOT a row runs only from the first
position where Δ is non-zero (the keys and values before it are the base run's), and rows whose Δ is zero
up to their pooling position are not run (their effect is exactly 0).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from hooked_clip.analyses.edges.graph import EdgeGraph, sender_hook_names
from hooked_clip.analyses.edges.scores import EdgeScores, edge_pair, sender_deltas
from hooked_clip.analyses.engine import BaseRun, Chunk, Hooks, Plan, execute
from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.pairs import Direction, Tokens
from hooked_clip.analyses.validation import check_alignment
from hooked_clip.names import act_name
from hooked_clip.tower import get_tower


def edge_patch(
    model,
    clean: Tokens,
    corrupt: Tokens,
    metric: Metric,
    edges: Union[None, Sequence[str], Tensor] = None,
    *,
    direction: Direction = "denoise",
    alignment=None,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
    tower: Optional[Literal["text", "vision"]] = None,
) -> EdgeScores:
    """Exact effect on ``metric`` of patching each edge alone (see the module docstring).

    ``edges``: ``"sender->receiver"`` names or indices into ``EdgeGraph.of(tower)`` (default: every edge).
    Other arguments as in :func:`~hooked_clip.analyses.edges.scores.edge_attribution`. Returns
    :class:`EdgeScores` over the chosen edges, ``values`` [edge, batch] = patched metric - base metric.
    """
    tw = get_tower(model, tower)
    graph = EdgeGraph.of(tw)
    if edges is not None:
        idx = graph.index(list(edges)) if not isinstance(edges, Tensor) else edges.long().cpu()
        if idx.numel() == 0:
            raise ValueError("edges is empty; name at least one edge, or pass edges=None for all of them.")
        graph = graph.subset(idx)
    pair = edge_pair(tw, clean, corrupt, direction, alignment)
    L = tw.cfg.n_layers
    rec = [graph.receivers[j] for j in graph.edges[:, 1].tolist()]
    start = torch.tensor([min(r.layer, L - 1) for r in rec], dtype=torch.long)
    heads = any(r.kind == "head" for r in rec)
    with tw.options(use_split_qkv_input=heads):
        first = int(start.min())
        base = BaseRun.record(tw, pair.base, return_type=return_type, first_layer=first,
                              prefix_reuse=bool(getattr(tw.cfg, "trims", False)), extra_names=sender_hook_names(L))
        with torch.inference_mode():
            src_out, src = tw.run_with_cache(pair.source, return_type=return_type, names_filter=sender_hook_names(L))
        if alignment is not None:
            alignment = check_alignment(alignment, base.output.shape[0], base.n_pos,
                                        src[act_name("resid_pre", 0)].shape[1], base.output.device)
        with torch.inference_mode():
            delta = sender_deltas(tw, graph, base.cache, src, alignment)  # [S, b, pos, d]
        device = base.output.device
        plan, edge_of = _plan(graph, delta, base, start.to(device))
        outputs = base.output.expand(len(graph), *base.output.shape).clone()
        rec_of_row = graph.edges[:, 1].to(device)[edge_of]
        snd_of_row = graph.edges[:, 0].to(device)[edge_of]

        def hooks(chunk: Chunk) -> Hooks:
            return _edge_hooks(graph, rec_of_row[chunk.rows], delta[snd_of_row[chunk.rows], chunk.example], chunk.offset)

        execute(tw, base, plan, hooks, outputs, batch_size=batch_size, progress=progress, desc="edge patching")
    base_m = check_metric(metric, base.output)
    values = (check_metric(metric, outputs) - base_m).float().cpu()
    clean_m, corrupt_m = pair.clean_and_corrupt(base_m, check_metric(metric, src_out))
    return EdgeScores(values, graph, "exact", direction, base_m.float().cpu(), clean_m.float().cpu(),
                      corrupt_m.float().cpu(), extra={"rows_run": len(plan)})


def _plan(graph: EdgeGraph, delta: Tensor, base: BaseRun, start: Tensor) -> tuple[Plan, Tensor]:
    """One row per (edge, example) whose Δ can reach the output; returns the plan and each row's edge."""
    n_ex = delta.shape[1]
    device = delta.device
    nz = delta.ne(0).any(-1)  # [S, b, pos]
    if base.trims:  # positions after the pooling position never reach the output
        nz &= torch.arange(nz.shape[-1], device=device) <= base.pool[None, :, None]
    changes = nz.any(-1)  # [S, b]
    offset = nz.float().argmax(-1) if base.prefix_reuse else torch.zeros_like(changes, dtype=torch.long)
    snd = graph.edges[:, 0].to(device)
    edge = torch.arange(len(graph), device=device).repeat_interleave(n_ex)
    example = torch.arange(n_ex, device=device).repeat(len(graph))
    run = changes[snd[edge], example]
    edge, example = edge[run], example[run]
    return Plan(example, start[edge], offset[snd[edge], example].long(), edge * n_ex + example), edge


def _edge_hooks(graph: EdgeGraph, receiver: Tensor, delta: Tensor, offset: Tensor) -> Hooks:
    """Hooks adding row n's sender change ``delta[n]`` (positions from ``offset[n]``) to its receiver's input."""
    hooks: Hooks = []
    width = delta.shape[1]
    cols = offset[:, None] + torch.arange(width, device=delta.device)
    shifted = delta[torch.arange(len(delta), device=delta.device)[:, None], cols.clamp(max=width - 1)]
    shifted = shifted * (cols < width)[..., None]  # row n's position offset + i at index i

    def rows_of(js) -> Tensor:
        return torch.isin(receiver, torch.tensor(js, device=receiver.device)).nonzero().flatten()

    by_site: dict = {}
    for j in receiver.unique().tolist():
        r = graph.receivers[j]
        site = (r.kind, r.layer, r.qkv)
        by_site.setdefault(site, []).append(j)
    head_of = torch.tensor([r.head for r in graph.receivers], device=receiver.device)
    for (kind, layer, qkv), js in by_site.items():
        idx = rows_of(js)
        d = shifted[idx]
        if kind == "head":
            head = head_of[receiver[idx]]

            def add_head(act, hook, idx=idx, d=d, head=head):
                act[idx, :, head] += d[:, : act.shape[1]]
                return act

            hooks.append((act_name(f"{qkv}_input", layer), add_head))
        elif kind == "mlp":  # the MLP's input alone: add to resid_mid, take it back out of resid_post
            def add_mid(act, hook, idx=idx, d=d):
                act[idx] += d[:, : act.shape[1]]
                return act

            def sub_post(act, hook, idx=idx, d=d):
                act[idx] -= d[:, : act.shape[1]]
                return act

            hooks += [(act_name("resid_mid", layer), add_mid), (act_name("resid_post", layer), sub_post)]
        else:
            def add_pooled(act, hook, idx=idx, d=d):
                act[idx] += d[:, : act.shape[1]]
                return act

            hooks.append((act_name("resid_post", graph.n_layers - 1), add_pooled))
    return hooks


__all__ = ["edge_patch"]
