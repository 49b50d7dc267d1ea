"""Path patching (Wang et al. 2023, IOI): the effect of a sender on the output *only through* chosen
receivers.

On either pre-LN tower (``tower="text"`` or ``"vision"``; a post-LN tower's residual stream is a LayerNorm's
output, not a sum of its writers, so paths do not separate there and it is refused).

Senders: ``"embed"`` (the residual entering block 0: token + position embeddings, or patch + class + position
embeddings after ``ln_pre``), ``"L{l}H{h}"`` (a head's z @ W_O), ``"L{l}_mlp"``.
Receivers: ``"L{l}H{h}.q"`` / ``.k`` / ``.v`` (a head's query/key/value input, before ln1), ``"L{l}_mlp"``
(the MLP's input, before ln2) and ``"pooled"`` (the residual the tower's read-out reads: ``ln_final`` /
``ln_post``). Layers 0-indexed.

Arguments as in activation and attribution patching (:mod:`hooked_clip.analyses.pairs`): ``clean``, ``corrupt``,
and ``direction``, by default ``"denoise"``: the base run is ``corrupt`` and the senders' values come from
``clean``, so ``path_patch(model, a, b, ...)`` patches the same run with the same source as
``activation_patch(model, a, b, ...)``. ``direction="noise"`` swaps them (base = ``clean``, senders from
``corrupt``: the IOI paper's path patching).

Two passes per sender (base and source runs as the direction assigns them):

1. the base run with the sender's output set to its value on the source run and every other component's
   output frozen at its base value; record each receiver's input. With everything else frozen, the
   residual stream changes by exactly the sender's output difference Δ, so the receiver's input in this
   pass is base input + Δ (computed in closed form from the two caches: no forward is needed);
2. the base run with each receiver's input replaced by that value and everything else free; read the metric.
   Every (sender, example) is one row of the batched engine (:mod:`hooked_clip.analyses.engine`), started
   at the first receiver's block from the cached base run.

Receivers are patched *jointly*: each receiver's input is set to its base value plus the sender's change, so
a path that runs from the sender through one receiver into a later one is cut at the later one (that
receiver's input is fixed). The effect of a sender into ``["L1_mlp", "L2_mlp"]`` is therefore not the sum of
its effects into each alone: into ``L1_mlp`` alone it counts every path through that MLP, including those that
continue through ``L2_mlp``; jointly, those are blocked. To measure receivers separately, call once per
receiver. A receiver that lies upstream of a sender (or in the same layer, for a head sender and head
receiver) has no path from it and is refused.
"""

from __future__ import annotations

import re
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from hooked_clip.analyses.validation import check_senders
from hooked_clip.analyses.engine import BaseRun, Chunk, Hooks, Plan, execute
from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.pairs import Direction, RunPair, Tokens
from hooked_clip.analyses.patching import PatchingResult
from hooked_clip.names import act_name, head_label, mlp_label
from hooked_clip.tower import get_tower

_SENDER = re.compile(r"^(embed|L(\d+)H(\d+)|L(\d+)_mlp)$")
_RECEIVER = re.compile(r"^(pooled|L(\d+)H(\d+)\.([qkv])|L(\d+)_mlp)$")


