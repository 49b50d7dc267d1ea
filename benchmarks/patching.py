"""Patching speed: the minimal-pair CTE sweep (Quantmeyer et al. 2024) on VALSE pairs, random
ViT-B/32-sized text tower (12 x 512, 8 heads), against what a researcher would otherwise run.

Baselines, in the same process, on the same weights:
  (a) the paper's procedure: a transformers ``CLIPTextModelWithProjection`` with a forward hook on
      ``text_model.embeddings`` (hidden state 0) or ``text_model.encoder.layers[l]`` (state l + 1) that writes
      the negated sentence's state at position p, one forward per (pair, state, position), single
      unpadded sentences;
  (b) a TransformerLens-style loop on our hooked tower: one ``run_with_hooks`` per (state, position) over all
      pairs at once;
  (c) ours: ``minimal_pair_trace`` (the batched engine).
Before timing, (a) and (b) are checked against (c): max |d*(a) - d*(c)| <= 1e-6 in cosine units (d*, not
CTE, which divides by a possibly tiny d). Every timing is the median of ``--repeats`` runs, interleaved
(c, a, b, c, a, b, ...), so one busy moment cannot decide a ratio.

Also printed: the engine's useful FLOP rate as a fraction of a large fp32 matmul's rate measured in the same
run (the machine's practical limit; useful = the lower bound of the issue: a patch of state (l, p) needs
blocks l+1..L on positions p..EOT, nothing for positions before the negator, one row in the last block), and
ROME tracing throughput. Run on a quiet machine:

    python benchmarks/patching.py [--pairs 4 32] [--threads 2] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from hooked_clip import HookedCLIP
from hooked_clip.analyses.causal_tracing import minimal_pair_trace, rome_trace
from hooked_clip.analyses.metrics import similarity_metric
from hooked_clip.analyses.valse_negation.data import aligned_pairs, load_items
from hooked_clip.names import hidden_state_name

NEGATOR_POS = 3  # "There are no X": SOT, there, are, no


def random_tower(size: str, device: str, dtype: torch.dtype = torch.float32):
    """A random transformers CLIPTextModelWithProjection (ViT-B/32 or ViT-L/14 text tower) and our copy."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    width, heads, layers, proj = {"B32": (512, 8, 12, 512), "L14": (768, 12, 12, 768)}[size]
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
                         num_hidden_layers=layers, projection_dim=proj, hidden_act="quick_gelu", eos_token_id=2)
    torch.manual_seed(0)
    hf = CLIPTextModelWithProjection(cfg).eval()
    with torch.no_grad():  # random LayerNorms too, as in the parity tests
        for name, p in hf.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    hf = hf.to(device)
    model = HookedCLIP.from_hf(hf, device=device, dtype=dtype)
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0), device=device, dtype=dtype))
    return hf, model


def valse_pairs(n: int) -> tuple[list[str], list[str]]:
    """(negated, affirmative) pairs in the paper's alignment: 'There are no X' / 'There are some X'."""
    pairs = aligned_pairs(load_items())[:n]
    return [p.negated for p in pairs], [p.affirmative for p in pairs]


def paper_procedure(hf, neg_t, aff_t, pools, image_embeds) -> torch.Tensor:
    """(a): cosine S*/scale [pairs, L+1, pos] from one transformers forward per (pair, state, position)."""
    modules = [hf.text_model.embeddings] + list(hf.text_model.encoder.layers)
    img = F.normalize(image_embeds, dim=-1)
    out = torch.full((neg_t.shape[0], len(modules), neg_t.shape[1]), float("nan"))
    for i in range(neg_t.shape[0]):
        n = int(pools[i]) + 1
        hidden = hf(input_ids=neg_t[i : i + 1, :n], output_hidden_states=True).hidden_states
        for l, module in enumerate(modules):
            for p in range(n):
                def hook(mod, inputs, output, l=l, p=p):
                    output = output.clone()
                    output[:, p] = hidden[l][:, p]
                    return output

                handle = module.register_forward_hook(hook)
                emb = hf(input_ids=aff_t[i : i + 1, :n]).text_embeds
                handle.remove()
                out[i, l, p] = (F.normalize(emb[0], dim=-1) @ img[i]).item()
    return out


def tl_loop(model, neg_t, aff_t, metric) -> torch.Tensor:
    """(b): S* [pairs, L+1, pos] from one run_with_hooks per (state, position) over all pairs."""
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
                                                      fwd_hooks=[(hidden_state_name(l, text.cfg.n_layers), hook)])).cpu()
    return out


