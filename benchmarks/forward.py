"""Forward speed: hooked ``encode_text`` vs open_clip ``encode_text`` on the same random ViT-B/32 weights.

64 VALSE existence captions, tokenized to open_clip's fixed 77 positions (what open_clip runs on).
Both sides are timed interleaved in the same run (median of ``--repeats``), after checking that the
outputs agree. Prints two ratios against open_clip measured in the same run:

  (a) trimming on  (default): speed-up over open_clip            target >= 3x
  (b) trimming off:           our time / open_clip's time         target <= 1.10

Run: ``python benchmarks/forward.py [--repeats 7] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch

from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip import HookedCLIP


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    captions = [item["caption"] for item in json.loads(EXISTENCE_JSON.read_text()).values()][: args.batch]
    tokens = open_clip.tokenize(captions)  # [64, 77], as open_clip users run it

    ref = oc.encode_text(tokens)
    for trim in (True, False):
        err = (model.encode_text(tokens, normalize=False, trim=trim) - ref).abs().max().item()
        assert err <= 1e-5, f"outputs differ by {err:.2e} (trim={trim})"
    trimmed_len = int(model.pool_positions(tokens).max()) + 1

    runs = {
        "open_clip": lambda: oc.encode_text(tokens),
        "hooked_trim_on": lambda: model.encode_text(tokens, normalize=False),
        "hooked_trim_off": lambda: model.encode_text(tokens, normalize=False, trim=False),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"batch {len(captions)} captions, {tokens.shape[1]} positions (trimmed to {trimmed_len}); "
          f"torch threads {torch.get_num_threads()}; median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:16s} {v * 1e3:9.1f} ms")
    print(f"(a) trimming on : {med['open_clip'] / med['hooked_trim_on']:.2f}x faster than open_clip (target >= 3x)")
    print(f"(b) trimming off: {med['hooked_trim_off'] / med['open_clip']:.2f}x open_clip's time (target <= 1.10x)")


if __name__ == "__main__":
    main()
