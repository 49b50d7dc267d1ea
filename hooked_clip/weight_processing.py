"""Weight processing, as in TransformerLens: rewrite the weights so that analyses read cleaner components
while every text embedding stays the same (up to float rounding; tested ≤1e-5 on every parity config).

- ``fold_ln``: each LayerNorm's weight and bias move into the weights that read its output (ln1 into
  W_Q/W_K/W_V and their biases, ln2 into W_in/b_in, ln_final into ``W_proj``/``b_proj``). The LayerNorms
  then only centre and scale (w = 1, b = 0), so ``ln*.hook_normalized`` holds the plain normalised
  residual. With no projection (``d_proj=None``) ln_final has nothing to fold into and is left as is.
- ``center_writing_weights``: W_E, W_pos, W_O, b_O, W_out, b_out lose their mean over d_model. Exact
  because every reader of the residual stream is a LayerNorm, which removes that mean anyway; the
  residual-stream hooks then hold mean-free vectors.
- ``fold_value_biases``: b_V moves into b_O (b_O += Σ_h b_V[h] @ W_O[h]). Exact because each attention
  pattern row sums to 1; ``hook_v``/``hook_z`` then lack the bias, ``hook_attn_out`` is unchanged.

Each step is recorded in the config (``cfg.ln_folded`` etc.) and refuses to run twice. ``fold_ln`` and
``center_writing_weights`` are derived for pre-LN blocks and refuse post-LN (BERT/RoBERTa) towers, whose
LayerNorms write to the residual stream; ``fold_value_biases`` holds for both.
"""

from __future__ import annotations

from typing import Union

import torch

from hooked_clip.text.tower import HookedCLIPText
from hooked_clip.tower import get_tower


def _once(text: HookedCLIPText, flag: str, what: str) -> None:
    if getattr(text.cfg, flag):
        raise ValueError(f"{what} was already applied to this model (cfg.{flag} is True); applying it twice "
                         "is refused. Reload the model to start from the original weights.")


def _pre_ln_only(text: HookedCLIPText, what: str) -> None:
    if text.cfg.ln_position != "pre":
        raise ValueError(f"{what} is derived for pre-LN towers; this tower's LayerNorms come after each residual "
                         "sum (cfg.ln_position='post', BERT/RoBERTa), so their outputs are the residual stream "
                         "itself and cannot be folded away. Load it without this option.")


@torch.no_grad()
def fold_ln(model: Union[HookedCLIPText, "HookedCLIP"]) -> None:  # noqa: F821
    """Fold every LayerNorm's weight and bias into the weights that read it (in place)."""
    text = get_tower(model, "text")
    _once(text, "ln_folded", "fold_ln")
    _pre_ln_only(text, "fold_ln")
    for block in text.blocks:
        w, b = block.ln1.w.clone(), block.ln1.b.clone()
        for W, bias in ((block.attn.W_Q, block.attn.b_Q), (block.attn.W_K, block.attn.b_K), (block.attn.W_V, block.attn.b_V)):
            bias += torch.einsum("m,hmd->hd", b, W)
            W *= w[None, :, None]
        w, b = block.ln2.w.clone(), block.ln2.b.clone()
        block.mlp.b_in += b @ block.mlp.W_in
        block.mlp.W_in *= w[:, None]
        for ln in (block.ln1, block.ln2):
            ln.w.fill_(1.0)
            ln.b.zero_()
    if text.W_proj is not None:
        w, b = text.ln_final.w.clone(), text.ln_final.b.clone()
        shift = b @ text.W_proj
        if text.b_proj is None:
            text.b_proj = torch.nn.Parameter(shift.clone())
            text.cfg.proj_bias = True
        else:
            text.b_proj += shift
        text.W_proj *= w[:, None]
        text.ln_final.w.fill_(1.0)
        text.ln_final.b.zero_()
    text.cfg.ln_folded = True


@torch.no_grad()
def center_writing_weights(model: Union[HookedCLIPText, "HookedCLIP"]) -> None:  # noqa: F821
    """Remove the d_model mean of everything that writes to the residual stream (in place)."""
    text = get_tower(model, "text")
    _once(text, "writing_weights_centered", "center_writing_weights")
    _pre_ln_only(text, "center_writing_weights")
    params = [text.embed.W_E, text.pos_embed.W_pos]
    for block in text.blocks:
        params += [block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out]
    for p in params:
        p -= p.mean(dim=-1, keepdim=True)
    text.cfg.writing_weights_centered = True


@torch.no_grad()
def fold_value_biases(model: Union[HookedCLIPText, "HookedCLIP"]) -> None:  # noqa: F821
    """Move each layer's value bias into its output bias (in place)."""
    text = get_tower(model, "text")
    _once(text, "value_biases_folded", "fold_value_biases")
    for block in text.blocks:
        block.attn.b_O += torch.einsum("hd,hdm->m", block.attn.b_V, block.attn.W_O)
        block.attn.b_V.zero_()
    text.cfg.value_biases_folded = True


_STEPS = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "fold_value_biases": fold_value_biases}


def process_weights(model, *, fold_ln: bool = False, center_writing_weights: bool = False,
                    fold_value_biases: bool = False):
    """Apply the chosen processing steps in TransformerLens's order; returns ``model`` (changed in place)."""
    steps = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "fold_value_biases": fold_value_biases}
    for name, on in steps.items():
        if not isinstance(on, bool):
            raise TypeError(f"{name} must be True or False, got {on!r}.")
        if on:
            _STEPS[name](model)
    return model
