"""Train the pixel image tower of ``tiny-negation-pixels`` (fixed seed; reproduces the shipped ViT weights).

    python -m hooked_clip.models.tiny_negation.train_pixels [--steps 1500] [--threads 1] [--out PATH]

The text tower and the logit scale are ``tiny-negation``'s, loaded from its shipped file and FROZEN, so every
text-side number of the demo model stays what it is; only the ViT (``pixels.vision_config``) trains. Per
batch of random scenes (``world.random_scene``, 1-7 objects), each drawn at random cells (``render.place``):
  * distillation: 1 - cos(ViT embedding of the rendered scene, the symbolic scene encoder's embedding of the
    same scene) -- the symbolic tower is the teacher, so the pixel model inherits its image space;
  * pairwise, through the frozen text tower: for every scene and every object of the world, one statement
    pair about the object (from a pool embedded once, ``StatementPool``), softplus(-(S(true) - S(its
    negation-flipped counterpart))) -- ``train.py``'s pairwise loss, asked of all 332 objects at once (the
    text side is a fixed direction per pair, so this costs one [batch, 332] product). Development runs at
    lr 2e-3 (the log's 256-item held-out-template probe): one pair per scene, 3,000-step schedule, 0.81 at
    step 750; all objects, the shipped 1,500-step schedule, 0.98 at step 500 and 0.97 at step 750.
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F

from hooked_clip.models.tiny_negation import load, render
from hooked_clip.models.tiny_negation import world as w
from hooked_clip.models.tiny_negation.pixels import PIXEL_WEIGHTS, build_vision, save_vision, with_vision
from hooked_clip.models.tiny_negation.train import (deterministic_algorithms, pairwise_accuracy, sample_batch,
                                                    training_parser)
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer


class StatementPool:
    """``per_object`` statement pairs about every object of the world (``world.make_pair``: the training
    templates, singular and plural, lead-ins and trailing phrases), embedded once by the frozen text tower:
    ``direction`` [n_objects, per_object, d_proj] = t(affirmative) - t(negated) (normalised embeddings), so
    S(affirmative) - S(negated) = scale * <v, direction> for a normalised image embedding v. The text tower is
    the costly part of a step and never changes here, so the pool is built once."""

    def __init__(self, teacher, tokenizer, rng: random.Random, per_object: int, chunk: int = 512):
        pairs = [w.make_pair(o, rng.random() < 0.5, rng) for o in w.OBJECTS for _ in range(per_object)]
        with torch.no_grad():
            embed = lambda xs: torch.cat([teacher.encode_text(tokenizer(xs[i:i + chunk]))  # noqa: E731
                                          for i in range(0, len(xs), chunk)])
            t_aff, t_neg = embed([a.text for a, _ in pairs]), embed([n.text for _, n in pairs])
        self.direction = (t_aff - t_neg).view(len(w.OBJECTS), per_object, -1)


def rendered_batch(rng: random.Random, n: int):
    """n random scenes of 1-7 objects (``world.random_scene``) drawn on the canvas at random cells (from
    ``rng``): (scenes, normalised pixels [n, 3, 32, 32])."""
    scenes = [sorted(w.random_scene(rng, 1, 7)) for _ in range(n)]
    cells = torch.tensor([render.place(s, rng, row) for row, s in enumerate(scenes)])
    return scenes, render.normalize(render.draw(cells))


def loss_fn(vision, teacher, pool: StatementPool, scale: float, scenes, pixels, generator: torch.Generator,
            distill_weight: float = 1.0):
    """(loss, distillation term, pairwise term) for one batch; ``teacher`` is the frozen symbolic model.
    The pairwise term asks, for every scene and every object of the world (one random statement pair per
    object), S(true statement) > S(its negation-flipped counterpart): softplus(-margin), averaged over the
    present objects and over the absent ones, then the two means averaged (half the VALSE-style items have
    the subject present)."""
    v = F.normalize(vision(pixels), dim=-1)
    with torch.no_grad():
        hot = teacher.vision.encoder.multi_hot(scenes).bool()  # [scene, object]
        target = F.normalize(teacher.vision.encoder(hot.float()), dim=-1)
    distill = (1 - (v * target).sum(-1)).mean()
    pick = torch.randint(pool.direction.shape[1], (pool.direction.shape[0],), generator=generator)
    direction = pool.direction[torch.arange(pool.direction.shape[0]), pick]  # [object, d_proj]
    margin = scale * v @ direction.T  # [scene, object]: S(affirmative) - S(negated)
    loss_true = F.softplus(-torch.where(hot, margin, -margin))
    pairwise = 0.5 * (loss_true[hot].mean() + loss_true[~hot].mean())
    return distill_weight * distill + pairwise, distill, pairwise


def train(steps: int = 1500, batch: int = 128, lr: float = 2e-3, seed: int = 0, log_every: int = 250,
          distill_weight: float = 1.0, pool: int = 16):
    """Train the ViT from scratch against the frozen ``tiny-negation`` text tower; returns the pixel model
    (a ``HookedCLIP``). Deterministic on the same machine and thread count (``use_deterministic_algorithms``)."""
    for name, value, ok in (("steps", steps, steps >= 1), ("batch", batch, batch >= 2),
                            ("distill_weight", distill_weight, distill_weight >= 0), ("pool", pool, pool >= 1)):
        if not ok:
            raise ValueError(f"{name}={value!r} is out of range: steps >= 1, batch >= 2, distill_weight >= 0, "
                             "pool >= 1.")
    with deterministic_algorithms():
        return _train(steps, batch, lr, seed, log_every, distill_weight, pool)


def _train(steps, batch, lr, seed, log_every, distill_weight, pool_size):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = CLIPTokenizer()
    teacher = load()  # the symbolic demo model: frozen text tower, logit scale and teacher scene encoder
    teacher.requires_grad_(False)
    scale = teacher.logit_scale.exp().item()
    pool = StatementPool(teacher, tokenizer, rng, pool_size)
    generator = torch.Generator().manual_seed(seed)  # the statement pair per object and step
    vision = build_vision(seed=seed)
    vision.train()
    opt = torch.optim.AdamW(vision.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    probe = sample_batch(random.Random(seed + 1_000_003), 256, held_out=True)  # log only (its own RNG)
    start = time.perf_counter()
    for step in range(steps):
        scenes, pixels = rendered_batch(rng, batch)
        loss, distill, pairwise = loss_fn(vision, teacher, pool, scale, scenes, pixels, generator, distill_weight)
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
    parser = training_parser(__doc__, steps=1500, batch=128, lr=2e-3, out=PIXEL_WEIGHTS, threads=True)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--pool", type=int, default=16, help="statement pairs per object, embedded once by the frozen text tower")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = train(args.steps, args.batch, lr=args.lr, seed=args.seed, distill_weight=args.distill_weight,
                  pool=args.pool)
    save_vision(model.vision, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s "
          f"on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