def useful_flops(cfg, pools) -> float:
    """The issue's lower bound of work for the CTE sweep (multiply-adds x 2)."""
    d, d_mlp, L = cfg.d_model, cfg.d_mlp, cfg.n_layers
    per_token = 2 * (4 * d * d + 2 * d * d_mlp)  # q, k, v, o and the MLP
    total = 0.0
    for pool in pools:
        T = int(pool) + 1
        for state in range(L + 1):  # state l: blocks l+1..L (0-indexed: blocks l..L-1) must run
            for p in range(NEGATOR_POS, T):
                rows = T - p
                for block in range(state, L):
                    n = 1 if block == L - 1 else rows
                    total += n * per_token + 2 * 2 * n * T * d  # + attention scores and z over T keys
    return total


def matmul_rate(device: str, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rome-pairs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-baselines", action="store_true", help="time only ours")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    hf, model = random_tower("B32", args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"random ViT-B/32 text tower (12 x 512, 8 heads) on {args.device}; torch threads {torch.get_num_threads()}; "
          f"1-min load average at start {load:.2f}; median of {args.repeats} interleaved repeats")
    limit = matmul_rate(args.device)
    print(f"machine limit: fp32 2048^3 matmul {limit / 1e9:.1f} GFLOP/s")
    for n in args.pairs:
        neg, aff = valse_pairs(n)
        neg_t, aff_t = model.to_tokens(neg), model.to_tokens(aff)
        pools = model.pool_positions(neg_t)
        images = torch.randn(n, model.cfg.d_proj, generator=torch.Generator().manual_seed(0)).to(args.device)
        metric = similarity_metric(model, images)
        run_ours = lambda: minimal_pair_trace(model, neg_t, aff_t, images, progress=False)  # noqa: E731
        run_paper = lambda: paper_procedure(hf, neg_t, aff_t, pools, images)  # noqa: E731
        run_tl = lambda: tl_loop(model, neg_t, aff_t, metric)  # noqa: E731
        cte = run_ours()  # warm-up and the numbers
        s_neg, s_aff = metric(model.encode_text(neg_t)).cpu(), metric(model.encode_text(aff_t)).cpu()
        d_star_ours = (cte * (s_neg - s_aff)[:, None, None]) / 100.0  # S* - S_aff in cosine units
        times = {"ours": []}
        if not args.no_baselines:
            d_star_paper = run_paper() - (s_aff / 100.0)[:, None, None]
            d_star_tl = (run_tl() - s_aff[:, None, None]) / 100.0
            valid = ~torch.isnan(cte)
            err_a = (d_star_ours - d_star_paper)[valid].abs().max().item()
            err_b = (d_star_ours - d_star_tl)[valid].abs().max().item()
            print(f"{n} pairs: check max |d*(ours) - d*(a)| = {err_a:.1e}, vs (b) {err_b:.1e} (cosine units)")
            assert err_a <= 1e-6 and err_b <= 1e-6, "ours and the baselines disagree"
            times.update({"paper": [], "tl": []})
        for _ in range(args.repeats):
            times["ours"].append(timed(run_ours, args.device)[0])
            if not args.no_baselines:
                times["paper"].append(timed(run_paper, args.device)[0])
                times["tl"].append(timed(run_tl, args.device)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        frac = useful_flops(model.cfg, pools) / med["ours"] / limit
        line = f"{n} pairs ({int(pools.min()) + 1}-{int(pools.max()) + 1} tokens): ours {med['ours']:.3f}s"
        if not args.no_baselines:
            line += (f" | (a) paper's transformers-hook procedure {med['paper']:.2f}s -> {med['paper'] / med['ours']:.1f}x"
                     f" | (b) TL loop batched over pairs {med['tl']:.2f}s -> {med['tl'] / med['ours']:.1f}x")
        print(line)
        print(f"{n} pairs: engine useful FLOP rate = {frac:.0%} of the fp32 matmul limit")

    neg, aff = valse_pairs(args.rome_pairs)
    aff_t = model.to_tokens(aff)
    images = torch.randn(len(aff), model.cfg.d_proj, generator=torch.Generator().manual_seed(0)).to(args.device)
    rome = lambda: rome_trace(model, aff_t, similarity_metric(model, images), [NEGATOR_POS], progress=False)  # noqa: E731
    rome()
    t = statistics.median(timed(rome, args.device)[0] for _ in range(args.repeats))
    print(f"ROME tracing (resid, 10 samples, noise on position {NEGATOR_POS}, {len(aff)} pairs): {len(aff) / t:.2f} pairs/s")


if __name__ == "__main__":
    main()
