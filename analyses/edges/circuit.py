"""Circuits from edge scores: keep some edges, ablate every other one, and measure what is left.

A circuit is a set of kept edges. Running it: the ``clean`` run, where every edge *outside* the circuit
carries its sender's ablated value into its receiver instead of the live one — the receiver's input becomes
live input + Σ_{dropped senders u} (ablated_u - live_u). ``ablation="patched"``: a sender's value on the
``corrupt`` run of the same example; ``"mean"``: its mean over the corrupt examples, per position. Senders
downstream of a dropped edge are recomputed (their own live values change), so this is one forward.
With every edge kept the run is the clean run; with none kept (patched) it is the corrupt run: both exactly.

The faithfulness of a circuit is the fraction of the metric it keeps,
``(metric(circuit) - metric(empty)) / (metric(clean) - metric(empty))`` on the means over examples, where
``empty`` keeps no edge. :func:`faithfulness_curve` keeps the top k edges of a score for each k, against the
same number of edges drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from hooked_clip.analyses.edges.graph import QKV, EdgeGraph, sender_hook_names, sender_outputs
from hooked_clip.analyses.edges.scores import EdgeScores
from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.pairs import RunPair, Tokens
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.validation import check_count
from hooked_clip.names import act_name
from hooked_clip.tower import get_tower

ABLATIONS = ("patched", "mean")


@dataclass(repr=False)
class FaithfulnessCurve(CompactRepr):
    """``n_edges`` [k] edges kept; ``faithfulness`` [k] of the top-scored circuits; ``random`` [seed, k] of
    circuits of as many random edges; ``metric`` [k] / ``random_metric`` [seed, k] the mean metric behind them;
    ``clean`` / ``empty`` the mean metric with every / no edge kept."""

    n_edges: list
    faithfulness: Tensor
    random: Tensor
    metric: Tensor
    random_metric: Tensor
    clean: float
    empty: float
    ablation: str
    extra: dict = field(default_factory=dict)

    def to_dataframe(self):
        import pandas as pd

        rows = [{"n_edges": k, "circuit": "top", "seed": -1, "faithfulness": float(f), "metric": float(m)}
                for k, f, m in zip(self.n_edges, self.faithfulness, self.metric)]
        rows += [{"n_edges": k, "circuit": "random", "seed": s, "faithfulness": float(self.random[s, i]),
                  "metric": float(self.random_metric[s, i])}
                 for s in range(self.random.shape[0]) for i, k in enumerate(self.n_edges)]
        return pd.DataFrame(rows)

    def plot(self, ax=None, label: str = "top edges", random: bool = True):
        """The curve (and, with ``random``, the random circuits' mean and range) on a matplotlib axis."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(4.5, 3.2))[1]
        line, = ax.plot(self.n_edges, self.faithfulness.numpy(), marker="o", ms=3, label=label)
        if random and self.random.numel():
            ax.plot(self.n_edges, self.random.mean(0).numpy(), color=line.get_color(), ls="--", lw=1,
                    label=f"as many random edges ({self.random.shape[0]} draws)")
            ax.fill_between(self.n_edges, self.random.min(0).values.numpy(), self.random.max(0).values.numpy(),
                            color=line.get_color(), alpha=0.15)
        ax.axhline(1, color="black", lw=0.5)
        ax.axhline(0, color="black", lw=0.5)
        if min(self.n_edges) > 0:
            ax.set_xscale("log")
        ax.set_xlabel("edges kept")
        ax.set_ylabel("fraction of the metric kept")
        ax.legend(fontsize=7)
        return ax


def run_circuit(model, clean: Tokens, corrupt: Tokens, metric: Metric, keep, *,
                ablation: Literal["patched", "mean"] = "patched",
                return_type: Literal["normalized", "embed", "pooled"] = "normalized",
                batch_size: int = 256, tower: Optional[Literal["text", "vision"]] = None) -> Tensor:
    """The metric [circuit, batch] of the clean run with only the ``keep`` edges live (see the module
    docstring). ``keep``: edge indices into ``EdgeGraph.of(tower)``, a bool mask [n_edges], or a list of either
    (one circuit each). Circuits run side by side, at most ``batch_size`` rows (circuit x example) a forward."""
    tw = get_tower(model, tower)
    graph = EdgeGraph.of(tw)
    circuits = keep if isinstance(keep, (list, tuple)) and keep and not isinstance(keep[0], (int, bool)) else [keep]
    masks = torch.stack([_as_mask(k, len(graph)) for k in circuits])  # [C, n_edges]
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}.")
    check_count("batch_size", batch_size, what="rows per forward")
    pair = RunPair.build(tw, clean, corrupt, "noise")  # base: clean; the ablated values: corrupt
    with torch.no_grad():
        _, cache = tw.run_with_cache(pair.source, return_type=return_type, names_filter=sender_hook_names(tw.cfg.n_layers))
        ablated = sender_outputs(tw, cache, graph)  # [S, b, pos, d]
        if ablation == "mean":
            ablated = ablated.mean(1, keepdim=True).expand_as(ablated)
        n_ex = ablated.shape[1]
        per = max(1, batch_size // n_ex)  # circuits per forward
        out = []
        for c0 in range(0, len(masks), per):
            gone = ~masks[c0: c0 + per]
            drop = torch.zeros(len(gone), len(graph.senders), len(graph.receivers), dtype=ablated.dtype)
            c, e = gone.nonzero(as_tuple=True)
            drop[c, graph.edges[e, 0], graph.edges[e, 1]] = 1
            rows = pair.base.repeat(len(gone), *[1] * (pair.base.ndim - 1))  # circuit-major
            hooks = _circuit_hooks(tw, graph, drop.to(ablated.device), ablated)
            with tw.options(use_split_qkv_input=True):
                emb = tw.run_with_hooks(rows, return_type=return_type, fwd_hooks=hooks)
            out.append(check_metric(metric, emb.view(len(gone), n_ex, *emb.shape[1:])))
    return torch.cat(out).float().cpu()


def _as_mask(keep, n: int) -> Tensor:
    t = torch.as_tensor(keep)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ValueError(f"a keep mask must have one entry per edge ({n}), got shape {tuple(t.shape)}.")
        return t.cpu()
    if t.dtype.is_floating_point or (t.numel() and (int(t.min()) < 0 or int(t.max()) >= n)):
        raise ValueError(f"keep must hold edge indices in 0..{n - 1} (or be a bool mask of {n} edges).")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[t.long().cpu()] = True
    return mask


def _circuit_hooks(tw, graph: EdgeGraph, drop: Tensor, ablated: Tensor):
    """Hooks recording each sender's live output and adding Σ_dropped (ablated - live) to each receiver;
    ``drop`` [circuit, sender, receiver] (1: the edge is ablated), rows circuit-major."""
    L, H = graph.n_layers, graph.n_heads
    n_c, n_ex = drop.shape[0], ablated.shape[1]
    live: list = [None] * len(graph.senders)
    first = {(s.kind, s.layer, s.head): i for i, s in enumerate(graph.senders)}
    recv = {(r.kind, r.layer, r.head, r.qkv): j for j, r in enumerate(graph.receivers)}
    state = {}

    def correction(js: list, n_senders: int) -> Tensor:  # [len(js), circuit * example, pos, d]
        now = torch.stack(live[:n_senders])
        diff = ablated[:n_senders, None] - now.view(n_senders, n_c, n_ex, *now.shape[2:])
        return torch.einsum("csr,scbpd->rcbpd", drop[:, :n_senders, js], diff).flatten(1, 2)

    def embed(act, hook):
        live[0] = act
        return act

    def z_hook(l):
        def hook(act, hook):
            for h in range(H):
                live[first["head", l, h]] = act[:, :, h] @ tw.blocks[l].attn.W_O[h]
            return act
        return hook

    def mlp_out(l):
        def hook(act, hook):
            live[first["mlp", l, -1]] = act
            return act
        return hook

    def qkv_input(l, x):
        def hook(act, hook):
            n = first["head", l, 0]  # senders before this layer's heads
            corr = correction([recv["head", l, h, x] for h in range(H)], n)  # [H, rows, pos, d]
            return act + corr.permute(1, 2, 0, 3)
        return hook

    def mid(l):
        def hook(act, hook):
            state[l] = correction([recv["mlp", l, -1, ""]], first["mlp", l, -1])[0]
            return act + state[l]
        return hook

    def post(l):
        def hook(act, hook):
            act = act - state.pop(l)
            if l == L - 1:
                act = act + correction([recv["pooled", L, -1, ""]], len(graph.senders))[0]
            return act
        return hook

    hooks = [(act_name("resid_pre", 0), embed)]
    for l in range(L):
        hooks += [(act_name(f"{x}_input", l), qkv_input(l, x)) for x in QKV]
        hooks += [(act_name("z", l), z_hook(l)), (act_name("resid_mid", l), mid(l)),
                  (act_name("mlp_out", l), mlp_out(l)), (act_name("resid_post", l), post(l))]
    return hooks


def faithfulness_curve(model, clean: Tokens, corrupt: Tokens, metric: Metric, scores: EdgeScores,
                       n_edges: Sequence[int], *, ablation: Literal["patched", "mean"] = "patched",
                       n_random: int = 3, seed: int = 0,
                       return_type: Literal["normalized", "embed", "pooled"] = "normalized",
                       tower: Optional[Literal["text", "vision"]] = None) -> FaithfulnessCurve:
    """Faithfulness of the circuits of the top ``k`` edges of ``scores`` (by mean |effect|) for each k in
    ``n_edges``, and of ``n_random`` circuits of k random edges each (seeded)."""
    graph = EdgeGraph.of(get_tower(model, tower))
    if scores.graph.names != graph.names:
        raise ValueError("scores cover a different set of edges than this tower's graph; score every edge "
                         "(edge_attribution, or edge_patch with edges=None) of the same tower.")
    ks = [check_count("n_edges", int(k), minimum=0) for k in n_edges]
    if max(ks) > len(graph):
        raise ValueError(f"n_edges goes up to {max(ks)} but the graph has {len(graph)} edges.")
    check_count("n_random", n_random, minimum=0)
    order = scores.mean().abs().argsort(descending=True, stable=True)
    gen = torch.Generator().manual_seed(seed)
    randoms = [torch.randperm(len(graph), generator=gen) for _ in range(n_random)]
    circuits = [torch.zeros(0, dtype=torch.long), torch.arange(len(graph))] + [order[:k] for k in ks] \
        + [perm[:k] for perm in randoms for k in ks]
    m = run_circuit(model, clean, corrupt, metric, circuits, ablation=ablation, return_type=return_type, tower=tower).mean(-1)
    empty, full = float(m[0]), float(m[1])
    frac = (m - empty) / (full - empty) if full != empty else torch.full_like(m, float("nan"))
    top = slice(2, 2 + len(ks))
    return FaithfulnessCurve(ks, frac[top], frac[2 + len(ks):].view(n_random, len(ks)), m[top],
                             m[2 + len(ks):].view(n_random, len(ks)), full, empty, ablation,
                             extra={"method": scores.method, "n_graph_edges": len(graph)})


__all__ = ["ABLATIONS", "FaithfulnessCurve", "faithfulness_curve", "run_circuit"]
