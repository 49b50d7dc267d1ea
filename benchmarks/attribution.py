"""Attribution patching speed and fidelity: AtP (z, every layer x position x head, from two forwards and one
backward) against exact activation patching of the same sweep with our batched engine, on a random
ViT-B/32-sized text tower and 32 aligned VALSE pairs. Prints the speed-up as a ratio measured in the same
run, and the Pearson r between the estimated and the exact effects (random weights: a fidelity floor, not
a claim about trained CLIP; tests/integration/test_circuits.py checks r on the demo model).

Also integrated gradients (``ig_steps``, 8 steps): k forwards and backwards as one batch.

Run: ``python benchmarks/attribution.py [--pairs 32] [--ig-steps 8] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hooked_clip.analyses.attribution import attribution_patch
from hooked_clip.analyses.patching import activation_patch
from negation_setup import random_negation_setup


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model, neg, aff, metric = random_negation_setup(args.pairs, args.device, args.threads)
    kw = dict(index="layer_pos_head")
    aff_t = model.to_tokens(aff)

    def forward_backward():  # what one step of any gradient method costs at least: one forward + backward
        embed = model.text.embed_tokens(aff_t).detach().requires_grad_(True)
        metric(model.text(embed, return_type="normalized", start_at_layer=0, tokens=aff_t)).sum().backward()

    runs = {
        "atp": lambda: attribution_patch(model, neg, aff, metric, "z", **kw),
        "ig": lambda: attribution_patch(model, neg, aff, metric, "z", ig_steps=args.ig_steps, **kw),
        "exact": lambda: activation_patch(model, neg, aff, metric, "z", progress=False, **kw),
        "fwd_bwd": forward_backward,
    }
    est, ig, exact = runs["atp"](), runs["ig"](), runs["exact"]()  # results (and warm-up)
    forward_backward()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved
        for k, fn in runs.items():
            times[k].append(median_time(fn, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    y = (exact.values - exact.corrupt).flatten()
    keep = ~torch.isnan(y)
    print(f"random ViT-B/32 text tower, {args.pairs} pairs, {int(keep.sum())} (layer, pos, head, pair) patches of z; "
          f"torch threads {torch.get_num_threads()}; median of {args.repeats} interleaved repeats")
    for name, res, key in (("attribution patching", est, "atp"), (f"integrated gradients ({args.ig_steps} steps)", ig, "ig")):
        x = (res.values - res.corrupt).flatten()
        r = float(torch.corrcoef(torch.stack([x[keep], y[keep]]))[0, 1])
        print(f"{name}: {med['exact'] / med[key]:.1f}x faster than exact patching with the batched engine "
              f"({med[key]:.2f} s vs {med['exact']:.2f} s); Pearson r(estimate, exact) = {r:.3f}")
    print(f"integrated gradients: {med['ig'] / args.ig_steps:.3f} s per step = "
          f"{med['ig'] / args.ig_steps / med['fwd_bwd']:.2f}x one plain forward + backward of the {args.pairs} "
          f"affirmative sentences ({med['fwd_bwd']:.3f} s)")


if __name__ == "__main__":
    main()
