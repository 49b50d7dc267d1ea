"""Edge attribution speed and memory, and exact edge patching throughput, on a random ViT-B/32-sized text tower
(12 blocks of 8 heads, width 512) with aligned VALSE negation pairs.

Prints, each timed in this process (median of interleaved repeats):

1. EAP-IG cost per integrated-gradients step, as a ratio to one plain forward + backward of the same batch of
   pairs (the least any gradient method pays per step); EAP (one step) too;
2. memory per pair of EAP-IG: on CUDA the peak allocated bytes of the call over the pairs; on the CPU the
   bytes of the tensors EAP-IG keeps (gradients at every receiver input and every sender's change);
3. exact edge patching (``edge_patch``, the batched engine) against the plain per-edge loop the test suite checks
   it with (``tests/integration/test_edges.py``: one full forward of the batch of pairs per edge, the receiver's
   input changed by a hook: what one writes with TransformerLens, whose edge patching has no batched form), on the same random subset of edges, in
   edge x pair patches per second; the two must agree (max |difference| printed) before anything is timed.

Also the Pearson r between EAP / EAP-IG and the exact effects on that subset (random weights: a floor, not a
claim about trained CLIP).

Run: ``python benchmarks/edges.py [--pairs 16] [--ig-steps 8] [--edges 200] [--threads 2] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hooked_clip.analyses.edges import EdgeGraph, edge_attribution, edge_patch
from negation_setup import random_negation_setup

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]
from test_edges import plain_edge_loop  # noqa: E402  (the suite's reference loop: one full forward per edge)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def kept_bytes(model, n_pairs: int, n_pos: int, ig_steps: int) -> int:
    """Bytes of what EAP-IG holds beyond a forward + backward: per-head q/k/v input gradients, the residual
    gradients, every sender's change, over the ig_steps x pairs batch."""
    cfg = model.text.cfg
    per_row_pos = cfg.d_model * 4
    grads = ig_steps * n_pairs * n_pos * per_row_pos * cfg.n_layers * (3 * cfg.n_heads + 2)
    deltas = (1 + cfg.n_layers * (cfg.n_heads + 1)) * n_pairs * n_pos * per_row_pos
    return grads + deltas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--edges", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model, neg, aff, metric = random_negation_setup(args.pairs, args.device, args.threads)
    graph = EdgeGraph.of(model.text)
    subset = torch.randperm(len(graph), generator=torch.Generator().manual_seed(0))[: args.edges].sort().values
    names = [graph.names[i] for i in subset.tolist()]
    aff_t = model.to_tokens(aff)
    n_pos = int(model.text.pool_positions(aff_t).max()) + 1
    aff_t = aff_t[:, :n_pos]

    def forward_backward():  # one plain forward + backward of the batch: the floor of any gradient method's step
        embed = model.text.embed_tokens(aff_t).detach().requires_grad_(True)
        metric(model.text(embed, return_type="normalized", start_at_layer=0, tokens=aff_t)).sum().backward()

    runs = {
        "fwd_bwd": forward_backward,
        "eap": lambda: edge_attribution(model, neg, aff, metric, method="eap"),
        "eap_ig": lambda: edge_attribution(model, neg, aff, metric, ig_steps=args.ig_steps),
        "exact": lambda: edge_patch(model, neg, aff, metric, subset, progress=False),
        "loop": lambda: plain_edge_loop(model, aff, neg, metric, names),
    }
    # agreement first (and warm-up)
    exact, loop = runs["exact"](), runs["loop"]()
    diff = float((exact.values - loop.float().cpu()).abs().max())
    assert diff <= 1e-3, f"edge_patch and the plain loop disagree by {diff}"
    eap, eap_ig = runs["eap"](), runs["eap_ig"]()
    forward_backward()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved
        for k, fn in runs.items():
            times[k].append(timed(fn, args.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        runs["eap_ig"]()
        mem = (torch.cuda.max_memory_allocated() - base_mem) / len(neg)
        mem_what = "peak allocated during the call"
    else:
        mem = kept_bytes(model, len(neg), n_pos, args.ig_steps) / len(neg)
        mem_what = "tensors kept (computed from the shapes)"
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"random ViT-B/32-size text tower ({model.cfg.n_layers} blocks x {model.cfg.n_heads} heads, "
          f"{len(graph)} edges), {len(neg)} aligned VALSE pairs ({n_pos} positions), device {args.device}, "
          f"torch threads {torch.get_num_threads()}; median of {args.repeats} interleaved repeats; {load}")
    print(f"one forward + backward of the batch: {med['fwd_bwd']:.3f} s")
    print(f"EAP (every edge): {med['eap']:.3f} s = {med['eap'] / med['fwd_bwd']:.2f}x one forward + backward")
    per_step = med["eap_ig"] / args.ig_steps
    print(f"EAP-IG ({args.ig_steps} steps, every edge): {med['eap_ig']:.3f} s; per step {per_step:.3f} s = "
          f"{per_step / med['fwd_bwd']:.2f}x one forward + backward (aim <= 3x)")
    print(f"EAP-IG memory per pair: {mem / 2**20:.1f} MiB ({mem_what})")
    n = len(names) * len(neg)
    print(f"exact edge patching, {len(names)} random edges x {len(neg)} pairs: edge_patch {n / med['exact']:.0f} "
          f"patches/s ({med['exact']:.2f} s), plain per-edge loop {n / med['loop']:.0f} patches/s ({med['loop']:.2f} s): "
          f"{med['loop'] / med['exact']:.1f}x; agreement max |diff| = {diff:.1e}")
    y = exact.values.flatten()
    for name, res in (("EAP", eap), (f"EAP-IG ({args.ig_steps} steps)", eap_ig)):
        x = res.values[subset].flatten()
        print(f"{name} vs exact on those edges: Pearson r = {float(torch.corrcoef(torch.stack([x, y]))[0, 1]):.3f}")


if __name__ == "__main__":
    main()
