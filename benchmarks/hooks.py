"""Overhead of checking hook return values (shape, dtype, device) on a forward with hooks on every block.

A random ViT-B/32-size text tower (width 512, 8 heads, 12 blocks), 64 VALSE existence captions. Every
hook returns a new tensor object (``x.view_as(x)``: no copy, but the check runs in full). The same hooks
are attached two ways, timed interleaved in the same run (median of ``--repeats``):

  checked:   ``model.run_with_hooks`` (every hook point is a ``CheckedHookPoint``)
  unchecked: TransformerLens's own ``HookPoint.add_hook`` on the same points (no check)

for two hook sets: (a) ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` of every block (a patching
sweep's shape); (b) every hook point of every block. Prints checked / unchecked per set (target < 1.02).

Run: ``python benchmarks/hooks.py [--repeats 15] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformer_lens.hook_points import HookPoint

from hooked_clip import CLIPTextConfig, HookedCLIPText
from hooked_clip.analyses.valse_negation import EXISTENCE_JSON


def passthrough(x, hook):
    return x.view_as(x)  # a new tensor object: the checker compares it with the input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
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
            for n in names:
                HookPoint.add_hook(model.hook_dict[n], passthrough)  # TransformerLens's add_hook, no check
            try:
                return model(tokens)
            finally:
                model.reset_hooks()
        return run

    runs = {}
    for label, names in sets.items():
        ref = checked(names)()
        assert torch.equal(unchecked(names)(), ref)  # same hooks, same numbers
        runs[(label, "checked")], runs[(label, "unchecked")] = checked(names), unchecked(names)
    for fn in runs.values():  # warm-up
        fn()
    times: dict = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"ViT-B/32-size random text tower, batch {tokens.shape[0]} x {tokens.shape[1]} positions; "
          f"torch threads {torch.get_num_threads()}; median of {args.repeats}, interleaved")
    for label, names in sets.items():
        c, u = med[(label, "checked")], med[(label, "unchecked")]
        print(f"{label} ({len(names)} hooks): checked {c * 1e3:.1f} ms, unchecked {u * 1e3:.1f} ms, "
              f"ratio {c / u:.4f} (target < 1.02)")


if __name__ == "__main__":
    main()
