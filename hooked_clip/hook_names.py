"""The one owner of hook names and component labels.

Hook names are TransformerLens's (``act_name("resid_pre", 3) == "blocks.3.hook_resid_pre"``, the same
string ``transformer_lens.utils.get_act_name`` gives). Labels name components in results and reports:

- ``head_label(3, 1) == "L3H1"``: code convention, 0-indexed block and head (TransformerLens's);
- ``paper_head_label(3, 1) == "Layer 4 Head 2"``: the paper's 1-indexed words, visibly different so the
  two are never confused;
- ``mlp_label(3) == "L3_mlp"``, ``attn_label(3) == "L3_attn"``, ``attn_bias_label(3) == "L3_attn_bias"``;
- hidden states in the paper's numbering: state 0 is the embeddings output (``blocks.0.hook_resid_pre``),
  state l >= 1 the output of block l (``blocks.{l-1}.hook_resid_post``): ``hidden_state_name(l)``.
"""

from __future__ import annotations

import re
from typing import Optional

# short name -> hook name template (layer-indexed); the activations the patching engine knows
BLOCK_ACTS = {
    "resid_pre": "blocks.{}.hook_resid_pre", "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post", "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out", "z": "blocks.{}.attn.hook_z", "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k", "v": "blocks.{}.attn.hook_v", "pattern": "blocks.{}.attn.hook_pattern",
    "attn_scores": "blocks.{}.attn.hook_attn_scores", "result": "blocks.{}.attn.hook_result",
    "q_input": "blocks.{}.hook_q_input", "k_input": "blocks.{}.hook_k_input", "v_input": "blocks.{}.hook_v_input",
    "mlp_pre": "blocks.{}.mlp.hook_pre", "mlp_post": "blocks.{}.mlp.hook_post",
    "ln1_scale": "blocks.{}.ln1.hook_scale", "ln2_scale": "blocks.{}.ln2.hook_scale",
}
# activations with a head axis (dim 2 in [batch, pos, head, ...]; the pattern's is dim 1)
HEAD_ACTS = ("z", "q", "k", "v", "pattern")
# the tower's own, not per block
TOWER_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized", "hook_pooled",
               "hook_text_embed", "hook_text_embed_normalized")

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def act_name(kind: str, layer: Optional[int] = None) -> str:
    """The hook name of activation ``kind`` in block ``layer`` (``act_name("z", 2)`` ->
    ``"blocks.2.attn.hook_z"``), or a tower hook by its full name (``act_name("hook_pooled")``)."""
    if kind in TOWER_HOOKS:
        if layer is not None:
            raise ValueError(f"{kind!r} is a tower hook, not a per-block one; drop the layer.")
        return kind
    if kind not in BLOCK_ACTS:
        raise ValueError(f"unknown activation {kind!r}; per-block: {sorted(BLOCK_ACTS)}; tower: {list(TOWER_HOOKS)}.")
    if layer is None or not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"{kind!r} is per block: give a block index (0-indexed int), got {layer!r}.")
    return BLOCK_ACTS[kind].format(layer)


def layer_of(name: str) -> int:
    """The block index of a per-block hook name (``"blocks.3.attn.hook_z"`` -> 3)."""
    m = re.match(r"^blocks\.(\d+)\.", name)
    if m is None:
        raise ValueError(f"{name!r} is not a per-block hook name.")
    return int(m.group(1))


def hidden_state_name(state: int, n_layers: int) -> str:
    """The paper's hidden state ``state`` (0 = embeddings output, l = output of block l, 1-indexed blocks)."""
    if not 0 <= state <= n_layers:
        raise ValueError(f"hidden state {state} is outside 0..{n_layers} (0 = embeddings output).")
    return act_name("resid_pre", 0) if state == 0 else act_name("resid_post", state - 1)


def head_label(layer: int, head: int) -> str:
    """0-indexed head label, code convention: ``head_label(3, 1) == "L3H1"`` (block 3, head 1)."""
    return f"L{layer}H{head}"


def parse_head_label(label: str) -> tuple[int, int]:
    """``"L3H1"`` -> (3, 1), 0-indexed. The paper's "Layer 4 Head 2" form is refused (it is 1-indexed)."""
    m = _HEAD.match(label)
    if m is None:
        raise ValueError(f"{label!r} is not a head label 'L{{layer}}H{{head}}' (0-indexed, e.g. 'L3H1').")
    return int(m.group(1)), int(m.group(2))


def paper_head_label(layer: int, head: int) -> str:
    """The paper's 1-indexed label of 0-indexed (layer, head): ``paper_head_label(3, 1) == "Layer 4 Head 2"``."""
    return f"Layer {layer + 1} Head {head + 1}"


def mlp_label(layer: int) -> str:
    return f"L{layer}_mlp"


def attn_label(layer: int) -> str:
    return f"L{layer}_attn"


def attn_bias_label(layer: int) -> str:
    return f"L{layer}_attn_bias"
