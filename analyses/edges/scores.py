"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024), on either tower.

The effect of patching edge u -> v (adding sender u's change between the runs to receiver v's input alone) is
estimated as

    Δ_u · ∂metric/∂input_v,    Δ_u = u's output on the source run - on the base run,

summed over positions and the residual width. EAP reads the gradient at the base run (one forward and one
backward give every edge); EAP-IG averages it over ``ig_steps`` points on the straight path from the base
run's input embeddings to the source run's (midpoint rule), as :func:`~hooked_clip.analyses.attribution.
attribution_patch` does with ``ig_steps``: one batched forward and backward. Both are *estimates* of the exact
edge effect (:func:`hooked_clip.analyses.edges.patch.edge_patch`); where the metric is linear in the receiver
inputs (a model without nonlinearity after them), EAP is exact.

Gradients at receivers: a head's q/k/v input is the tower's per-head input hook (``use_split_qkv_input``); an
MLP's input gradient is the gradient at ``resid_mid`` minus the one at ``resid_post`` (the MLP's branch alone);
the read-out's is the gradient at the last ``resid_post``.

Pairs of unequal token length: ``alignment`` [batch, pos of the patched run] -> position in the source run
(-1: no counterpart: the sender's change there is taken as 0), exactly as in ``activation_patch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import Tensor

from hooked_clip.analyses.edges.graph import QKV, EdgeGraph, sender_hook_names, sender_outputs
from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.pairs import Direction, RunPair, Tokens
from hooked_clip.analyses.patching import align_positions
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.validation import check_alignment, check_count
from hooked_clip.names import act_name
from hooked_clip.tower import get_tower

ALIGNMENT_HINT = "Pass alignment=[batch, pos] mapping each position of the patched run to its counterpart."
METHODS = ("eap", "eap-ig")


@dataclass(repr=False)
class EdgeScores(CompactRepr):
    """Per-edge effects on the metric: ``values`` [edge, batch] = metric with the edge patched - base metric
    (estimated by EAP / EAP-IG, or exact from :func:`edge_patch`); ``graph`` names the edges; ``base``
    [batch] the base run's metric, ``clean`` / ``corrupt`` [batch] the two runs' metrics."""

    values: Tensor
    graph: EdgeGraph
    method: str
    direction: str
    base: Tensor
    clean: Tensor
    corrupt: Tensor
    extra: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.graph.names

    def mean(self) -> Tensor:
        """[edge]: the effect averaged over the examples."""
        return self.values.mean(-1)

    def top(self, k: int) -> Tensor:
        """Indices of the k edges with the largest mean |effect|, largest first."""
        check_count("k", k, what="edges")
        return self.mean().abs().argsort(descending=True, stable=True)[:k]

    def to_dataframe(self):
        import pandas as pd

        g = self.graph
        n_edge, n_ex = self.values.shape
        snd = [g.senders[i].name for i in g.edges[:, 0].tolist()]
        rcv = [g.receivers[j].name for j in g.edges[:, 1].tolist()]
        return pd.DataFrame({"edge": [n for n in self.names for _ in range(n_ex)],
                             "sender": [s for s in snd for _ in range(n_ex)],
                             "receiver": [r for r in rcv for _ in range(n_ex)],
                             "example": list(range(n_ex)) * n_edge,
                             "effect": self.values.flatten().numpy(), "method": self.method})


def edge_pair(tower, clean: Tokens, corrupt: Tokens, direction: Direction, alignment) -> RunPair:
    """The checked pair of an edge analysis: equal token lengths per example unless ``alignment`` is given."""
    if alignment is not None and tower.name == "vision":
        raise ValueError("alignment is for texts of different token lengths; two images always share the patch grid.")
    return RunPair.build(tower, clean, corrupt, direction, same_pooling=alignment is None, hint=ALIGNMENT_HINT)


def sender_deltas(tower, graph: EdgeGraph, base_cache, src_cache, alignment: Optional[Tensor]) -> Tensor:
    """Each sender's output on the source run minus on the base run, [sender, batch, pos, d_model], at the
    base run's positions (``alignment``: the source position of each, -1 = none, where the change is 0)."""
    base = sender_outputs(tower, base_cache, graph)
    src = sender_outputs(tower, src_cache, graph)
    if alignment is not None:
        src = torch.stack([align_positions(s, b, alignment)[0] for s, b in zip(src, base)])
    return src - base


def edge_attribution(
    model,
    clean: Tokens,
    corrupt: Tokens,
    metric: Metric,
    *,
    method: Literal["eap", "eap-ig"] = "eap-ig",
    ig_steps: int = 8,
    direction: Direction = "denoise",
    alignment=None,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    tower: Optional[Literal["text", "vision"]] = None,
) -> EdgeScores:
    """Estimated effect on ``metric`` of patching every edge of ``tower``'s graph (see the module docstring).

    Args:
        clean / corrupt / direction: as in ``activation_patch`` (``"denoise"``: the base run is ``corrupt``,
            the senders' values come from ``clean``).
        metric: embeddings [..., batch, d_proj] -> [..., batch], differentiable (any metric of the similarity,
            e.g. ``similarity_metric``, or your own).
        method: ``"eap"`` (gradient at the base run) or ``"eap-ig"`` (``ig_steps`` integrated-gradient points).
        alignment: [batch, pos of the base run] -> source position (-1: none), for texts of unequal length.
        return_type: the output the metric reads; tower: ``"text"`` (default) or ``"vision"``.

    Returns:
        :class:`EdgeScores`, ``values`` [edge, batch]: estimated metric change per edge.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    steps = check_count("ig_steps", ig_steps, what="integration points") if method == "eap-ig" else 1
    tw = get_tower(model, tower)
    graph = EdgeGraph.of(tw)
    pair = edge_pair(tw, clean, corrupt, direction, alignment)
    L, embed_hook = tw.cfg.n_layers, tw.input_embed_hook
    cached = sender_hook_names(L) + [embed_hook]
    with torch.no_grad():
        src_out, src_cache = tw.run_with_cache(pair.source, return_type=return_type, names_filter=cached)
        base_out, base_cache = tw.run_with_cache(pair.base, return_type=return_type, names_filter=cached)
    if alignment is not None:
        alignment = check_alignment(alignment, pair.base.shape[0], base_cache[act_name("resid_pre", 0)].shape[1],
                                    src_cache[act_name("resid_pre", 0)].shape[1], base_cache[embed_hook].device)
    base_metric, src_metric = check_metric(metric, base_out), check_metric(metric, src_out)
    grads = _receiver_grads(tw, pair.base, metric, base_cache[embed_hook], _source_embed(tw, src_cache, base_cache, alignment),
                            steps if method == "eap-ig" else 0, return_type)
    with torch.no_grad():
        delta = sender_deltas(tw, graph, base_cache, src_cache, alignment)  # [S, b, pos, d]
        values = _edge_products(graph, delta, grads)
    clean_m, corrupt_m = pair.clean_and_corrupt(base_metric.detach(), src_metric.detach())
    return EdgeScores(values.float().cpu(), graph, method, direction, base_metric.detach().float().cpu(),
                      clean_m.float().cpu(), corrupt_m.float().cpu(),
                      extra={"ig_steps": steps if method == "eap-ig" else 0})


def _source_embed(tw, src_cache, base_cache, alignment) -> Tensor:
    """The source run's input embedding at the base run's positions (no counterpart: the base's own)."""
    src, base = src_cache[tw.input_embed_hook], base_cache[tw.input_embed_hook]
    return src if alignment is None else align_positions(src, base, alignment)[0]


def _receiver_grads(tw, base_input: Tensor, metric: Metric, base_e: Tensor, src_e: Tensor, ig_steps: int,
                    return_type: str) -> dict:
    """∂metric/∂(each receiver's input) at the base run (ig_steps = 0) or averaged over the integration
    points: {"q"/"k"/"v": [L, b, pos, head, d], "mlp": [L, b, pos, d], "pooled": [b, pos, d]}."""
    L = tw.cfg.n_layers
    acts: dict = {}
    k = max(ig_steps, 1)

    def leaf(act, hook):
        if ig_steps:
            alpha = (torch.arange(ig_steps, dtype=act.dtype, device=act.device) + 0.5) / ig_steps
            act = (base_e + alpha.view(-1, *[1] * base_e.ndim) * (src_e - base_e)).flatten(0, 1)
        return act.detach().requires_grad_(True)

    def keep(act, hook):
        acts[hook.name] = act
        return act

    names = [act_name(a, l) for l in range(L) for a in ("q_input", "k_input", "v_input", "resid_mid", "resid_post")]
    run = base_input.repeat(k, *[1] * (base_input.ndim - 1))
    with tw.options(use_split_qkv_input=True), torch.enable_grad():
        out = tw.run_with_hooks(run, return_type=return_type, fwd_hooks=[(tw.input_embed_hook, leaf)] + [(n, keep) for n in names])
        out = out.view(k, -1, out.shape[-1])
        check_metric(metric, out[0])
        values = torch.cat([metric(o) for o in out])
        if not values.requires_grad:
            raise ValueError("the metric's output has no gradient (it detaches or runs under torch.no_grad), so edge "
                             "attribution cannot differentiate it; write it with torch operations on the embeddings, "
                             "or use edge_patch, which needs no gradient.")
        # gradients of the receiver inputs alone (the parameters' are neither computed nor left on the model)
        grad = dict(zip(names, torch.autograd.grad(values.sum(), [acts[n] for n in names])))

    def avg(name):
        g = grad[name]
        return g.view(k, -1, *g.shape[1:]).mean(0)

    with torch.no_grad():
        grads = {x: torch.stack([avg(act_name(f"{x}_input", l)) for l in range(L)]) for x in QKV}
        post = [avg(act_name("resid_post", l)) for l in range(L)]
        grads["mlp"] = torch.stack([avg(act_name("resid_mid", l)) - post[l] for l in range(L)])
        grads["pooled"] = post[-1]
    return grads


def _edge_products(graph: EdgeGraph, delta: Tensor, grads: dict) -> Tensor:
    """[edge, batch]: Δ_sender · grad_receiver summed over positions and width, for every edge."""
    L, H = graph.n_layers, graph.n_heads
    S, b = delta.shape[:2]
    by_receiver = torch.zeros(S, len(graph.receivers), b, dtype=delta.dtype, device=delta.device)
    j = 0
    for l in range(L):
        heads = torch.stack([torch.einsum("sbpd,bphd->shb", delta, grads[x][l]) for x in QKV], 2)  # [S, H, 3, b]
        by_receiver[:, j: j + 3 * H] = heads.flatten(1, 2)
        j += 3 * H
        by_receiver[:, j] = torch.einsum("sbpd,bpd->sb", delta, grads["mlp"][l])
        j += 1
    by_receiver[:, j] = torch.einsum("sbpd,bpd->sb", delta, grads["pooled"])
    return by_receiver[graph.edges[:, 0], graph.edges[:, 1]]


__all__ = ["ALIGNMENT_HINT", "EdgeScores", "edge_attribution", "edge_pair", "sender_deltas"]
