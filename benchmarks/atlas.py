"""The localisation atlas's speed: pairs per second of ``localize`` (the generalised CTE map and head scores) on a
random ViT-B/32-size text tower, against the paper's procedure (one forward per pair x hidden state x position, the
caption's state written into the foil run by a hook) timed in the same process, interleaved, on the same pairs.

    python benchmarks/atlas.py [--threads 2] [--per-phenomenon 4] [--baseline-pairs 6] [--repeats 2] [--device cpu]

The pairs are the first N of every shipped dataset (VALSE, SugarCrepe, ARO/NegCLIP: mixed lengths, insertions and
swaps included); the whole atlas is 22,583 pairs, so the printed estimate is 22,583 / (pairs/s). Text-only metric.
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

import torch  # noqa: E402
from patching import random_tower  # noqa: E402  (the B/32-size random tower of benchmarks/patching.py)

from hooked_clip.analyses.causal_tracing import hidden_state_hook  # noqa: E402
from hooked_clip.analyses.localize.pairs_file import dataset_names, load_dataset  # noqa: E402
from hooked_clip.analyses.localize.trace import ROLES, localize, prepare, roles  # noqa: E402

WHOLE_ATLAS = 22583


def paper_loop(model, pairs) -> torch.Tensor:
    """CTE role means [pairs, states, roles], one forward per (pair, state, foil position with a counterpart)."""
    text = model.text
    kept, alignments, _ = prepare(model, pairs)
    out = torch.full((len(kept), text.cfg.n_layers + 1, len(ROLES)), float("nan"))
    for i, (p, a) in enumerate(zip(kept, alignments)):
        foil_t, cap_t = model.to_tokens(p.foil), model.to_tokens(p.caption)
        n = a.n_foil
        foil_t = foil_t[:, :n]
        _, cache = text.run_with_cache(cap_t)
        cap_e = model.encode_text(cap_t)[0]
        cos = lambda e: float(torch.nn.functional.cosine_similarity(e, cap_e, dim=0))  # noqa: E731
        m_f = cos(model.encode_text(foil_t)[0])
        mapping, role = a.foil_to_caption(), roles(a, n - 1)
        for l in range(text.cfg.n_layers + 1):
            sums: dict[int, list[float]] = {}
            for pos in range(n):
                if mapping[pos] < 0:
                    continue

                def hook(x, hook, pos=pos):
                    x = x.clone()
                    x[:, pos] = cache[hook.name][:, mapping[pos]]
                    return x
                e = text.run_with_hooks(foil_t, return_type="normalized", fwd_hooks=[(hidden_state_hook(l), hook)])[0]
                sums.setdefault(role[pos], []).append((cos(e) - m_f) / (1.0 - m_f))
            for r, vals in sums.items():
                out[i, l, r] = sum(vals) / len(vals)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-phenomenon", type=int, default=4)
    p.add_argument("--baseline-pairs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    _, model = random_tower("B32", args.device)
    pairs = sum((load_dataset(n).head(args.per_phenomenon) for n in dataset_names()), load_dataset("valse:existence").head(0))
    few = pairs.pairs[:: max(1, len(pairs) // args.baseline_pairs)][: args.baseline_pairs]
    load = os.getloadavg()[0]
    print(f"random ViT-B/32-size text tower (12 x 512, 8 heads) on {args.device}; torch threads {torch.get_num_threads()}; "
          f"1-min load average at start {load:.2f}; {len(pairs)} pairs ({args.per_phenomenon} of each of "
          f"{len(dataset_names())} datasets); baseline on {len(few)} of them; median of {args.repeats} interleaved repeats")
    localize(model, few, progress=False)  # warm-up
    ours, ours_few, loop = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter(); result = localize(model, pairs, progress=False); ours.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); small = localize(model, few, progress=False); ours_few.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); ref = paper_loop(model, few); loop.append(time.perf_counter() - t)  # noqa: E702
    diff = (small.cte - ref).abs().nan_to_num(0).max()
    rate, rate_few, rate_loop = (len(result.ids) / statistics.median(ours), len(small.ids) / statistics.median(ours_few),
                                 len(few) / statistics.median(loop))
    print(f"agreement with the loop: max |CTE ours - loop| = {float(diff):.2e} (role means, text-only metric)")
    print(f"ours, {len(result.ids)} pairs: {statistics.median(ours):.2f} s = {rate:.2f} pairs/s "
          f"-> whole atlas ({WHOLE_ATLAS} pairs) ~ {WHOLE_ATLAS / rate / 60:.1f} min")
    print(f"ours, the baseline's {len(few)} pairs: {rate_few:.2f} pairs/s; the paper's loop: {rate_loop:.3f} pairs/s "
          f"-> {rate_few / rate_loop:.1f}x")
    print(f"1-min load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
