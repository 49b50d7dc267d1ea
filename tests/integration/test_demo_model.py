"""The shipped ``tiny-negation`` demo model: offline loading, checksum, training smoke run, accuracy floors,
scene synthesis, bad input, and that the analyses run on it like on any HookedCLIP."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
from pathlib import Path

import pytest
import torch

from hooked_clip.analyses.causal_tracing import minimal_pair_trace
from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip import HookedCLIP, load_model
from hooked_clip.models import tiny_negation as tn
from hooked_clip.models.tiny_negation import world
from hooked_clip.models.tiny_negation.evaluate import held_out_accuracy, held_out_breakdown
from hooked_clip.analyses.valse_negation.demo_scenes import demo_model_accuracy, synthesize_scene
from hooked_clip.models.tiny_negation.train import random_scenes_about, sample_batch, train

CARD = Path(__file__).parents[2] / "docs" / "models" / "tiny-negation.md"
# floors stated in the model card, on the fixed samples below (measured on the shipped weights: 0.967,
# 0.963, 0.993); they catch a broken model or loader, and leave room for float differences across machines
HELD_OUT_FLOOR, TRAIN_TEMPLATES_FLOOR, VALSE_FLOOR = 0.93, 0.92, 0.95


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-negation")


def test_loads_offline_without_any_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo model tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    m = load_model("tiny-negation")
    assert isinstance(m, HookedCLIP)
    assert m.text.cfg.n_layers == 4 and len(m.vision.encoder.objects) == len(world.OBJECTS)


def test_weights_are_small_and_match_the_card_checksum():
    data = tn.WEIGHTS.read_bytes()
    assert len(data) <= 8_000_000
    card = CARD.read_text()
    m = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", card)
    assert m, "the model card must record the weights' sha256"
    assert hashlib.sha256(data).hexdigest() == m.group(1)


def test_accuracy_above_the_card_floors(model):
    assert held_out_accuracy(model, n=300) >= HELD_OUT_FLOOR
    assert held_out_accuracy(model, n=300, held_out_templates=False) >= TRAIN_TEMPLATES_FLOOR
    acc, n = demo_model_accuracy(model, limit=150)
    assert n == 150 and acc >= VALSE_FLOOR


def test_breakdown_partitions_the_held_out_items(model):
    groups = held_out_breakdown(model, n=200)
    for kind in ("form", "scene"):
        part = {k: v for k, v in groups.items() if k.startswith(kind)}
        assert sum(v["n"] for v in part.values()) == 200
        correct = sum(v["n"] * v["accuracy"] for v in part.values())
        assert abs(correct / 200 - held_out_accuracy(model, n=200)) < 1e-3
    assert {k for k in groups if k.startswith("form")} == {
        "form: Here you see no X", "form: In the picture there are no X", "form: In the picture there is no X"}


def test_training_smoke_run_is_deterministic_and_round_trips(tmp_path):
    a, used = train(steps=3, batch=8, log_every=0)
    b, _ = train(steps=3, batch=8, log_every=0)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    tn.save(a, tmp_path / "w.safetensors", used)
    c = tn.load(tmp_path / "w.safetensors")
    texts, scenes = ["There are no dogs.", "There is a cat."], [["dog", "tree"], ["cat"]]
    assert torch.equal(a.encode_text(texts), c.encode_text(texts))
    assert torch.equal(a.encode_image(scenes), c.encode_image(scenes))


@pytest.mark.parametrize("kw", [dict(steps=0), dict(batch=1), dict(extra_scenes=-1), dict(plain_fraction=1.5)])
def test_training_arguments_out_of_range_are_refused(kw):
    with pytest.raises(ValueError, match=f"{next(iter(kw))}=.*out of range"):
        train(**kw)


def test_unknown_object_names_the_nearest_known_ones(model):
    with pytest.raises(ValueError, match=r"unknown object 'dgo'.*'dog'"):
        model.encode_image([["dgo", "tree"]])
    with pytest.raises(ValueError, match="list of scenes"):
        model.encode_image(["dog", "tree"])  # one scene not wrapped in a list


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        tn.load(tmp_path / "absent.safetensors")


def test_synthesized_scene_makes_the_caption_true():
    items = [x for x in json.loads(EXISTENCE_JSON.read_text()).values() if x["mturk"]["caption"] >= 2]
    assert len(items) == 505
    for x in items:
        scene = synthesize_scene(x, seed=3)
        assert scene == synthesize_scene(x, seed=3)
        assert all(o in world.OBJECTS for o in scene)
        negated_caption = re.search(r"\bno\b", x["caption"], re.I) is not None
        subject = world.object_of(re.search(r"\bno\s+(\w+)", x["caption"] if negated_caption else x["foil"], re.I).group(1))
        assert (subject in scene) != negated_caption  # "There are no X" true iff X is absent
        assert len(scene) >= 1 + (not negated_caption)


def test_world_statements_are_true_or_false_as_labelled():
    rng = random.Random(0)
    for _ in range(200):
        subject = rng.choice(world.OBJECTS)
        aff, neg = world.make_pair(subject, rng.random() < 0.5, rng)
        assert not aff.negated and neg.negated and aff.subject == neg.subject == subject
        assert re.search(r"\b[Nn]o\b|\bnot\b", neg.text) and not re.search(r"\b[Nn]o\b|\bnot\b", aff.text)
        assert aff.true_of({subject}) and not neg.true_of({subject}) and neg.true_of(set())


def test_training_never_shows_the_held_out_templates_or_phrases():
    """The held-out accuracy of the card is about word arrangements training never produced."""
    frames = {t.split("{x}")[0].lower().replace(" a ", " ").strip()
              for pairs in world.HELD_OUT_TEMPLATES.values() for pair in pairs for t in pair}
    frames |= {s.split("{place}")[0].strip() for s in world.HELD_OUT_SUFFIXES}
    assert frames >= {"in the picture there are", "here you see", "beside the", "to be seen", "around"}
    rng = random.Random(0)
    texts = [s.text.lower() for i in range(40) for pair in sample_batch(rng, 128, plain=i < 8)[1:] for s in pair]
    assert not [t for t in texts if any(re.search(rf"\b{f}\b", t) for f in frames)]
    held_out = [s.text.lower() for pair in sample_batch(random.Random(1), 64, held_out=True)[1:] for s in pair]
    assert all(any(re.search(rf"\b{f}\b", t) for f in frames) for t in held_out)


def test_extra_training_scenes_hold_the_subject_exactly_when_labelled():
    encoder = load_model("tiny-negation").vision.encoder
    subjects = ["dog", "people's", "sheep"]
    hot, present = random_scenes_about(encoder, subjects, 200, torch.Generator().manual_seed(0))
    assert hot.shape == (600, len(world.OBJECTS)) and present.shape == (600,)
    subject_col = torch.tensor([encoder.index[s] for s in subjects]).repeat_interleave(200)
    assert torch.equal(hot[torch.arange(600), subject_col].bool(), present)
    others = hot.sum(-1) - present.float()
    assert others.min() == 1 and others.max() == 6  # as world.random_scene: 1-6 objects besides the subject
    assert 0.4 < present.float().mean() < 0.6
    again, _ = random_scenes_about(encoder, subjects, 200, torch.Generator().manual_seed(0))
    assert torch.equal(hot, again)


def test_hooks_and_tracing_work_on_the_demo_model(model):
    negated, affirmative = ["There are no dogs in the park."], ["There are some dogs in the park."]
    _, cache = model.text.run_with_cache(negated)
    assert cache["blocks.3.attn.hook_pattern"].shape[:2] == (1, 4)
    img = model.encode_image([["dog", "tree"]])
    cte = minimal_pair_trace(model, negated, affirmative, img, progress=False)
    assert torch.allclose(cte[0, 0, 3], torch.tensor(1.0), atol=1e-5)  # patching the negator's embedding
    assert torch.all(cte[0, :, :3] == 0)  # positions before the negator are identical in both runs


def test_card_states_the_stored_embedding_row_count():
    """The card's count of stored token-embedding rows is the file's (read from the safetensors, not the code),
    and every row not stored is zero in the loaded model."""
    from safetensors import safe_open

    with safe_open(str(tn.WEIGHTS), "pt") as f:
        ids = f.get_tensor("text.embed.W_E_ids")
    n = int(ids.numel())
    assert len(set(ids.tolist())) == n
    assert f"the {n} ids" in CARD.read_text()
    W_E = load_model("tiny-negation").text.embed.W_E.detach()
    unstored = torch.ones(W_E.shape[0], dtype=torch.bool)
    unstored[ids] = False
    assert (W_E[unstored] == 0).all() and (W_E[~unstored].abs().sum(-1) > 0).all()


def test_card_commands_name_runnable_modules():
    """Every ``python -m MODULE`` the card gives exists and runs as a script; the VALSE number's command is
    the study layer's ``demo_scenes`` (evaluate.py no longer prints it)."""
    import importlib.util

    card = CARD.read_text()
    modules = set(re.findall(r"python -m ([\w.]+)", card))
    assert "hooked_clip.analyses.valse_negation.demo_scenes" in modules
    for name in modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        assert 'if __name__ == "__main__"' in Path(spec.origin).read_text(), name
