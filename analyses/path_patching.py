"""Path patching (Wang et al. 2023, IOI): the effect of a sender on the output *only through* chosen
receivers.

Senders: ``"embed"`` (token + position embeddings), ``"L{l}H{h}"`` (a head's z @ W_O), ``"L{l}_mlp"``.
Receivers: ``"L{l}H{h}.q"`` / ``.k`` / ``.v`` (a head's query/key/value input, before ln1), ``"L{l}_mlp"``
(the MLP's input, before ln2) and ``"pooled"`` (the residual read by ``ln_final``). Layers 0-indexed.

Two passes per sender, in the default ``noise`` direction (the base run is ``clean``):

1. the base run with the sender's output set to its value on ``corrupt`` and every other component's
   output frozen at its base value; record each receiver's input. With everything else frozen, the
   residual stream changes by exactly the sender's output difference Δ, so the receiver's input in this
   pass is base input + Δ (computed in closed form from the two caches: no forward is needed);
2. the base run with each receiver's input replaced by that value and everything else free; read the metric.

``denoise`` swaps the runs (base = corrupt, sender values from clean). A receiver that lies upstream of a
sender (or in the same layer, for a head sender and head receiver) has no path from it and is refused.
"""

from __future__ import annotations

import re
from typing import Literal, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.patching import PatchingResult, Tokens, _text, aligned_runs

_SENDER = re.compile(r"^(embed|L(\d+)H(\d+)|L(\d+)_mlp)$")
_RECEIVER = re.compile(r"^(pooled|L(\d+)H(\d+)\.([qkv])|L(\d+)_mlp)$")


def all_senders(model) -> list[str]:
    """Every sender name, in residual-stream order: embed, then per layer its heads and its MLP."""
    cfg = _text(model).cfg
    out = ["embed"]
    for l in range(cfg.n_layers):
        out += [f"L{l}H{h}" for h in range(cfg.n_heads)] + [f"L{l}_mlp"]
    return out


def _parse_sender(name: str, cfg) -> tuple[str, int, int]:
    m = _SENDER.match(name)
    if not m:
        raise ValueError(f"unknown sender {name!r}; senders are 'embed', 'L{{layer}}H{{head}}' or 'L{{layer}}_mlp'.")
    if name == "embed":
        return "embed", -1, -1
    kind, l, h = ("head", int(m.group(2)), int(m.group(3))) if m.group(2) else ("mlp", int(m.group(4)), -1)
    if l >= cfg.n_layers or h >= cfg.n_heads:
        raise ValueError(f"sender {name!r} is out of range: the model has {cfg.n_layers} layers of {cfg.n_heads} heads.")
    return kind, l, h


def _parse_receiver(name: str, cfg) -> tuple[str, int, int, str]:
    m = _RECEIVER.match(name)
    if not m:
        raise ValueError(f"unknown receiver {name!r}; receivers are 'pooled', 'L{{layer}}H{{head}}.q|k|v' or 'L{{layer}}_mlp'.")
    if name == "pooled":
        return "pooled", cfg.n_layers, -1, ""
    kind, l, h, qkv = ("head", int(m.group(2)), int(m.group(3)), m.group(4)) if m.group(2) else ("mlp", int(m.group(5)), -1, "")
    if l >= cfg.n_layers or h >= cfg.n_heads:
        raise ValueError(f"receiver {name!r} is out of range: the model has {cfg.n_layers} layers of {cfg.n_heads} heads.")
    return kind, l, h, qkv


def _reaches(sender: tuple[str, int, int], receiver: tuple[str, int, int, str]) -> bool:
    s_kind, s_l, _ = sender
    r_kind, r_l, _, _ = receiver
    if s_kind == "embed" or r_kind == "pooled":
        return True
    if s_kind == "head" and r_kind == "mlp":
        return s_l <= r_l  # the MLP reads its own layer's attention output
    return s_l < r_l


