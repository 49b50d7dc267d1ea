"""The one owner of hook names and component labels, for both towers.

Hook names are TransformerLens's (``act_name("resid_pre", 3) == "blocks.3.hook_resid_pre"``, the same
string ``transformer_lens.utils.get_act_name`` gives). Labels name components in results and reports:

- ``head_label(3, 1) == "L3H1"``: code convention, 0-indexed block and head (TransformerLens's);
- ``paper_head_label(3, 1) == "Layer 4 Head 2"``: the paper's 1-indexed words, visibly different so the
  two are never confused;
- ``mlp_label(3) == "L3_mlp"``, ``attn_label(3) == "L3_attn"``, ``attn_bias_label(3) == "L3_attn_bias"``;
- hidden states in the paper's numbering: state 0 is the embeddings output (``blocks.0.hook_resid_pre``),
  state l >= 1 the output of block l (``blocks.{l-1}.hook_resid_post``): ``hidden_state_name(l)``.

Runs over both towers (``HookedCLIP.run_with_cache(texts, images)``) name hooks ``text.<name>`` and
``vision.<name>`` (each tower's own name after the prefix), plus ``hook_text_embed``,
``hook_text_embed_normalized``, ``hook_image_embed`` and ``hook_image_embed_normalized`` at the top (the same
activations as ``text.hook_text_embed`` etc.): :func:`prefixed`, :func:`route`, :func:`split_hooks` and
:func:`merge_caches` below route such names to the tower that owns them.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Optional, Union

from torch import Tensor

from hooked_clip.errors import UnknownHookError

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
# each tower's own hooks, not per block (those of a config that lacks the module never exist)
TEXT_HOOKS = ("hook_embed", "hook_pos_embed", "hook_cls_embed", "hook_token_type_embed", "ln_embed.hook_scale", "ln_embed.hook_normalized",
              "ln_final.hook_scale", "ln_final.hook_normalized", "hook_pooled", "hook_proj_hidden",
              "hook_text_embed", "hook_text_embed_normalized")
VISION_HOOKS = ("hook_patch_embed", "hook_cls_embed", "hook_pos_embed", "ln_pre.hook_scale", "ln_pre.hook_normalized",
                "ln_post.hook_scale", "ln_post.hook_normalized", "head.ln.hook_scale", "head.ln.hook_normalized",
                "head.attn.hook_q", "head.attn.hook_k", "head.attn.hook_v", "head.attn.hook_z",
                "head.attn.hook_attn_scores", "head.attn.hook_pattern", "head.hook_attn_out", "head.mlp.hook_pre",
                "head.mlp.hook_post", "head.hook_mlp_out", "head.hook_out", "hook_pooled", "hook_image_embed",
                "hook_image_embed_normalized")
TOWER_HOOKS = tuple(dict.fromkeys(TEXT_HOOKS + VISION_HOOKS))
# opt-in hooks: name suffix -> the config flag without which they never fire
OPT_IN_HOOKS = {"attn.hook_result": "use_attn_result", "hook_q_input": "use_split_qkv_input",
                "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input"}

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def act_name(kind: str, layer: Optional[int] = None, tower: Optional[str] = None) -> str:
    """The hook name of activation ``kind`` in block ``layer`` (``act_name("z", 2)`` ->
    ``"blocks.2.attn.hook_z"``), or a tower hook by its full name (``act_name("hook_pooled")``). The name is
    the tower's own (what ``model.text``/``model.vision`` use); with ``tower="text"``/``"vision"`` it is the
    name in a run over both towers (``act_name("z", 2, tower="vision") == "vision.blocks.2.attn.hook_z"``)."""
    if tower is not None:
        return prefixed(tower, act_name(kind, layer))
    if kind in TOWER_HOOKS:
        if layer is not None:
            raise ValueError(f"{kind!r} is a tower hook, not a per-block one; drop the layer.")
        return kind
    if kind not in BLOCK_ACTS:
        raise ValueError(f"unknown activation {kind!r}; per-block: {sorted(BLOCK_ACTS)}; tower: {list(TOWER_HOOKS)}.")
    if layer is None or not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"{kind!r} is per block: give a block index (0-indexed int), got {layer!r}.")
    return BLOCK_ACTS[kind].format(layer)


def opt_in_flag(name: str) -> Optional[str]:
    """The config flag an opt-in hook needs (``"use_attn_result"`` for ``blocks.3.attn.hook_result``), or None."""
    return next((flag for suffix, flag in OPT_IN_HOOKS.items() if name.endswith(suffix)), None)


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


# ------------------------------------------------------------------------ runs over both towers
TOWERS = ("text", "vision")  # the prefixes of a run over both towers
ALIASES = {
    "hook_text_embed": ("text", "hook_text_embed"),
    "hook_text_embed_normalized": ("text", "hook_text_embed_normalized"),
    "hook_image_embed": ("vision", "hook_image_embed"),
    "hook_image_embed_normalized": ("vision", "hook_image_embed_normalized"),
}
_ALIAS_OF = {v: k for k, v in ALIASES.items()}
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def prefixed(tower: str, name: str) -> str:
    """The name of tower ``tower``'s own hook ``name`` in a run over both towers."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}.")
    return f"{tower}.{name}"


