"""Train the ``tiny-negation`` demo model from scratch (fixed seed; reproduces the shipped weights).

    python -m hooked_clip.models.tiny_negation.train [--steps 2800] [--out PATH]

Objective, per batch of scenes (each with one statement pair about a subject that is present or absent):
  * pairwise: softplus(-(S(true statement) - S(its negation-flipped counterpart))) — the flipped
    counterpart is the hard negative that forces the text tower to process negation;
  * the same pairwise loss on ``extra_scenes`` more random scenes per statement pair (half of them hold
    the subject): they cost only the small scene tower, not the text tower, and they teach the scene
    embedding to keep each object visible in crowded scenes (with one scene per pair, statements about an
    object present among 6 others were judged right 82% of the time, against 94% with 16 more scenes);
  * contrastive (CLIP's InfoNCE, both directions) over the batch, where a statement counts as a
    negative for a scene only if it is false of that scene (true ones are masked, not punished).

Curriculum: the first ``plain_fraction`` of the steps use plain sentences ("There is no dog.": no
lead-in, no multi-word subject, no trailing phrase); they are shorter, and the text tower finds the
subject and the negator in far fewer steps than on the full mix (held-out accuracy at step 1000: 0.95
against 0.88 without the curriculum).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from hooked_clip.models.tiny_negation import VOCABULARY, WEIGHTS, build, save
from hooked_clip.models.tiny_negation import world as w
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer


def training_vocabulary_ids(tokenizer: CLIPTokenizer, extra_sentences=()) -> set[int]:
    """Every token id the training data (and the extra words) can produce: BPE splits words
    independently, so the ids of a sentence are the ids of its words."""
    words = set()
    for o in w.OBJECTS:
        words |= {o, w.PLURALS[o], o.capitalize(), w.PLURALS[o].capitalize()}
    for group in (w.PLACES, w.VERBS, w.SUFFIXES, w.HELD_OUT_SUFFIXES, w.LEAD_INS, w.LEAD_IN_PREPOSITIONS,
                  w.LEAD_IN_DETERMINERS):
        for phrase in group:
            words |= set(phrase.replace("{place}", "").split())
    for templates in list(w.TEMPLATES.values()) + list(w.HELD_OUT_TEMPLATES.values()):
        for pair in templates:
            for t in pair:
                words |= set(t.replace("{x}", "").replace("{X}", "").split())
    words |= {"in", "on", "near", "by", "under", "the", "a", "an", ".", ",", "A", "An"}
    words |= {p.lower() for p in w.LEAD_IN_PREPOSITIONS}  # after a fixed lead-in: "Clearly, near the ..."
    ids = {tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.pad_token_id}
    for text in list(words) + list(extra_sentences):
        ids |= set(tokenizer.encode(text))
    return ids


def extra_vocabulary(path: Path = VOCABULARY) -> list[str]:
    """The extra words of ``vocabulary.txt`` (the words of the VALSE existence sentences)."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class CompactEmbed(torch.nn.Module):
    """Training stand-in for the token embedding that holds only the rows of ids the data can produce.
    The full 49408-row table would get a dense gradient and a dense AdamW update every step (most of the
    step's time); the result is identical in form: the rows are written back into ``W_E`` after training."""

    def __init__(self, W_E: torch.Tensor, ids):
        super().__init__()
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.rows = torch.nn.Parameter(W_E.detach()[self.ids].clone())
        self.register_buffer("remap", torch.full((W_E.shape[0],), -1, dtype=torch.long), persistent=False)
        self.remap[self.ids] = torch.arange(len(self.ids))

    @property
    def W_E(self) -> torch.Tensor:  # what the tower reads for device/dtype
        return self.rows

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        idx = self.remap[tokens]
        if bool((idx < 0).any()):
            raise ValueError("a training sentence holds a token outside the training vocabulary; add its words to "
                             "training_vocabulary_ids.")
        return self.rows[idx]


def compact_embedding(model, used) -> torch.nn.Module:
    """Zero the token-embedding rows of ids outside ``used`` (never trained: the shipped sparse embedding is then
    the trained one) and put a :class:`CompactEmbed` of the others in its place; returns the full embedding, for
    :func:`restore_embedding` after training."""
    full = model.text.embed
    with torch.no_grad():
        unused = torch.ones(model.text.cfg.d_vocab, dtype=torch.bool)
        unused[sorted(used)] = False
        full.W_E[unused] = 0.0
    model.text.embed = CompactEmbed(full.W_E, sorted(used))
    return full


