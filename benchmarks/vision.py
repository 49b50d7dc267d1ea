"""Forward speed: the hooked image tower vs open_clip's ``encode_image`` on the same random ViT-B/32 weights.

A batch of random 224x224 pixel tensors (already preprocessed: both sides run the tower only). Both sides
are timed interleaved in the same process (median of ``--repeats``), after checking that the outputs agree
(≤1e-5). Prints our time / open_clip's time (target ≤ 1.10x), for no hooks attached and for a run that
caches every block's ``hook_resid_post`` (what an analysis pays).

With ``--patching``: image-side activation patching of ``resid_pre`` over (layer, position) for every block
of the same tower (or the last ``--patch-layers``), S(text, image) metric, ``--patch-images`` image pairs: ours
(``activation_patch(..., tower="vision")``, the shared engine: rows start at their block, the last block
computes only the class row; nothing else can be reused in a bidirectional ViT) vs the plain loop a
researcher writes (TransformerLens style: one forward per (layer, position), batched over the images, that
starts at the patched block with ``start_at_layer`` from the corrupt run's cached residual, so it skips the
blocks before the patch as ours does), checked equal (≤1e-5) first, then timed interleaved.

Run: ``python benchmarks/vision.py [--repeats 7] [--batch 32] [--threads N] [--patching [--patch-layers K]]``
(``--threads`` unset: torch's default thread count, printed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch

from hooked_clip import HookedCLIP


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patching", action="store_true", help="time image-side patching instead")
    parser.add_argument("--patch-layers", type=int, default=None, help="patch the last K blocks (default: all)")
    parser.add_argument("--patch-images", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval().to(args.device)
    model = HookedCLIP.from_open_clip(oc, device=args.device)
    if args.patching:
        return patching(model, args)
    pixels = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(args.device)
    err = (model.encode_image(pixels, normalize=False) - oc.encode_image(pixels)).abs().max().item()
    assert err <= 1e-5, f"outputs differ by {err:.2e}"
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.vision.cfg.n_layers)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(fn):
        return lambda: (fn(), sync())

    runs = {
        "open_clip": run(lambda: oc.encode_image(pixels)),
        "hooked": run(lambda: model.encode_image(pixels, normalize=False)),
        "hooked_cached": run(lambda: model.vision.run_with_cache(pixels, names_filter=names)),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"ViT-B/32 random weights, batch {args.batch} x 3x224x224 on {args.device}; torch threads "
          f"{torch.get_num_threads()}; median of {args.repeats}, interleaved")
    for k, v in med.items():
        print(f"  {k:14s} {v * 1e3:9.1f} ms")
    print(f"hooked image tower : {med['hooked'] / med['open_clip']:.2f}x open_clip's time (target <= 1.10x)")
    print(f"  + caching 12 resid_post: {med['hooked_cached'] / med['open_clip']:.2f}x")


def patching(model, args) -> None:
    from hooked_clip.analyses.metrics import similarity_metric
    from hooked_clip.analyses.patching import activation_patch

    n, vision = args.patch_images, model.vision
    gen = torch.Generator().manual_seed(2)
    clean, corrupt = (torch.randn(n, 3, 224, 224, generator=gen).to(args.device) for _ in range(2))
    metric = similarity_metric(model, torch.randn(n, model.cfg.d_proj, generator=gen).to(args.device))
    layers = list(range(vision.cfg.n_layers - (args.patch_layers or vision.cfg.n_layers), vision.cfg.n_layers))

    def ours():
        return activation_patch(model, clean, corrupt, metric, "resid_pre", tower="vision", layers=layers,
                                progress=False).values

    def loop():
        def resid_pre(x):
            return vision.run_with_cache(x, names_filter=lambda name: name.endswith("hook_resid_pre"))[1]
        clean_cache, corrupt_cache = resid_pre(clean), resid_pre(corrupt)
        out = torch.empty(len(layers), vision.cfg.n_ctx, n)
        for li, layer in enumerate(layers):
            name = f"blocks.{layer}.hook_resid_pre"
            for pos in range(vision.cfg.n_ctx):
                resid = corrupt_cache[name].clone()
                resid[:, pos] = clean_cache[name][:, pos]
                out[li, pos] = metric(vision(resid, return_type="normalized", start_at_layer=layer)).cpu()
        return out

    err = (ours() - loop()).abs().max().item()
    assert err <= 1e-5, f"ours and the loop differ by {err:.2e}"
    times = {"ours": [], "loop": []}
    for _ in range(args.repeats):
        times["ours"].append(timed(ours))
        times["loop"].append(timed(loop))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"load average (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"image-side patching, ViT-B/32 random weights on {args.device}, torch threads {torch.get_num_threads()}: "
          f"resid_pre x {len(layers)} layers x {vision.cfg.n_ctx} positions x {n} image pairs; median of {args.repeats}, "
          f"interleaved; max |ours - loop| = {err:.1e}")
    print(f"  ours {med['ours']:.2f}s | plain loop (one forward per patch from the patched block, batched over images) "
          f"{med['loop']:.2f}s -> {med['loop'] / med['ours']:.1f}x")


if __name__ == "__main__":
    main()
