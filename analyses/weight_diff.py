"""Weight-space diff of two checkpoints of one architecture (a base model and its fine-tune): how much each
component changed, and for every attention head how far its QK and OV subspaces turned.

- ``relative_change`` of a component = ||W_tuned - W_base||_F / ||W_base||_F over all its parameters: the
  embeddings (token / patch, positions, class token), each block's LayerNorms, MLP and attention biases, the
  final LayerNorm(s) and the projection; and each head's QK = W_Q W_K^T and OV = W_V W_O circuits, taken
  from the towers' ``FactoredMatrix`` accessors (``tower.blocks[l].attn.QK`` / ``.OV``) and compared as the
  d_model x d_model matrices they are (so a change of basis inside a head, which leaves its circuit alone,
  is no change).
- principal angles between the two checkpoints' subspaces of each head, from the circuits' SVDs
  (``FactoredMatrix.svd``): the QK circuit's query side (U) and key side (V), the OV circuit's read side (U:
  what the head reads from the residual stream) and write side (V: what it writes). For orthonormal bases
  Q1, Q2 the cosines are the singular values of Q1^T Q2; small angles are taken from the sines (the singular
  values of Q2 - Q1 Q1^T Q2), which keeps them exact near 0 (Björck & Golub 1973). Radians, ascending.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from hooked_clip.analyses.results import CompactRepr
from hooked_clip.names import attn_bias_label, head_label, mlp_label
from hooked_clip.tower import check_same_architecture, get_tower

CIRCUITS = ("QK", "OV")
SUBSPACES = ("QK_query", "QK_key", "OV_read", "OV_write")  # (circuit, U or V of its SVD)
_HEAD_WEIGHTS = re.compile(r"blocks\.\d+\.attn\.W_[QKVO]$")  # compared as circuits, not one by one


@dataclass(repr=False)
class WeightDiff(CompactRepr):
    """``components`` (labels), their ``kinds`` (embedding, layernorm, attn_bias, mlp, projection) and
    ``layers`` (None outside the blocks), ``relative_change`` [components]; per head ``head_change``
    [circuit (QK, OV), layer, head] and ``angles`` [subspace (:data:`SUBSPACES`), layer, head, d_head]
    (radians, ascending). ``tower`` and the two models' ``names``."""

    components: list[str]
    kinds: list[str]
    layers: list[Optional[int]]
    relative_change: Tensor
    head_change: Tensor
    angles: Tensor
    tower: str
    names: tuple[str, str]

    def to_dataframe(self):
        """One row per component and per (head, circuit): ``tower``, ``component`` (e.g. ``L2_mlp``,
        ``L1H3 OV``), ``kind``, ``layer``, ``head``, ``relative_change``, and for heads the largest and mean
        principal angle of the circuit's two subspaces in degrees (``max_angle_<side>``, ``mean_angle_<side>``)."""
        import pandas as pd

        rows = [{"tower": self.tower, "component": c, "kind": k, "layer": l, "head": None,
                 "relative_change": float(r)} for c, k, l, r in zip(self.components, self.kinds, self.layers,
                                                                    self.relative_change)]
        deg = torch.rad2deg(self.angles)
        n_layers, n_heads = self.head_change.shape[1:]
        for layer in range(n_layers):
            for head in range(n_heads):
                for ci, circuit in enumerate(CIRCUITS):
                    row = {"tower": self.tower, "component": f"{head_label(layer, head)} {circuit}", "kind": circuit,
                           "layer": layer, "head": head, "relative_change": float(self.head_change[ci, layer, head])}
                    for si, side in enumerate(SUBSPACES):
                        if side.startswith(circuit):
                            short = side.split("_")[1]
                            row[f"max_angle_{short}"] = float(deg[si, layer, head].max())
                            row[f"mean_angle_{short}"] = float(deg[si, layer, head].mean())
                    rows.append(row)
        return pd.DataFrame(rows)

    def plot(self):
        """A figure: relative change of every head's QK and OV circuit and the largest principal angle of
        each head subspace (heatmaps, layer x head), and the relative change of every other component (bars)."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
        deg = torch.rad2deg(self.angles).amax(-1)  # [subspace, layer, head]
        panels = [(self.head_change[0], "QK relative change", "viridis"),
                  (self.head_change[1], "OV relative change", "viridis"),
                  (torch.maximum(deg[2], deg[3]), "OV max principal angle (deg)", "magma")]
        for ax, (grid, title, cmap) in zip(axes, panels):
            im = ax.imshow(grid.numpy(), cmap=cmap, aspect="auto")
            ax.set(title=title, xlabel="head", ylabel="layer")
            fig.colorbar(im, ax=ax, fraction=0.046).set_label(title, fontsize=8)
        axes[3].bar(range(len(self.components)), self.relative_change.numpy())
        axes[3].set_xticks(range(len(self.components)), self.components, rotation=90, fontsize=7)
        axes[3].set(title="other components: relative change")
        fig.suptitle(f"{self.tower} tower: {self.names[1]} vs {self.names[0]}")
        fig.tight_layout()
        return fig


def weight_diff(base, tuned, *, tower: str = "text", names: tuple[str, str] = ("base", "tuned")) -> WeightDiff:
    """The weight diff of ``tuned`` against ``base`` (two ``HookedCLIP`` or towers of one architecture; a
    difference in anything but weights is :class:`~hooked_clip.errors.ArchitectureMismatchError`)."""
    a, b = get_tower(base, tower), get_tower(tuned, tower)
    check_same_architecture(a, b, names)
    groups_a, groups_b = _groups(a), _groups(b)
    labels = list(groups_a)
    with torch.no_grad():
        change = torch.stack([_relative(torch.cat(groups_a[k]), torch.cat(groups_b[k])) for k in labels]).cpu()
        head_change, angles = _heads(a, b)
    kinds, layers = zip(*(_kind_and_layer(k) for k in labels)) if labels else ((), ())
    return WeightDiff([_label(k) for k in labels], list(kinds), list(layers), change, head_change, angles,
                      a.name, tuple(names))


def principal_angles(q1: Tensor, q2: Tensor) -> Tensor:
    """Principal angles [..., k] (radians, ascending) between the column spaces of orthonormal bases q1, q2
    [..., d, k]: arccos of the singular values of q1^T q2 where the angle is large, arcsin of those of
    q2 - q1 q1^T q2 where it is small."""
    m = q1.transpose(-2, -1) @ q2
    cos = torch.linalg.svdvals(m).clamp(-1, 1)  # descending cosines = ascending angles
    sin = torch.linalg.svdvals(q2 - q1 @ m).flip(-1).clamp(-1, 1)  # ascending
    return torch.where(cos * cos < 0.5, torch.arccos(cos), torch.arcsin(sin))


def _relative(a: Tensor, b: Tensor) -> Tensor:
    norm = a.float().norm()
    diff = (b.float() - a.float()).norm()
    return diff / norm if norm > 0 else diff  # an all-zero base component: the absolute change


def _groups(tower) -> dict[str, list[Tensor]]:
    """Parameters (flattened) by component: ``blocks.{l}.{module}`` inside the blocks (attention weights
    left to the circuits), the module (``embed``, ``ln_final``) or parameter (``W_proj``) outside them."""
    groups: dict[str, list[Tensor]] = {}
    for name, p in tower.named_parameters():
        if _HEAD_WEIGHTS.match(name):
            continue
        parts = name.split(".")
        key = ".".join(parts[:3]) if parts[0] == "blocks" else parts[0]
        groups.setdefault(key, []).append(p.detach().flatten())
    return groups


def _kind_and_layer(key: str) -> tuple[str, Optional[int]]:
    parts = key.split(".")
    layer = int(parts[1]) if parts[0] == "blocks" else None
    module = parts[-1]
    if module.startswith("ln"):
        return "layernorm", layer
    if module == "mlp":
        return "mlp", layer
    if module == "attn":
        return "attn_bias", layer
    if "proj" in module:
        return "projection", layer
    return "embedding", layer


def _label(key: str) -> str:
    """``blocks.2.mlp`` -> ``L2_mlp`` (names.mlp_label), ``blocks.2.attn`` -> ``L2_attn_bias``, ``blocks.2.ln1``
    -> ``L2_ln1``; others as they are."""
    parts = key.split(".")
    if parts[0] != "blocks":
        return key
    layer, module = int(parts[1]), parts[2]
    return mlp_label(layer) if module == "mlp" else attn_bias_label(layer) if module == "attn" else f"L{layer}_{module}"


def _heads(a, b) -> tuple[Tensor, Tensor]:
    n_layers, n_heads, d_head = a.cfg.n_layers, a.cfg.n_heads, a.cfg.d_head
    change = torch.empty(len(CIRCUITS), n_layers, n_heads)
    angles = torch.empty(len(SUBSPACES), n_layers, n_heads, d_head)
    for layer in range(n_layers):
        for ci, circuit in enumerate(CIRCUITS):
            fa, fb = getattr(a.blocks[layer].attn, circuit), getattr(b.blocks[layer].attn, circuit)
            ma, mb = fa.AB.float(), fb.AB.float()  # [head, d_model, d_model], one layer at a time
            change[ci, layer] = ((mb - ma).flatten(1).norm(dim=-1) / ma.flatten(1).norm(dim=-1).clamp_min(1e-30)).cpu()
            (ua, _, va), (ub, _, vb) = fa.svd(), fb.svd()
            angles[2 * ci, layer] = principal_angles(ua.float(), ub.float()).cpu()
            angles[2 * ci + 1, layer] = principal_angles(va.float(), vb.float()).cpu()
    return change, angles


__all__ = ["CIRCUITS", "SUBSPACES", "WeightDiff", "principal_angles", "weight_diff"]