def restore_embedding(model, full: torch.nn.Module) -> None:
    """Write the trained rows of the :class:`CompactEmbed` back into the full embedding ``full`` and put it back."""
    with torch.no_grad():
        full.W_E[model.text.embed.ids] = model.text.embed.rows
    model.text.embed = full


def sample_batch(rng: random.Random, n: int, held_out: bool = False, plain: bool = False):
    """n scenes, each with (true, false) statements about a subject present with probability 1/2
    (``held_out`` and ``plain`` as in ``world.make_pair``)."""
    scenes, true, false = [], [], []
    for _ in range(n):
        subject = rng.choice(w.OBJECTS)
        scene = w.random_scene(rng, 1, 6, exclude=subject)
        present = rng.random() < 0.5
        if present:
            scene.add(subject)
        aff, neg = w.make_pair(subject, rng.random() < 0.5, rng, held_out=held_out, plain=plain)
        scenes.append(sorted(scene))
        true.append(aff if present else neg)
        false.append(neg if present else aff)
    return scenes, true, false


def scores(model, tokenizer, scenes, statements):
    tokens = tokenizer([s.text for s in statements]).to(model.logit_scale.device)
    t = model.encode_text(tokens)
    v = F.normalize(model.encode_image(scenes), dim=-1)
    return t, v


def random_scenes_about(encoder, subjects: list[str], k: int, generator: torch.Generator):
    """k random multi-hot scenes per subject (1-6 other objects, as ``world.random_scene``), the subject
    present in each with probability 1/2: ([len(subjects) * k, n_objects] multi-hot, [len(subjects) * k]
    bool present)."""
    n = len(subjects) * k
    rows = torch.arange(n)
    subj = torch.tensor([encoder.index[s] for s in subjects]).repeat_interleave(k)
    noise = torch.rand(n, len(encoder.objects), generator=generator)
    noise[rows, subj] = 2.0  # never among the others
    rank = noise.argsort(-1).argsort(-1)
    hot = (rank < torch.randint(1, 7, (n, 1), generator=generator)).float()
    present = torch.rand(n, generator=generator) < 0.5
    hot[rows, subj] = present.float()
    return hot, present


