"""Train the toy checkpoint pair (fixed seeds, CPU, one thread; reproduces the shipped files):

    python -m hooked_clip.models.tiny_pair.train [--base-steps 1500] [--tune-steps 400]

1. ``tiny-pair-base`` from scratch on affirmative captions only: each scene holds the caption's subject, and
   the loss is CLIP's symmetric InfoNCE over the batch (a caption that is true of another scene of the batch
   is masked, not punished) plus, on 16 more random scenes per caption, a pairwise loss that scenes holding the
   subject score above scenes without it. No sentence it sees holds a negator (its "no" embedding is never
   trained).
2. ``tiny-pair-tuned``: the base fine-tuned NegCLIP-style with ``tiny_negation.train.loss_fn`` — the
   negation-flipped statement ("There is no X" for "There is a X" and back) as the hard negative, on the
   batch's scene and 16 more — on the text tower only (scene tower and logit scale frozen).

Sentences are ``tiny-negation``'s world (its templates, lead-ins and trailing phrases) with the same curriculum
(plain sentences first).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hooked_clip.models.tiny_negation import build, save
from hooked_clip.models.tiny_negation import world as w
from hooked_clip.models.tiny_negation.train import (CompactEmbed, compact_embedding, cosine_schedule,
                                                    deterministic_algorithms, extra_vocabulary, loss_fn,
                                                    optimizer_step, pairwise_accuracy, random_scenes_about,
                                                    restore_embedding, sample_batch, scores,
                                                    training_vocabulary_ids)
from hooked_clip.models.tiny_pair import ARCHITECTURE, BASE, TUNED
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

PROBE_SEED = 1_000_003


def affirmative_batch(rng: random.Random, n: int, plain: bool = False):
    """n scenes, each holding the subject of its affirmative caption (true of it)."""
    scenes, captions = [], []
    for _ in range(n):
        subject = rng.choice(w.OBJECTS)
        scene = w.random_scene(rng, 0, 5, exclude=subject) | {subject}
        aff, _ = w.make_pair(subject, rng.random() < 0.5, rng, plain=plain)
        scenes.append(sorted(scene))
        captions.append(aff)
    return scenes, captions


def base_loss(model, tokenizer, scenes, captions, extra_scenes: int, generator: torch.Generator):
    """InfoNCE (true captions of other scenes masked) + the pairwise presence loss on extra scenes."""
    t, v = scores(model, tokenizer, scenes, captions)
    n = len(scenes)
    scale = model.logit_scale.exp()
    logits = scale * v @ t.T
    idx = torch.arange(n)
    hot = model.vision.encoder.multi_hot(scenes).bool()
    subj = torch.tensor([model.vision.encoder.index[c.subject] for c in captions])
    truth = hot[:, subj] & ~torch.eye(n, dtype=torch.bool)  # caption j true of scene i (not its own)
    loss = 0.5 * (F.cross_entropy(logits.masked_fill(truth, float("-inf")), idx)
                  + F.cross_entropy(logits.T.masked_fill(truth.T, float("-inf")), idx))
    if extra_scenes:
        hot_x, present = random_scenes_about(model.vision.encoder, [c.subject for c in captions], extra_scenes, generator)
        v_x = F.normalize(model.vision.encoder(hot_x), dim=-1).view(n, extra_scenes, -1)
        s = scale * torch.einsum("nkd,nd->nk", v_x, t)
        present = present.view(n, extra_scenes)
        # every (present, absent) pair of a caption's scenes: present above absent
        diff = s[:, :, None] - s[:, None, :]
        pairs = present[:, :, None] & ~present[:, None, :]
        loss = loss + F.softplus(-diff[pairs]).mean()
    return loss


def _log(tag, step, steps, loss, model, tokenizer, probe, start, log_every):
    if log_every and (step % log_every == 0 or step == steps - 1):
        print(f"{tag} step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  "
              f"negation acc {pairwise_accuracy(model, tokenizer, *probe):.3f}  {time.perf_counter() - start:.0f}s",
              flush=True)


def train_base(steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0, extra_scenes: int = 16,
               plain_fraction: float = 0.2, log_every: int = 100):
    """``tiny-pair-base``: returns (model, token ids the embedding holds)."""
    torch.manual_seed(seed)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    tokenizer = CLIPTokenizer()
    model = build(w.OBJECTS, seed=seed, model_name="tiny-pair-base", **ARCHITECTURE)
    used = training_vocabulary_ids(tokenizer, extra_vocabulary())
    full = compact_embedding(model, used)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps)
    probe = sample_batch(random.Random(seed + PROBE_SEED), 256)
    start = time.perf_counter()
    for step in range(steps):
        scenes, captions = affirmative_batch(rng, batch, plain=step < plain_fraction * steps)
        loss = base_loss(model, tokenizer, scenes, captions, extra_scenes, generator)
        optimizer_step(model, opt, sched, loss, model.parameters())
        _log("base", step, steps, loss, model, tokenizer, probe, start, log_every)
    restore_embedding(model, full)
    return model.eval(), used


def fine_tune(model, used, steps: int, batch: int = 64, lr: float = 5e-4, seed: int = 1, extra_scenes: int = 16,
              log_every: int = 100):
    """``tiny-pair-tuned``: the NegCLIP recipe (negated hard negatives) on the text tower of ``model``, in place."""
    torch.manual_seed(seed)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    tokenizer = CLIPTokenizer()
    model.text.cfg.model_name = "tiny-pair-tuned"
    full = model.text.embed
    model.text.embed = CompactEmbed(full.W_E, sorted(used))
    for p in list(model.vision.parameters()) + [model.logit_scale]:
        p.requires_grad_(False)
    model.train()
    opt = torch.optim.AdamW([p for p in model.text.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps)
    probe = sample_batch(random.Random(seed + PROBE_SEED), 256)
    start = time.perf_counter()
    for step in range(steps):
        scenes, true, false = sample_batch(rng, batch)
        loss, _ = loss_fn(model, tokenizer, scenes, true, false, extra_scenes, generator)
        optimizer_step(model, opt, sched, loss, model.text.parameters())  # the frozen logit scale stays in range
        _log("tune", step, steps, loss, model, tokenizer, probe, start, log_every)
    restore_embedding(model, full)
    for p in list(model.vision.parameters()) + [model.logit_scale]:
        p.requires_grad_(True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--tune-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (bytes reproduce at a fixed count)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write both files (default: the package)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base_path, tuned_path = (BASE, TUNED) if args.out_dir is None else (args.out_dir / BASE.name, args.out_dir / TUNED.name)
    with deterministic_algorithms():
        model, used = train_base(args.base_steps)
        save(model, base_path, used, ARCHITECTURE)
        print(f"wrote {base_path} ({base_path.stat().st_size / 1e6:.2f} MB)")
        fine_tune(model, used, args.tune_steps)
        save(model, tuned_path, used, ARCHITECTURE)
        print(f"wrote {tuned_path} ({tuned_path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
