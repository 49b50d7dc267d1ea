"""Attribution patching speed and fidelity: AtP (z, every layer x position x head, from two forwards and one
backward) against exact activation patching of the same sweep with our batched engine, on a random
ViT-B/32-sized text tower and 32 aligned VALSE pairs. Prints the speed-up as a ratio measured in the same
run, and the Pearson r between the estimated and the exact effects (random weights: a fidelity floor, not
a claim about trained CLIP; tests/test_circuits.py checks r on the demo model).

Also integrated gradients (``ig_steps``, 8 steps): k forwards and backwards as one batch.

Run: ``python benchmarks/attribution.py [--pairs 32] [--ig-steps 8]``
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hooked_clip.analyses.attribution import attribution_patch
from hooked_clip.analyses.metrics import similarity_metric
from hooked_clip.analyses.patching import activation_patch
from hooked_clip.analyses.valse_negation.data import aligned_pairs, load_items
from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = HookedCLIP(HookedCLIPText(CLIPTextConfig(seed=0, device="cpu")), logit_scale=math.log(100.0))
    pairs = aligned_pairs(load_items())[: args.pairs]
    neg, aff = [p.negated for p in pairs], [p.affirmative for p in pairs]
    metric = similarity_metric(model, torch.randn(len(pairs), model.cfg.d_proj))
    kw = dict(index="layer_pos_head")
    start = time.perf_counter()
    est = attribution_patch(model, neg, aff, metric, "z", **kw)
    t_atp = time.perf_counter() - start
    start = time.perf_counter()
    ig = attribution_patch(model, neg, aff, metric, "z", ig_steps=args.ig_steps, **kw)
    t_ig = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        exact = activation_patch(model, neg, aff, metric, "z", progress=False, **kw)
    t_exact = time.perf_counter() - start
    y = (exact.values - exact.corrupt).flatten()
    keep = ~torch.isnan(y)
    print(f"{args.pairs} pairs, {int(keep.sum())} (layer, pos, head, pair) patches of z")
    for name, res, t in (("attribution patching", est, t_atp), (f"integrated gradients ({args.ig_steps} steps)", ig, t_ig)):
        x = (res.values - res.corrupt).flatten()
        r = float(torch.corrcoef(torch.stack([x[keep], y[keep]]))[0, 1])
        print(f"{name}: {t_exact / t:.1f}x faster than exact patching with the batched engine "
              f"({t:.2f} s vs {t_exact:.2f} s); Pearson r(estimate, exact) = {r:.3f}")


if __name__ == "__main__":
    main()