def masked_info_nce(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """CLIP's InfoNCE in both directions over the [scene, statement] logits of n scenes and 2n statements (statement
    i true of scene i, statement n + i its false counterpart), where a statement true of another scene (``truth``
    [scene, statement]) is masked, not punished."""
    n = logits.shape[0]
    idx = torch.arange(n)
    masked = logits.masked_fill(truth & ~F.one_hot(idx, 2 * n).bool(), float("-inf"))
    img2txt = F.cross_entropy(masked, idx)
    masked_t = logits[:, :n].T.masked_fill(truth[:, :n].T & ~torch.eye(n, dtype=torch.bool), float("-inf"))
    txt2img = F.cross_entropy(masked_t, idx)
    return 0.5 * (img2txt + txt2img)


def loss_fn(model, tokenizer, scenes, true, false, extra_scenes: int = 0, generator: torch.Generator | None = None):
    t, v = scores(model, tokenizer, scenes, true + false)
    n = len(scenes)
    scale = model.logit_scale.exp()
    logits = scale * v @ t.T  # [scene, statement]
    idx = torch.arange(n)
    pairwise = F.softplus(-(logits[idx, idx] - logits[idx, idx + n])).mean()
    statements = true + false
    hot = model.vision.encoder.multi_hot(scenes).bool()  # [scene, object]
    subj = torch.tensor([model.vision.encoder.index[s.subject] for s in statements])
    truth = hot[:, subj] ^ torch.tensor([s.negated for s in statements])[None, :]  # [scene, statement]
    loss = pairwise + masked_info_nce(logits, truth)
    if extra_scenes:
        hot, present = random_scenes_about(model.vision.encoder, [s.subject for s in true], extra_scenes, generator)
        v_extra = F.normalize(model.vision.encoder(hot), dim=-1).view(n, extra_scenes, -1)
        negated = torch.tensor([s.negated for s in true])[:, None]
        t_aff = torch.where(negated, t[n:], t[:n])
        t_neg = torch.where(negated, t[:n], t[n:])
        margin = scale * torch.einsum("nkd,nd->nk", v_extra, t_aff - t_neg)  # S(aff) - S(neg) per scene
        sign = present.view(n, extra_scenes).float() * 2 - 1
        loss = loss + F.softplus(-sign * margin).mean()
    return loss, pairwise


@torch.no_grad()
def pairwise_correct(model, tokenizer, scenes, true, false) -> torch.Tensor:
    """[n] bool: S(true statement) > S(its false counterpart) for each scene (negation-flipped in this world)."""
    t_true, v = scores(model, tokenizer, scenes, true)
    t_false, _ = scores(model, tokenizer, scenes, false)
    return (t_true * v).sum(-1) > (t_false * v).sum(-1)


def pairwise_accuracy(model, tokenizer, scenes, true, false) -> float:
    return float(pairwise_correct(model, tokenizer, scenes, true, false).float().mean())


def train(steps: int = 2800, batch: int = 128, lr: float = 7e-4, seed: int = 0, log_every: int = 250,
          extra_scenes: int = 16, plain_fraction: float = 0.2):
    """Train from scratch; returns (model, token ids trained). Deterministic: the same arguments give the
    same weights bit for bit on the same machine (the embedding's scatter-add backward is the one kernel
    that is not by default, hence ``use_deterministic_algorithms``)."""
    check_arguments(steps, batch, extra_scenes, plain_fraction)
    with deterministic_algorithms():
        return _train(steps, batch, lr, seed, log_every, extra_scenes, plain_fraction)


def check_arguments(steps: int, batch: int, extra_scenes: int, plain_fraction: float) -> None:
    """One clear error for a training argument out of range (the scene-tower demo models' trainings)."""
    for name, value, ok in (("steps", steps, steps >= 1), ("batch", batch, batch >= 2),
                            ("extra_scenes", extra_scenes, extra_scenes >= 0),
                            ("plain_fraction", plain_fraction, 0 <= plain_fraction <= 1)):
        if not ok:
            raise ValueError(f"{name}={value!r} is out of range: steps >= 1, batch >= 2, extra_scenes >= 0, "
                             "0 <= plain_fraction <= 1.")


@contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` for the block, the previous setting restored after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(steps: int, batch: int, lr: float, seed: int, log_every: int, extra_scenes: int, plain_fraction: float):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)  # the extra scenes
    tokenizer = CLIPTokenizer()
    model = build(w.OBJECTS, seed=seed)
    used = training_vocabulary_ids(tokenizer, extra_vocabulary())
    full_embed = compact_embedding(model, used)  # training only: see CompactEmbed
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps)
    start = time.perf_counter()
    # a fixed probe of held-out templates, for the log only (its own RNG: training is unaffected)
    probe = sample_batch(random.Random(seed + 1_000_003), 256, held_out=True)
    for step in range(steps):
        scenes, true, false = sample_batch(rng, batch, plain=step < plain_fraction * steps)
        loss, pairwise = loss_fn(model, tokenizer, scenes, true, false, extra_scenes, generator)
        optimizer_step(model, opt, sched, loss, model.parameters())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  pairwise {pairwise.item():.4f}  "
                  f"scale {model.logit_scale.exp().item():.1f}  held-out-template acc "
                  f"{pairwise_accuracy(model, tokenizer, *probe):.3f}  {time.perf_counter() - start:.0f}s", flush=True)
    restore_embedding(model, full_embed)
    model.eval()
    return model, used


def cosine_schedule(opt, steps: int):
    """Linear warm-up over the first 5% of the steps, then cosine decay to 0 (every demo model's schedule)."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def optimizer_step(model, opt, sched, loss, params) -> None:
    """One step as every demo model trains: gradients of ``params`` clipped to norm 1, the optimiser and the
    schedule stepped, the logit scale kept in [0, log 100]."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def training_parser(description: str, *, steps: int, batch: int, lr: float, out: Path, threads: bool = False,
                    scene_loss: bool = False) -> argparse.ArgumentParser:
    """The command line every demo model's training script shares (its defaults are the shipped run's):
    ``--steps --batch --seed --lr --out``; ``threads``: ``--threads`` (default 1: the bytes reproduce at a fixed
    count); ``scene_loss``: ``--extra-scenes`` and ``--plain-fraction`` of :func:`train`'s loss."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--out", type=Path, default=out)
    if threads:
        parser.add_argument("--threads", type=int, default=1, help="CPU threads (bytes reproduce at a fixed count)")
    if scene_loss:
        parser.add_argument("--extra-scenes", type=int, default=16, help="more scenes per statement (pairwise loss)")
        parser.add_argument("--plain-fraction", type=float, default=0.2, help="fraction of steps on plain sentences")
    return parser


def main() -> None:
    args = training_parser(__doc__, steps=2800, batch=128, lr=7e-4, out=WEIGHTS, scene_loss=True).parse_args()
    model, used = train(args.steps, args.batch, lr=args.lr, seed=args.seed, extra_scenes=args.extra_scenes,
                        plain_fraction=args.plain_fraction)
    save(model, args.out, used)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