def path_patch(
    model,
    clean: Tokens,
    corrupt: Tokens,
    metric: Metric,
    receivers: Union[str, Sequence[str]],
    senders: Union[None, str, Sequence[str]] = None,
    *,
    direction: Literal["noise", "denoise"] = "noise",
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    progress: bool = True,
) -> PatchingResult:
    """The metric after path-patching each sender (one at a time) into the ``receivers`` (jointly).

    Returns a :class:`PatchingResult` with ``axes == ("sender",)``, ``values`` [sender, batch],
    ``extra["senders"]`` the sender names; ``clean``/``corrupt`` the unpatched metrics. ``senders=None``
    means every sender upstream of all receivers. ``return_type``: the output the metric reads.
    """
    text = _text(model)
    cfg = text.cfg
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    if not receivers:
        raise ValueError("give at least one receiver.")
    parsed_r = [_parse_receiver(r, cfg) for r in receivers]
    if senders is None:
        senders = [s for s in all_senders(model) if all(_reaches(_parse_sender(s, cfg), r) for r in parsed_r)]
    senders = [senders] if isinstance(senders, str) else list(senders)
    parsed_s = [_parse_sender(s, cfg) for s in senders]
    for s, ps in zip(senders, parsed_s):
        for r, pr in zip(receivers, parsed_r):
            if not _reaches(ps, pr):
                raise ValueError(f"receiver {r!r} is upstream of (or level with) sender {s!r}: there is no path from "
                                 "the sender to it. Pick receivers in later layers.")
    base_t, src_t = aligned_runs(text, clean, corrupt, direction)

    needs_split = any(r[0] == "head" for r in parsed_r)
    names = lambda n: n in ("hook_embed", "hook_pos_embed") or n.endswith(  # noqa: E731
        ("attn.hook_z", "hook_mlp_out", "hook_resid_pre", "hook_resid_mid", "hook_resid_post"))
    old_split = cfg.use_split_qkv_input
    cfg.use_split_qkv_input = needs_split  # per-head inputs; base run in the same mode so only the patch differs
    try:
        with torch.no_grad():
            base_out, base = text.run_with_cache(base_t, return_type=return_type, names_filter=names)
            src_out, src = text.run_with_cache(src_t, return_type=return_type, names_filter=names)
            base_metric, src_metric = check_metric(metric, base_out), check_metric(metric, src_out)
            values = []
            for ps in tqdm(parsed_s, desc="path patching", disable=not progress):
                delta = _sender_delta(text, ps, base, src)
                hooks = [h for pr in parsed_r for h in _receiver_hooks(pr, base, delta)]
                values.append(check_metric(metric, text.run_with_hooks(base_t, return_type=return_type, fwd_hooks=hooks)))
    finally:
        cfg.use_split_qkv_input = old_split
    clean_m, corrupt_m = (base_metric, src_metric) if direction == "noise" else (src_metric, base_metric)
    return PatchingResult(torch.stack(values), ("sender",), {"sender": list(range(len(senders)))},
                          "path:" + ",".join(receivers), direction, clean_m, corrupt_m, extra={"senders": senders})


def _sender_delta(text, sender, base, src) -> Tensor:
    """The sender's output on the source run minus on the base run, [batch, pos, d_model]."""
    kind, l, h = sender
    if kind == "embed":
        return (src["hook_embed"] + src["hook_pos_embed"]) - (base["hook_embed"] + base["hook_pos_embed"])
    if kind == "mlp":
        return src[f"blocks.{l}.hook_mlp_out"] - base[f"blocks.{l}.hook_mlp_out"]
    name = f"blocks.{l}.attn.hook_z"
    return (src[name][:, :, h] - base[name][:, :, h]) @ text.blocks[l].attn.W_O[h]


def _receiver_hooks(receiver, base, delta: Tensor) -> list:
    """Hooks that set the receiver's input to base input + delta (pass 1's value) and nothing else."""
    kind, l, h, qkv = receiver
    if kind == "pooled":
        target = base[f"blocks.{l - 1}.hook_resid_post"] + delta
        return [(f"blocks.{l - 1}.hook_resid_post", lambda act, hook: target)]
    if kind == "head":
        target = base[f"blocks.{l}.hook_resid_pre"] + delta

        def set_head_input(act, hook):
            act[:, :, h] = target
            return act

        return [(f"blocks.{l}.hook_{qkv}_input", set_head_input)]
    # MLP input: the residual after attention, seen by ln2 -> MLP only. Set resid_mid to the target for
    # the MLP, then take the difference back out of resid_post so the residual path itself is unchanged.
    target = base[f"blocks.{l}.hook_resid_mid"] + delta
    actual = {}

    def set_mid(act, hook):
        actual["mid"] = act
        return target

    def restore_post(act, hook):
        return act - target + actual["mid"]

    return [(f"blocks.{l}.hook_resid_mid", set_mid), (f"blocks.{l}.hook_resid_post", restore_post)]


__all__ = ["all_senders", "path_patch"]
