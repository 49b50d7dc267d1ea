"""Train ``tiny-count`` from scratch (fixed seed, deterministic algorithms, one CPU thread; reproduces the
shipped weights):

    python -m hooked_clip.models.tiny_count.train [--steps 2400] [--out PATH]

Each batch holds scenes with counts (``world.sample``), each with a statement true of it and its minimally
changed false counterpart (another number, or the negation flipped). The loss is ``tiny-negation``'s, with truth
read from counts:

* pairwise: softplus(-(S(true) - S(false))) on the item's scene and on ``extra_scenes`` more random scenes per item
  (they cost only the small scene tower), each holding the subject a number of times that makes exactly one of the
  two statements true (half one, half the other);
* CLIP's InfoNCE over the batch in both directions, where a statement true of another scene is masked, not
  punished.

Curriculum: the first ``plain_fraction`` of the steps use plain sentences (no lead-in, no trailing phrase).
"""

from __future__ import annotations

import random
import time

import torch
import torch.nn.functional as F

from hooked_clip.models.tiny_count import ARCHITECTURE, NAME, WEIGHTS
from hooked_clip.models.tiny_count import world as w
from hooked_clip.models.tiny_negation import build, save
from hooked_clip.models.tiny_negation.train import (check_arguments, training_parser, compact_embedding, cosine_schedule,
                                                    deterministic_algorithms, masked_info_nce, optimizer_step,
                                                    pairwise_correct, restore_embedding, scores,
                                                    training_vocabulary_ids)
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

PROBE_SEED = 1_000_003


def sample_batch(rng: random.Random, n: int, held_out: bool = False, plain: bool = False,
                 phenomenon: str | None = None):
    """n items of ``world.sample``: (scenes, true statements, false statements)."""
    items = [w.sample(rng, held_out=held_out, plain=plain, phenomenon=phenomenon) for _ in range(n)]
    return [s for s, _, _ in items], [t for _, t, _ in items], [f for _, _, f in items]


def truth_table(statements) -> torch.Tensor:
    """[statements, MAX_COUNT + 1] bool: statement j is true of a subject count k."""
    return torch.tensor([[k in s.counts for k in w.COUNTS] for s in statements])


def extra_scene_codes(encoder, subjects: list[str], true_table, false_table, k: int, generator: torch.Generator):
    """k random scenes per item (1-5 other objects, 1-4 of each), the subject held a number of times that makes
    only the true statement true (half of the scenes) or only the false one: (codes [items * k, n_inputs],
    sign [items * k]: +1 where the true statement is the true one)."""
    n = len(subjects) * k
    rows = torch.arange(n)
    subj = torch.tensor([encoder.index[s] for s in subjects]).repeat_interleave(k)
    noise = torch.rand(n, len(encoder.objects), generator=generator)
    noise[rows, subj] = 2.0  # never among the others
    rank = noise.argsort(-1).argsort(-1)
    present = rank < torch.randint(1, 6, (n, 1), generator=generator)
    counts = present * torch.randint(1, w.MAX_COUNT + 1, (n, len(encoder.objects)), generator=generator)
    only_true = (true_table & ~false_table).repeat_interleave(k, 0)
    only_false = (false_table & ~true_table).repeat_interleave(k, 0)
    sign = torch.rand(n, generator=generator) < 0.5
    choices = torch.where(sign[:, None], only_true, only_false).float()
    counts[rows, subj] = torch.multinomial(choices, 1, generator=generator).squeeze(1)
    return encoder.code(counts.float()), sign.float() * 2 - 1


def loss_fn(model, tokenizer, scenes, true, false, extra_scenes: int = 0, generator: torch.Generator | None = None):
    """``tiny_negation.train.loss_fn`` with truth read from counts (the module docstring): (loss, pairwise part)."""
    n = len(scenes)
    statements = true + false
    t, v = scores(model, tokenizer, scenes, statements)
    scale = model.logit_scale.exp()
    logits = scale * v @ t.T  # [scene, statement]
    idx = torch.arange(n)
    pairwise = F.softplus(-(logits[idx, idx] - logits[idx, idx + n])).mean()
    encoder = model.vision.encoder
    counts = encoder.counts(scenes).long()  # [scene, object]
    subj = torch.tensor([encoder.index[s.subject] for s in statements])
    table = truth_table(statements)  # [statement, count]
    truth = table[torch.arange(2 * n)[None, :], counts[:, subj]]  # [scene, statement]
    loss = pairwise + masked_info_nce(logits, truth)
    if extra_scenes:
        codes, sign = extra_scene_codes(encoder, [s.subject for s in true], table[:n], table[n:], extra_scenes, generator)
        v_extra = F.normalize(encoder(codes), dim=-1).view(n, extra_scenes, -1)
        margin = scale * torch.einsum("nkd,nd->nk", v_extra, t[:n] - t[n:])  # S(true) - S(false) per scene
        loss = loss + F.softplus(-sign.view(n, extra_scenes) * margin).mean()
    return loss, pairwise


def vocabulary_ids(tokenizer: CLIPTokenizer) -> set[int]:
    """The token ids the world's sentences can produce (the existence world's and the counting words)."""
    return training_vocabulary_ids(tokenizer, w.vocabulary_phrases())


def train(steps: int = 2400, batch: int = 64, lr: float = 2e-3, seed: int = 0, log_every: int = 100,
          extra_scenes: int = 16, plain_fraction: float = 0.2):
    """Train from scratch; returns (model, token ids trained). Deterministic (see ``tiny_negation.train``)."""
    check_arguments(steps, batch, extra_scenes, plain_fraction)
    with deterministic_algorithms():
        return _train(steps, batch, lr, seed, log_every, extra_scenes, plain_fraction)


def _train(steps, batch, lr, seed, log_every, extra_scenes, plain_fraction):
    torch.manual_seed(seed)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    tokenizer = CLIPTokenizer()
    model = build(w.OBJECTS, seed=seed, model_name=NAME, **ARCHITECTURE)
    used = vocabulary_ids(tokenizer)
    full = compact_embedding(model, used)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps)
    probes = {ph: sample_batch(random.Random(seed + PROBE_SEED), 256, held_out=True, phenomenon=ph)
              for ph in ("counting", "existence")}  # the log only (own RNG: training is unaffected)
    start = time.perf_counter()
    for step in range(steps):
        scenes, true, false = sample_batch(rng, batch, plain=step < plain_fraction * steps)
        loss, pairwise = loss_fn(model, tokenizer, scenes, true, false, extra_scenes, generator)
        optimizer_step(model, opt, sched, loss, model.parameters())
        if log_every and (step % log_every == 0 or step == steps - 1):
            acc = {ph: float(pairwise_correct(model, tokenizer, *p).float().mean()) for ph, p in probes.items()}
            print(f"step {step:5d}  loss {loss.item():.4f}  pairwise {pairwise.item():.4f}  scale "
                  f"{model.logit_scale.exp().item():.1f}  held-out counting {acc['counting']:.3f}  existence "
                  f"{acc['existence']:.3f}  {time.perf_counter() - start:.0f}s", flush=True)
    restore_embedding(model, full)
    return model.eval(), used


def main() -> None:
    args = training_parser(__doc__, steps=2400, batch=64, lr=2e-3, out=WEIGHTS, threads=True,
                           scene_loss=True).parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, used = train(args.steps, args.batch, lr=args.lr, seed=args.seed, extra_scenes=args.extra_scenes,
                        plain_fraction=args.plain_fraction)
    save(model, args.out, used, ARCHITECTURE)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
