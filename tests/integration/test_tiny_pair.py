"""The shipped toy checkpoint pair: one architecture, the fine-tune changed the text tower only, the base fails on
negation and the fine-tune much less (floors below the card's numbers), and its training is deterministic."""

from __future__ import annotations

import torch

from hooked_clip import load_model
from hooked_clip.models.tiny_pair import BASE, TUNED
from hooked_clip.tower import architecture_differences


def test_pair_differs_in_text_weights_only():
    base, tuned = load_model("tiny-pair-base", device="cpu"), load_model("tiny-pair-tuned", device="cpu")
    assert architecture_differences(base.text, tuned.text) == {}
    assert max(BASE.stat().st_size, TUNED.stat().st_size) <= 8e6
    a, b = base.state_dict(), tuned.state_dict()
    vision = [k for k in a if not k.startswith("text.")]
    assert vision and all(torch.equal(a[k], b[k]) for k in vision)  # scene tower and logit scale frozen
    assert all(not torch.equal(a[k], b[k]) for k in a if k.startswith("text.blocks"))


def test_base_fails_on_negation_and_the_fine_tune_less():
    from hooked_clip.analyses.valse_negation.demo_scenes import demo_model_accuracy

    acc_base, n = demo_model_accuracy(load_model("tiny-pair-base", device="cpu"))
    acc_tuned, _ = demo_model_accuracy(load_model("tiny-pair-tuned", device="cpu"))
    assert n == 505 and acc_base < 0.6 and acc_tuned > 0.75  # the card: 56.8% and 76.8%


def test_training_is_deterministic_and_tunes_the_text_tower_only():
    from hooked_clip.models.tiny_pair.train import fine_tune, train_base

    small = dict(batch=4, extra_scenes=2, log_every=0)
    (m1, used), (m2, _) = train_base(1, **small), train_base(1, **small)
    s1 = {k: v.clone() for k, v in m1.state_dict().items()}
    assert all(torch.equal(s1[k], v) for k, v in m2.state_dict().items())
    fine_tune(m1, used, 1, **small)
    after = m1.state_dict()
    assert all(torch.equal(s1[k], after[k]) for k in s1 if not k.startswith("text."))
    assert not torch.equal(s1["text.blocks.0.attn.W_Q"], after["text.blocks.0.attn.W_Q"])
