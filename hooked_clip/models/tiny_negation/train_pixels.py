"""Train the pixel image tower of ``tiny-negation-pixels`` (fixed seed; reproduces the shipped ViT weights).

    python -m hooked_clip.models.tiny_negation.train_pixels [--steps N] [--out PATH]

The text tower and the logit scale are ``tiny-negation``'s, loaded from its shipped file and FROZEN, so every
text-side number of the demo model stays what it is; only the ViT (``pixels.vision_config``) trains. Per
batch of scenes from the world (``train.sample_batch``: 1-7 objects, one statement pair each about a subject
present with probability 1/2), each scene rendered at random cells (``render.place``):
  * distillation: 1 - cos(ViT embedding of the rendered scene, the symbolic scene encoder's embedding of the
    same scene) -- the symbolic tower is the teacher, so the pixel model inherits its image space;
  * pairwise: softplus(-(S(true statement) - S(its negation-flipped counterpart))) through the frozen text
    tower, as in ``train.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hooked_clip.models.tiny_negation import load, render
from hooked_clip.models.tiny_negation import world as w
from hooked_clip.models.tiny_negation.pixels import PIXEL_WEIGHTS, build_vision, save_vision, with_vision
from hooked_clip.models.tiny_negation.train import pairwise_accuracy, sample_batch
from hooked_clip.tokenizer import CLIPTokenizer


class StatementPool:
    """``n`` statement pairs from the world (``train.sample_batch``'s templates), embedded once by the frozen
    text tower: ``subjects`` [n], ``t_aff`` / ``t_neg`` [n, d_proj] (normalised). The text tower is the
    costly part of a step and never changes here, so each step draws its pairs from this pool."""

    def __init__(self, teacher, tokenizer, rng: random.Random, n: int, chunk: int = 512):
        _, true, false = sample_batch(rng, n)
        aff = [a if not a.negated else b for a, b in zip(true, false)]
        neg = [b if not a.negated else a for a, b in zip(true, false)]
        self.subjects = [a.subject for a in aff]
        with torch.no_grad():
            embed = lambda xs: torch.cat([teacher.encode_text(tokenizer([s.text for s in xs[i:i + chunk]]))
                                          for i in range(0, len(xs), chunk)])
            self.t_aff, self.t_neg = embed(aff), embed(neg)


def rendered_batch(rng: random.Random, pool: StatementPool, n: int):
    """n scenes (1-6 random objects, plus the pair's subject with probability 1/2, as ``train.sample_batch``),
    each with a statement pair from ``pool``, drawn on the canvas at random cells: (scenes, pair indices
    [n], subject present [n] bool, normalised pixels [n, 3, 32, 32])."""
    idx = [rng.randrange(len(pool.subjects)) for _ in range(n)]
    scenes, present = [], []
    for i in idx:
        scene = w.random_scene(rng, 1, 6, exclude=pool.subjects[i])
        present.append(rng.random() < 0.5)
        if present[-1]:
            scene.add(pool.subjects[i])
        scenes.append(sorted(scene))
    cells = torch.tensor([render.place(s, rng, row) for row, s in enumerate(scenes)])
    return scenes, torch.tensor(idx), torch.tensor(present), render.normalize(render.draw(cells))


def loss_fn(vision, teacher, pool: StatementPool, scale: float, scenes, idx, present, pixels,
            distill_weight: float = 1.0):
    """(loss, distillation term, pairwise term) for one batch; ``teacher`` is the frozen symbolic model."""
    v = F.normalize(vision(pixels), dim=-1)
    with torch.no_grad():
        target = F.normalize(teacher.encode_image(scenes), dim=-1)
    distill = (1 - (v * target).sum(-1)).mean()
    margin = scale * (v * (pool.t_aff[idx] - pool.t_neg[idx])).sum(-1)  # S(affirmative) - S(negated)
    pairwise = F.softplus(-(present.float() * 2 - 1) * margin).mean()  # S(true) - S(false) > 0 wanted
    return distill_weight * distill + pairwise, distill, pairwise


def train(steps: int = 3000, batch: int = 128, lr: float = 1e-3, seed: int = 0, log_every: int = 250,
          distill_weight: float = 1.0, pool: int = 16384):
    """Train the ViT from scratch against the frozen ``tiny-negation`` text tower; returns the pixel model
    (a ``HookedCLIP``). Deterministic on the same machine and thread count (``use_deterministic_algorithms``)."""
    for name, value, ok in (("steps", steps, steps >= 1), ("batch", batch, batch >= 2),
                            ("distill_weight", distill_weight, distill_weight >= 0), ("pool", pool, pool >= 1)):
        if not ok:
            raise ValueError(f"{name}={value!r} is out of range: steps >= 1, batch >= 2, distill_weight >= 0, "
                             "pool >= 1.")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(steps, batch, lr, seed, log_every, distill_weight, pool)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(steps, batch, lr, seed, log_every, distill_weight, pool_size):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = CLIPTokenizer()
    teacher = load()  # the symbolic demo model: frozen text tower, logit scale and teacher scene encoder
    teacher.requires_grad_(False)
    scale = teacher.logit_scale.exp().item()
    pool = StatementPool(teacher, tokenizer, rng, pool_size)
    vision = build_vision(seed=seed)
    vision.train()
    opt = torch.optim.AdamW(vision.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    probe = sample_batch(random.Random(seed + 1_000_003), 256, held_out=True)  # log only (its own RNG)
    start = time.perf_counter()
    for step in range(steps):
        scenes, idx, present, pixels = rendered_batch(rng, pool, batch)
        loss, distill, pairwise = loss_fn(vision, teacher, pool, scale, scenes, idx, present, pixels, distill_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            vision.eval()
            acc = pairwise_accuracy(with_vision(teacher, vision), tokenizer, *probe)
            vision.train()
            print(f"step {step:5d}  loss {loss.item():.4f}  distill {distill.item():.4f}  pairwise {pairwise.item():.4f}"
                  f"  held-out acc {acc:.3f}  {time.perf_counter() - start:.0f}s", flush=True)
    vision.eval()
    return with_vision(teacher, vision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--pool", type=int, default=16384, help="statement pairs embedded once by the frozen text tower")
    parser.add_argument("--out", type=Path, default=PIXEL_WEIGHTS)
    args = parser.parse_args()
    start = time.perf_counter()
    model = train(args.steps, args.batch, lr=args.lr, seed=args.seed, distill_weight=args.distill_weight,
                  pool=args.pool)
    save_vision(model.vision, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s "
          f"on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