def route(name: str) -> Optional[tuple[str, str]]:
    """(tower, the tower's own name) of a two-tower name; ``None`` for an unprefixed name."""
    if name in ALIASES:
        return ALIASES[name]
    tower, _, rest = name.partition(".")
    return (tower, rest) if tower in TOWERS and rest else None


def own_name(name: str) -> tuple[str, str]:
    """(tower, the tower's own name) of a name in a run over both towers; an unprefixed name is an
    :class:`UnknownHookError` naming the fix (it would otherwise hook one tower without a word)."""
    where = route(name)
    if where is None:
        raise UnknownHookError(
            f"{name!r} names no tower; in a run over both towers prefix hook names with 'text.' or 'vision.' "
            "(e.g. 'vision.blocks.0.hook_resid_post'), or use hook_text_embed(_normalized) / "
            "hook_image_embed(_normalized)."
        )
    return where


def names_both_towers(hooks: Iterable[tuple]) -> bool:
    """Whether a hook list uses two-tower names (a prefix or a top-level alias)."""
    return any(isinstance(name, str) and route(name) is not None for name, _ in hooks)


def split_hooks(hooks: Iterable[tuple]) -> dict[str, list[tuple]]:
    """A two-tower hook list -> {tower: [(own name or filter, hook)]}. Every name must name its tower
    (:func:`own_name`); a filter function is applied to both towers, seeing the prefixed names."""
    out: dict[str, list[tuple]] = {t: [] for t in TOWERS}
    for name, hook in hooks:
        if callable(name):
            for tower in TOWERS:
                out[tower].append((_prefixed_filter(name, tower), hook))
        else:
            tower, own = own_name(name)
            out[tower].append((own, hook))
    return out


def _prefixed_filter(keep: Callable[[str], bool], tower: str) -> Callable[[str], bool]:
    return lambda own: keep(f"{tower}.{own}") or (((tower, own) in _ALIAS_OF) and keep(_ALIAS_OF[(tower, own)]))


def cache_filters(names_filter: NamesFilter) -> tuple[Callable[[str], bool], dict[str, Callable[[str], bool]],
                                                      Optional[dict[str, list[str]]]]:
    """(keep(two-tower name), {tower: filter on its own names}, {tower: the own names listed} or None when
    ``names_filter`` is None or a function). Listed names must name their tower (:func:`own_name`); the
    caller checks that each tower has them and that they fire."""
    listed: Optional[dict[str, list[str]]] = None
    if names_filter is None:
        keep = lambda name: True  # noqa: E731
    elif callable(names_filter):
        keep = names_filter
    else:
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        listed = {tower: [] for tower in TOWERS}
        for name in names:
            tower, own = own_name(name)
            listed[tower].append(own)
        keep = set(names).__contains__
    return keep, {tower: _prefixed_filter(keep, tower) for tower in TOWERS}, listed


def merge_caches(keep: Callable[[str], bool], caches: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """One dict of two-tower names from each tower's cache dict."""
    out: dict[str, Tensor] = {}
    for tower, cache in caches.items():
        for own, act in cache.items():
            if keep(f"{tower}.{own}"):
                out[f"{tower}.{own}"] = act
            alias = _ALIAS_OF.get((tower, own))
            if alias is not None and keep(alias):
                out[alias] = act
    return out
