"""The edge graph of a pre-LN tower: which component outputs feed which component inputs.

Nodes upstream (*senders*, the names of :func:`hooked_clip.analyses.path_patching.all_senders`): ``"embed"``
(the residual entering block 0), each head ``"L{l}H{h}"`` (its z @ W_O) and each MLP ``"L{l}_mlp"``.
Nodes downstream (*receivers*, the names path patching takes): each head's query, key and value input
``"L{l}H{h}.q"`` / ``.k`` / ``.v`` (the residual its ``ln1`` reads), each MLP's input ``"L{l}_mlp"`` (the
residual its ``ln2`` reads) and the read-out ``"pooled"`` (the residual ``ln_final`` / ``ln_post`` reads).

An edge ``sender -> receiver`` exists where the sender writes the residual stream before the receiver reads
it: a head of block l feeds the MLP of block l and everything after; an MLP of block l feeds blocks l + 1 on.
Since each receiver's input is the sum of its senders' outputs (plus constant biases), the effect of one
edge is the effect of adding that sender's change to that receiver's input alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from hooked_clip.analyses.path_patching import all_senders
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.names import act_name, head_label, mlp_label

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Node:
    """A sender (``kind`` ``"embed"``, ``"head"``, ``"mlp"``) or receiver (``"head"`` with ``qkv``, ``"mlp"``,
    ``"pooled"``), by ``layer`` (-1 for embed, n_layers for pooled) and ``head`` (-1 where none)."""

    name: str
    kind: str
    layer: int
    head: int = -1
    qkv: str = ""


@dataclass(repr=False)
class EdgeGraph(CompactRepr):
    """Every sender, receiver and edge of a tower. ``edges`` [n_edges, 2] (sender index, receiver index),
    in sender-major order; ``names`` ``"sender->receiver"``."""

    senders: list
    receivers: list
    edges: Tensor
    n_layers: int
    n_heads: int

    @classmethod
    def of(cls, tower) -> "EdgeGraph":
        """The graph of a hooked tower (refused for a post-LN tower, whose residual is not a sum of writers)."""
        cfg = tower.cfg
        if cfg.ln_position != "pre":
            raise ValueError("edge circuits need a pre-LN tower: in a post-LN (BERT/RoBERTa) tower every residual sum "
                             "passes through a LayerNorm, so a sender's output does not reach a receiver unchanged.")
        L, H = cfg.n_layers, cfg.n_heads
        senders = []
        for name in all_senders(tower):
            if name == "embed":
                senders.append(Node(name, "embed", -1))
            elif name.endswith("_mlp"):
                senders.append(Node(name, "mlp", int(name[1:-4])))
            else:
                l, h = map(int, name[1:].split("H"))
                senders.append(Node(name, "head", l, h))
        receivers = []
        for l in range(L):
            receivers += [Node(f"{head_label(l, h)}.{x}", "head", l, h, x) for h in range(H) for x in QKV]
            receivers.append(Node(mlp_label(l), "mlp", l))
        receivers.append(Node("pooled", "pooled", L))
        pairs = [(i, j) for i, s in enumerate(senders) for j, r in enumerate(receivers) if _feeds(s, r)]
        return cls(senders, receivers, torch.tensor(pairs, dtype=torch.long), L, H)

    @property
    def names(self) -> list[str]:
        return [f"{self.senders[i].name}->{self.receivers[j].name}" for i, j in self.edges.tolist()]

    def __len__(self) -> int:
        return len(self.edges)

    def subset(self, index: Tensor) -> "EdgeGraph":
        """The same nodes with only the edges ``index``."""
        return EdgeGraph(self.senders, self.receivers, self.edges[torch.as_tensor(index, dtype=torch.long)],
                         self.n_layers, self.n_heads)

    def index(self, edges: Sequence[str]) -> Tensor:
        """Edge indices of ``"sender->receiver"`` names (an unknown or impossible edge is an error naming it)."""
        lookup = {n: i for i, n in enumerate(self.names)}
        bad = [e for e in edges if e not in lookup]
        if bad:
            raise ValueError(f"unknown edges {bad[:5]}: an edge is 'sender->receiver' with a sender upstream of the "
                             "receiver (e.g. 'L0H1->L2H0.q', 'embed->pooled', 'L1_mlp->L2_mlp').")
        return torch.tensor([lookup[e] for e in edges], dtype=torch.long)

    def to_networkx(self, weights: Optional[Tensor] = None, keep: Optional[Tensor] = None):
        """A ``networkx.MultiDiGraph`` of the kept edges (``keep``: edge indices; default all) between sender and
        receiver component nodes (a head's q/k/v inputs are one node, the head, reached by up to three edges
        whose ``input`` says which), with ``weight`` from ``weights`` [n_edges] and each node's ``layer``."""
        import networkx as nx

        keep = torch.arange(len(self)) if keep is None else torch.as_tensor(keep)
        g = nx.MultiDiGraph()
        for e in keep.tolist():
            s, r = self.senders[int(self.edges[e, 0])], self.receivers[int(self.edges[e, 1])]
            target = r.name.split(".")[0]
            g.add_node(s.name, layer=s.layer, kind=s.kind)
            g.add_node(target, layer=r.layer, kind=r.kind)
            w = 0.0 if weights is None else float(weights[e])
            g.add_edge(s.name, target, key=self.names[e], weight=w, input=r.qkv or r.kind, name=self.names[e])
        return g


def _feeds(sender: Node, receiver: Node) -> bool:
    if sender.kind == "embed" or receiver.kind == "pooled":
        return True
    if sender.kind == "head" and receiver.kind == "mlp":
        return sender.layer <= receiver.layer
    return sender.layer < receiver.layer


def sender_outputs(tower, cache, graph: EdgeGraph) -> Tensor:
    """Every sender's output [sender, batch, pos, d_model] from a cache holding ``resid_pre`` of block 0,
    each block's ``z`` and ``mlp_out``: what each sender adds to the residual stream (a head's bias b_O, the
    same in every run, is left out)."""
    out = []
    for s in graph.senders:
        if s.kind == "embed":
            out.append(cache[act_name("resid_pre", 0)])
        elif s.kind == "mlp":
            out.append(cache[act_name("mlp_out", s.layer)])
        else:
            out.append(cache[act_name("z", s.layer)][:, :, s.head] @ tower.blocks[s.layer].attn.W_O[s.head])
    return torch.stack(out)


def sender_hook_names(n_layers: int) -> list[str]:
    """The hooks :func:`sender_outputs` reads."""
    return [act_name("resid_pre", 0)] + [act_name(a, l) for l in range(n_layers) for a in ("z", "mlp_out")]


__all__ = ["EdgeGraph", "Node", "QKV", "sender_hook_names", "sender_outputs"]
