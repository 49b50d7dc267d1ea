"""Overhead of checking hook return values (shape, dtype, device) on a forward with hooks on every block.

A random ViT-B/32-size text tower (width 512, 8 heads, 12 blocks), 64 VALSE existence captions. Every
hook returns a new tensor object (``x.view_as(x)``: no copy, but the check runs in full). The same hooks
are attached two ways:

  checked:   ``model.run_with_hooks`` (every hook point is a ``CheckedHookPoint``)
  unchecked: the same call with TransformerLens's own ``HookPoint.add_hook`` and no hook-name checks

for two hook sets: (a) ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` of every block (a patching
sweep's shape); (b) every hook point of every block. Each repeat times checked and unchecked back to back
(order alternating) in CPU time of this process, so load from other processes on a shared machine
moves both; the printed ratio is the median over repeats of checked / unchecked (target < 1.02). As a
noise-free cross-check it also times the check alone (one wrapped hook call minus one bare call, on a real
activation) and prints hooks x that cost / the unchecked forward.

Run: ``python benchmarks/hooks.py [--repeats 21] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformer_lens.hook_points import HookPoint

from hooked_clip import CLIPTextConfig, HookedCLIPText
from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip.hook_points import CheckedHookPoint


@contextmanager
def without_checks(model):
    """The baseline: TransformerLens's own ``HookPoint.add_hook`` and no hook-name checks."""
    saved = CheckedHookPoint.add_hook
    CheckedHookPoint.add_hook = HookPoint.add_hook
    model._check_can_fire = lambda names: None
    try:
        yield
    finally:
        CheckedHookPoint.add_hook = saved
        del model._check_can_fire


def passthrough(x, hook):
    return x.view_as(x)  # a new tensor object: the checker compares it with the input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    cfg = CLIPTextConfig(d_model=512, n_heads=8, d_head=64, n_layers=12, d_mlp=2048, d_proj=512, seed=0, device="cpu")
    model = HookedCLIPText(cfg)
    captions = [item["caption"] for item in json.loads(EXISTENCE_JSON.read_text()).values()][: args.batch]
    tokens = model.to_tokens(captions)
    opt_in = ("hook_result", "_input")  # never fire without use_attn_result / use_split_qkv_input
    sets = {
        "(a) resid_pre, attn_out, mlp_out": [n for n in model.hook_dict if n.startswith("blocks.")
                                             and n.endswith(("hook_resid_pre", "hook_attn_out", "hook_mlp_out"))],
        "(b) every block hook point": [n for n in model.hook_dict if n.startswith("blocks.") and not n.endswith(opt_in)],
    }

    def checked(names):
        return lambda: model.run_with_hooks(tokens, fwd_hooks=[(n, passthrough) for n in names])

    def unchecked(names):
        def run():
            with without_checks(model):
                return model.run_with_hooks(tokens, fwd_hooks=[(n, passthrough) for n in names])
        return run

    for label, names in sets.items():  # same hooks, same numbers
        assert torch.equal(checked(names)(), unchecked(names)())

    def cpu_time(fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    print(f"ViT-B/32-size random text tower, batch {tokens.shape[0]} x {tokens.shape[1]} positions; "
          f"torch threads {torch.get_num_threads()}; CPU time, median over {args.repeats} paired repeats")
    check_cost = _check_cost(model, tokens)
    for label, names in sets.items():
        runs = (checked(names), unchecked(names))
        for fn in runs:  # warm-up
            fn()
        ratios, times = [], ([], [])
        for r in range(args.repeats):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            t = {i: cpu_time(runs[i]) for i in order}
            times[0].append(t[0])
            times[1].append(t[1])
            ratios.append(t[0] / t[1])
        u = statistics.median(times[1])
        print(f"{label} ({len(names)} hooks): checked {statistics.median(times[0]) * 1e3:.1f} ms, unchecked "
              f"{u * 1e3:.1f} ms, ratio {statistics.median(ratios):.4f} (target < 1.02); the check alone: "
              f"{len(names)} x {check_cost * 1e6:.2f} us = {len(names) * check_cost / u:.2e} of the forward")


def _check_cost(model, tokens, n: int = 20000) -> float:
    """Seconds one checked hook call costs over a bare call of the same hook, on a real activation."""
    from hooked_clip.hook_points import _CheckedHook

    x = model(tokens, stop_at_layer=1)
    point = model.blocks[0].hook_resid_post
    wrapped = _CheckedHook(passthrough, point, "fwd")
    best = {}
    for name, fn in (("bare", passthrough), ("checked", wrapped)):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                fn(x, hook=point)
            runs.append((time.perf_counter() - start) / n)
        best[name] = min(runs)
    return max(best["checked"] - best["bare"], 0.0)

if __name__ == "__main__":
    main()
