"""A circuit as data and as a picture: the top edges of an :class:`~hooked_clip.analyses.edges.scores.EdgeScores`
as a ``networkx.MultiDiGraph`` (offline; ``networkx.to_pandas_edgelist`` gives its table) drawn with matplotlib,
senders and receivers laid out by layer: the embeddings on the left, the read-out on the right, a layer's
heads in a column, its MLP just after them. Edge colour: sign of the mean effect (blue raises the metric,
red lowers it); width: its size."""

from __future__ import annotations

from typing import Optional

from hooked_clip.analyses.edges.scores import EdgeScores


def circuit_graph(scores: EdgeScores, k: int):
    """The ``k`` edges of largest mean |effect| as a ``networkx.MultiDiGraph`` (nodes: components with their
    ``layer`` and ``kind``; edges: ``weight`` = mean effect, ``input`` = q / k / v / mlp / pooled)."""
    return scores.graph.to_networkx(scores.mean(), scores.top(k))


def _position(name: str, data: dict, n_heads: int) -> tuple[float, float]:
    kind, layer = data["kind"], data["layer"]
    if kind == "head":
        return layer, (int(name.split("H")[1]) - (n_heads - 1) / 2) / max(n_heads, 1) * 2
    if kind == "mlp":
        return layer + 0.5, 0.0
    return float(layer), 0.0  # embed at -1, pooled at n_layers


def draw_circuit(scores: EdgeScores, k: int = 20, ax=None, title: Optional[str] = None):
    """Draw the top ``k`` edges on ``ax`` (a new figure if None); returns ``(graph, ax)``."""
    import matplotlib.pyplot as plt
    import networkx as nx

    g = circuit_graph(scores, k)
    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    pos = {n: _position(n, d, scores.graph.n_heads) for n, d in g.nodes(data=True)}
    weights = [d["weight"] for _, _, d in g.edges(data=True)]
    top = max((abs(w) for w in weights), default=1.0) or 1.0
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=380, node_color="#eeeeee", edgecolors="black", linewidths=0.5)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=6)
    nx.draw_networkx_edges(g, pos, ax=ax, width=[0.5 + 3 * abs(w) / top for w in weights],
                           edge_color=["tab:blue" if w > 0 else "tab:red" for w in weights], arrows=True,
                           arrowsize=8, connectionstyle="arc3,rad=0.15", node_size=380)
    ax.set_title(title or f"top {k} edges ({scores.method})", fontsize=9)
    ax.axis("off")
    return g, ax


__all__ = ["circuit_graph", "draw_circuit"]
