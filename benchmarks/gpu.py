"""GPU numbers (run where CUDA is present; CI never has a GPU): forward throughput vs open_clip, the
490-pair CTE sweep on random ViT-B/32- and ViT-L/14-size text towers, fp16/bf16 deviations from fp32, and
peak memory of ``run_with_cache`` on 1000 sentences and of the 490-pair sweep.

    python benchmarks/gpu.py [--device cuda] [--repeats 5]

Every ratio is against a baseline timed in the same run (median of interleaved repeats). Results and the
card they were measured on go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch

from patching import random_tower, timed, valse_pairs  # noqa: E402

from hooked_clip import HookedCLIP  # noqa: E402
from hooked_clip.analyses.causal_tracing import minimal_pair_trace  # noqa: E402


def forward_vs_open_clip(device: str, repeats: int, sentences: list[str]) -> None:
    import open_clip

    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-32", pretrained=None).to(device).eval()
    model = HookedCLIP.from_open_clip(oc, device=device)
    tokens = model.to_tokens(sentences, padding="max_length")  # open_clip's own input: padded to 77
    ours_t, ref_t = [], []
    for _ in range(repeats + 1):
        ours_t.append(timed(lambda: model.encode_text(tokens, normalize=False), device)[0])
        ref_t.append(timed(lambda: oc.encode_text(tokens), device)[0])
    err = (model.encode_text(tokens, normalize=False) - oc.encode_text(tokens)).abs().max().item()
    a, b = statistics.median(ours_t[1:]), statistics.median(ref_t[1:])
    print(f"forward, {len(sentences)} VALSE sentences padded to 77, ViT-B/32 text tower: ours {a * 1e3:.1f} ms "
          f"(EOT trimming) vs open_clip encode_text {b * 1e3:.1f} ms -> {b / a:.1f}x; max |diff| {err:.1e}")


def cte_sweep(device: str, size: str, neg, aff, batch_size: int) -> float:
    hf, model = random_tower(size, device)
    images = torch.randn(len(neg), model.cfg.d_proj, device=device)
    neg_t, aff_t = model.to_tokens(neg), model.to_tokens(aff)
    minimal_pair_trace(model, neg_t[:8], aff_t[:8], images[:8], progress=False)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t, _ = timed(lambda: minimal_pair_trace(model, neg_t, aff_t, images, batch_size=batch_size, progress=False), device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    print(f"CTE sweep, {len(neg)} aligned VALSE pairs, random ViT-{size} text tower, batch_size {batch_size}: "
          f"{t:.2f} s; peak GPU memory {peak:.0f} MiB")
    return t


def half_precision(device: str, neg, aff) -> None:
    _, ref = random_tower("B32", device)
    images = torch.randn(len(neg), ref.cfg.d_proj, device=device)
    base_emb = ref.encode_text(neg)
    base_cte = minimal_pair_trace(ref, neg, aff, images, progress=False)
    for dtype in (torch.float16, torch.bfloat16):
        _, model = random_tower("B32", device, dtype)
        emb = model.encode_text(neg).float()
        cte = minimal_pair_trace(model, neg, aff, images.to(dtype), progress=False)
        ok = ~torch.isnan(base_cte) & ~torch.isnan(cte)
        print(f"{dtype}: max |normalized embedding - fp32| {(emb - base_emb).abs().max().item():.1e}; CTE median "
              f"|diff| {(cte - base_cte)[ok].abs().median().item():.1e}, max {(cte - base_cte)[ok].abs().max().item():.1e}")


def memory(device: str, sentences: list[str]) -> None:
    _, model = random_tower("B32", device)
    tokens = model.to_tokens(sentences)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    print(f"run_with_cache on {len(sentences)} sentences (every hook, trimmed to {tokens.shape[1]} tokens): "
          f"peak {peak:.0f} MiB above the weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}; torch {torch.__version__}")
    neg, aff = valse_pairs(490)
    forward_vs_open_clip(args.device, args.repeats, (neg + aff)[:1000])
    for size in ("B32", "L14"):
        for batch_size in (1024, 8192):
            cte_sweep(args.device, size, neg, aff, batch_size)
    half_precision(args.device, neg[:64], aff[:64])
    memory(args.device, (neg + aff)[:1000])


if __name__ == "__main__":
    main()
