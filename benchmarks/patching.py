"""Patching speed: the minimal-pair CTE sweep (Quantmeyer et al. 2024) over 32 VALSE-length pairs on a
random ViT-B/32-sized text tower.

Baselines, run in the same process on the same model:
  * the paper's loop: one forward per (pair, hidden state l, position p), single sentence, written with
    ``run_with_hooks`` and a ``.item()`` per result (what the authors' code and TL-by-hand do);
  * TL's loop: one forward per (l, p) over all 32 pairs (``transformer_lens.patching`` style).
Numbers are checked equal first. Prints each ratio, then ROME-tracing throughput and peak memory.

Run: ``python benchmarks/patching.py [--pairs 32] [--rome-pairs 8]``
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from hooked_clip.analyses.causal_tracing import hidden_state_hook, minimal_pair_trace, rome_trace
from hooked_clip.analyses.metrics import similarity_metric
from hooked_clip.analyses.valse_negation.data import aligned_pairs, load_items
from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText


def valse_pairs(n: int) -> tuple[list[str], list[str]]:
    """(negated, affirmative) pairs in the paper's alignment: 'There are no X' / 'There are some X'."""
    pairs = aligned_pairs(load_items())[:n]
    return [p.negated for p in pairs], [p.affirmative for p in pairs]


def paper_loop(model, neg_t, aff_t, image_embeds) -> torch.Tensor:
    """One forward per (pair, l, p); returns the patched affirmative score S* [pairs, L+1, pos]."""
    text, scale = model.text, model.logit_scale.exp()
    n_layers, pools = text.cfg.n_layers, text.pool_positions(neg_t)
    out = torch.full((neg_t.shape[0], n_layers + 1, neg_t.shape[1]), float("nan"))
    for i in range(neg_t.shape[0]):
        _, cache = text.run_with_cache(neg_t[i : i + 1], names_filter=lambda n: "resid" in n)
        for l in range(n_layers + 1):
            name = hidden_state_hook(l)
            for p in range(int(pools[i]) + 1):
                def hook(x, hook, p=p):
                    x = x.clone()
                    x[:, p] = cache[hook.name][:, p]
                    return x
                emb = text.run_with_hooks(aff_t[i : i + 1], return_type="normalized", fwd_hooks=[(name, hook)])
                out[i, l, p] = (scale * emb[0] @ torch.nn.functional.normalize(image_embeds[i], dim=0)).item()
    return out


def tl_loop(model, neg_t, aff_t, metric) -> torch.Tensor:
    """One forward per (l, p) over all pairs; returns S* [pairs, L+1, pos]."""
    text = model.text
    _, cache = text.run_with_cache(neg_t, names_filter=lambda n: "resid" in n)
    out = torch.empty(neg_t.shape[0], text.cfg.n_layers + 1, neg_t.shape[1])
    for l in range(text.cfg.n_layers + 1):
        for p in range(neg_t.shape[1]):
            def hook(x, hook, p=p):
                x = x.clone()
                x[:, p] = cache[hook.name][:, p]
                return x
            out[:, l, p] = metric(text.run_with_hooks(aff_t, return_type="normalized",
                                                      fwd_hooks=[(hidden_state_hook(l), hook)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--rome-pairs", type=int, default=8, help="pairs for the ROME throughput measurement")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = HookedCLIP(HookedCLIPText(CLIPTextConfig(seed=0, device="cpu")), logit_scale=math.log(100.0))
    neg, aff = valse_pairs(args.pairs)
    neg_t, aff_t = model.to_tokens(neg), model.to_tokens(aff)
    images = torch.randn(len(neg), 512, generator=torch.Generator().manual_seed(0))
    metric = similarity_metric(model, images)
    negation_in = ["caption"] * len(neg)
    lengths = (model.pool_positions(neg_t) + 1).tolist()
    print(f"{len(neg)} pairs, {min(lengths)}-{max(lengths)} tokens; random ViT-B/32 text tower (12 x 512, 8 heads); "
          f"torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    cte = minimal_pair_trace(model, neg_t, aff_t, images, negation_in, progress=False)
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_paper = paper_loop(model, neg_t, aff_t, images)
    t_paper = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_tl = tl_loop(model, neg_t, aff_t, metric)
    t_tl = time.perf_counter() - t0

    s_neg, s_aff = metric(model.encode_text(neg_t)), metric(model.encode_text(aff_t))
    s_engine = s_aff[:, None, None] + cte * (s_neg - s_aff)[:, None, None]  # back from CTE to S*
    valid = ~torch.isnan(cte)
    err_paper = (s_engine - s_paper)[valid].abs().max().item()
    err_tl = (s_engine - s_tl)[valid].abs().max().item()
    print(f"engine {t_engine:.2f}s | paper loop {t_paper:.2f}s | TL loop {t_tl:.2f}s")
    print(f"check: max |S* engine - S* paper loop| = {err_paper:.2e} logits, vs TL loop {err_tl:.2e} "
          "(CTE = d*/d amplifies these by 1/|d|)")
    assert err_paper <= 1e-4 and err_tl <= 1e-4, "engine and loops disagree"
    print(f"speed-up vs the paper's one-forward-per-patch loop: {t_paper / t_engine:.1f}x (target >= 20x)")
    print(f"speed-up vs TL's batched-over-pairs loop:            {t_tl / t_engine:.1f}x")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rome_t = aff_t[: args.rome_pairs]
    res = rome_trace(model, rome_t, similarity_metric(model, images[: args.rome_pairs]), [3], progress=False)
    t_rome = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"ROME tracing (resid, 10 samples, 3-sigma noise on position 3): {len(rome_t) / t_rome:.2f} pairs/s; "
          f"peak RSS {rss / 1024:.0f} MB (before ROME {rss0 / 1024:.0f} MB); map {tuple(res.scores.shape)}")


if __name__ == "__main__":
    main()