def all_senders(model, tower: Optional[str] = None) -> list[str]:
    """Every sender name, in residual-stream order: embed, then per layer its heads and its MLP."""
    cfg = get_tower(model, tower).cfg
    out = ["embed"]
    for l in range(cfg.n_layers):
        out += [head_label(l, h) for h in range(cfg.n_heads)] + [mlp_label(l)]
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
    direction: Direction = "denoise",
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
    tower: Optional[Literal["text", "vision"]] = None,
) -> PatchingResult:
    """The metric after path-patching each sender (one at a time) into the ``receivers`` (jointly: a path
    through one receiver into another is cut at the second, see the module's docstring), on ``tower``
    (``"text"`` by default, ``"vision"`` with images; a tower passed as ``model`` is used itself).

    ``clean``, ``corrupt`` and ``direction`` mean what they mean in :func:`activation_patch` (default
    ``"denoise"``: run ``corrupt``, senders' values from ``clean``; ``"noise"``: run ``clean``, values from
    ``corrupt``). Path patching used to default to ``"noise"``; pass ``direction="noise"`` for those numbers.

    Returns a :class:`PatchingResult` with ``axes == ("sender",)``, ``values`` [sender, batch],
    ``extra["senders"]`` the sender names; ``clean``/``corrupt`` the unpatched metrics. ``senders=None``
    means every sender upstream of all receivers. ``return_type``: the output the metric reads;
    ``batch_size``: most rows (sender x example) per forward.
    """
    text = get_tower(model, tower)  # either tower: the name stays for the text-tower reader
    cfg = text.cfg
    if cfg.ln_position != "pre":
        raise ValueError("path patching needs a pre-LN tower: in this post-LN (BERT/RoBERTa) tower every residual sum "
                         "passes through a LayerNorm, so a sender's output does not reach a receiver unchanged. Use "
                         "activation_patch instead.")
    receivers = [receivers] if isinstance(receivers, str) else list(receivers)
    if not receivers:
        raise ValueError("give at least one receiver.")
    parsed_r = [_parse_receiver(r, cfg) for r in receivers]
    senders = check_senders(senders)
    if senders is None:
        senders = [s for s in all_senders(text) if all(_reaches(_parse_sender(s, cfg), r) for r in parsed_r)]
    parsed_s = [_parse_sender(s, cfg) for s in senders]
    for s, ps in zip(senders, parsed_s):
        for r, pr in zip(receivers, parsed_r):
            if not _reaches(ps, pr):
                raise ValueError(f"receiver {r!r} is upstream of (or level with) sender {s!r}: there is no path from "
                                 "the sender to it. Pick receivers in later layers.")
    pair = RunPair.build(text, clean, corrupt, direction)
    first = min(min(l, cfg.n_layers - 1) for _, l, _, _ in parsed_r)  # "pooled" is set at the last block's output
    cached = [act_name(a, l) for l in range(cfg.n_layers)
                                                  for a in ("z", "mlp_out", "resid_pre", "resid_mid", "resid_post")]
    # per-head receivers need per-head inputs; the base run uses the same mode so that only the patch differs
    with text.options(use_split_qkv_input=any(r[0] == "head" for r in parsed_r)):
        base = BaseRun.record(text, pair.base, return_type=return_type, first_layer=first, extra_names=cached)
        with torch.inference_mode():
            src_out, src = text.run_with_cache(pair.source, return_type=return_type, names_filter=cached)
        n_ex = pair.base.shape[0]
        sender_of = torch.arange(len(senders), device=pair.base.device).repeat_interleave(n_ex)
        example = torch.arange(n_ex, device=pair.base.device).repeat(len(senders))
        plan = Plan(example, torch.full_like(example, first), torch.zeros_like(example), sender_of * n_ex + example)

        def hooks(chunk: Chunk) -> Hooks:
            delta = _chunk_delta(text, parsed_s, sender_of[chunk.rows], chunk.example, base.cache, src.cache_dict)
            return [h for pr in parsed_r for h in _receiver_hooks(pr, base.cache, chunk.example, delta)]

        outputs = base.output.expand(len(senders), *base.output.shape).clone()
        execute(text, base, plan, hooks, outputs, batch_size=batch_size, progress=progress, desc="path patching")
    values = check_metric(metric, outputs).float().cpu()  # on the CPU, as activation_patch's
    clean_m, corrupt_m = (m.float().cpu() for m in pair.clean_and_corrupt(check_metric(metric, base.output),
                                                                          check_metric(metric, src_out)))
    return PatchingResult(values, ("sender",), {"sender": list(range(len(senders)))},
                          "path:" + ",".join(receivers), direction, clean_m, corrupt_m, extra={"senders": senders})


def _chunk_delta(text, senders: list, sender_of: Tensor, examples: Tensor, base: dict, src: dict) -> Tensor:
    """Row n's sender output on the source run minus on the base run, [rows, pos, d_model]."""
    first = base[act_name("resid_pre", 0)]
    delta = torch.empty(len(examples), *first.shape[1:], dtype=first.dtype, device=first.device)
    for s in sender_of.unique().tolist():
        rows = (sender_of == s).nonzero().flatten()
        delta[rows] = _sender_delta(text, senders[s], base, src, examples[rows])
    return delta


def _sender_delta(text, sender, base: dict, src: dict, ex: Tensor) -> Tensor:
    """The sender's output on the source run minus on the base run, for examples ``ex`` [n, pos, d_model]."""
    kind, l, h = sender
    if kind == "embed":  # everything that enters block 0
        name = act_name("resid_pre", 0)
        return src[name][ex] - base[name][ex]
    if kind == "mlp":
        name = act_name("mlp_out", l)
        return src[name][ex] - base[name][ex]
    name = act_name("z", l)
    return (src[name][ex, :, h] - base[name][ex, :, h]) @ text.blocks[l].attn.W_O[h]


def _receiver_hooks(receiver, base: dict, ex: Tensor, delta: Tensor) -> Hooks:
    """Hooks that set the receiver's input to base input + delta (pass 1's value) and nothing else, for the
    chunk's rows (examples ``ex``, every row of the chunk present from the first receiver's block on)."""
    kind, l, h, qkv = receiver
    width = delta.shape[1]

    def target(name: str) -> Tensor:
        return base[name][ex, :width] + delta

    if kind == "pooled":
        name = act_name("resid_post", l - 1)
        return [(name, lambda act, hook: target(name)[:, : act.shape[1]])]
    if kind == "head":
        resid_pre = act_name("resid_pre", l)

        def set_head_input(act, hook):
            act[:, :, h] = target(resid_pre)[:, : act.shape[1]]
            return act

        return [(act_name(f"{qkv}_input", l), set_head_input)]
    # MLP input: the residual after attention, seen by ln2 -> MLP only. Set resid_mid to the target for
    # the MLP, then take the difference back out of resid_post so the residual path itself is unchanged.
    mid = target(act_name("resid_mid", l))
    actual = {}

    def set_mid(act, hook):
        actual["mid"] = act
        return mid[:, : act.shape[1]]

    def restore_post(act, hook):
        return act - mid[:, : act.shape[1]] + actual["mid"]

    return [(act_name("resid_mid", l), set_mid), (act_name("resid_post", l), restore_post)]


__all__ = ["all_senders", "path_patch"]
