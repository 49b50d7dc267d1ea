"""TransformerLens's weight accessors on a hooked tower (``HookedTower`` inherits them), and the per-head
circuits on an attention layer.

As in TransformerLens: ``tower.W_Q``/``W_K``/``W_V`` [n_layers, n_heads, d_model, d_head], ``W_O`` [n_layers,
n_heads, d_head, d_model], ``b_Q``/``b_K``/``b_V`` [n_layers, n_heads, d_head], ``b_O`` [n_layers, d_model],
``W_in`` [n_layers, d_model, d_mlp], ``b_in`` [n_layers, d_mlp], ``W_out`` [n_layers, d_mlp, d_model], ``b_out``
[n_layers, d_model], ``W_pos`` [n_ctx, d_model] (``W_E`` [d_vocab, d_model] on the text tower only: the image
tower embeds patches with ``embed.W_patch``), and the ``FactoredMatrix`` circuits ``OV`` = ``W_V @ W_O`` and
``QK`` = ``W_Q @ W_K^T`` [n_layers, n_heads, d_model, d_model] (``tower.blocks[l].attn.OV`` for one layer), so
``transformer_lens.utilities.composition_scores`` and ``FactoredMatrix``'s methods take them unchanged.

The stacked tensors are copies (``torch.stack``): edit a layer's weights through ``tower.blocks[l].attn.W_Q``.
On :class:`~hooked_clip.HookedCLIP` name the tower (``model.text.OV``, ``model.vision.W_Q``): its two towers
have different weights, so ``model.W_Q`` is an error saying so (:data:`TOWER_WEIGHTS`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import FactoredMatrix

# the accessors a HookedCLIP does not guess a tower for (HookedCLIP.__getattr__ names both towers' spelling)
TOWER_WEIGHTS = ("blocks", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "b_in", "W_out",
                 "b_out", "W_E", "W_pos", "QK", "OV", "ln_final", "accumulated_bias")


class HeadCircuits:
    """TransformerLens's ``QK`` and ``OV`` from ``W_Q``/``W_K``/``W_V``/``W_O``: one layer's [n_heads, d_model,
    d_model] on ``Attention``, every layer's [n_layers, n_heads, d_model, d_model] on a tower."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` of every head, factored (never materialised)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` of every head, factored (never materialised)."""
        return FactoredMatrix(self.W_V, self.W_O)


class WeightAccessors(HeadCircuits):
    """TransformerLens's stacked weight accessors, for a module with ``blocks`` (each with ``attn`` and ``mlp``)
    and ``pos_embed``; ``QK``/``OV`` over them from :class:`HeadCircuits`."""

    def _stack(self, sub: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(b, sub), name) for b in self.blocks], dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return self._stack("mlp", "W_in")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self._stack("mlp", "b_in")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self._stack("mlp", "W_out")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("mlp", "b_out")

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Tensor:
        """Sum of the attention (and MLP) output biases written before block ``layer`` (TL semantics)."""
        b_O = self.blocks[0].attn.b_O
        bias = torch.zeros(self.cfg.d_model, device=b_O.device, dtype=b_O.dtype)
        for i in range(layer):
            bias = bias + self.blocks[i].attn.b_O
            if include_mlp_biases:
                bias = bias + self.blocks[i].mlp.b_out
        if mlp_input:
            bias = bias + self.blocks[layer].attn.b_O
        return bias
