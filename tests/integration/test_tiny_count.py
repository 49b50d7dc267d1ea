"""The shipped two-phenomenon demo model ``tiny-count``: its scene tower's count code, its world's sentences read
back, that it beats chance on held-out counting and existence pairs (sentences and scenes written here, floors
below the card's numbers), that its training is deterministic, and the localisation atlas on it with and without
scenes."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_clip import load_model
from hooked_clip.analyses.localize.pairs_file import MinimalPair, PairSet, load_dataset
from hooked_clip.models.tiny_count import WEIGHTS
from hooked_clip.models.tiny_count import world as w
from hooked_clip.models.tiny_negation.scene import SceneEncoder


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-count", device="cpu")


def test_scene_code_is_a_thermometer_of_counts_and_existence_models_read_sets():
    enc = SceneEncoder(["cat", "dog", "owl"], d_hidden=4, d_proj=2, max_count=3)
    code = enc.multi_hot([["dog", "dog", "cat"], [], ["owl", "owl", "owl"]])
    expected = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 0, 0],  # level 1 (cat dog owl), level 2, level 3
                             [0, 0, 0, 0, 0, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(code, expected)
    with pytest.raises(ValueError, match="counts up to 3 of an object"):
        enc.multi_hot([["dog"] * 4])
    flat = SceneEncoder(["cat", "dog", "owl"], d_hidden=4, d_proj=2)  # max_count 1: a scene is a set, as before
    assert torch.equal(flat.multi_hot([["dog", "dog", "cat"]]), torch.tensor([[1.0, 1.0, 0.0]]))


def test_world_reads_back_its_own_and_valse_sentences():
    cases = {"There are exactly 2 dogs.": ("dog", {2}), "There is exactly 1 kid batting.": ("kid", {1}),
             "There are exactly 2 kids batting.": ("kid", {2}), "There are exactly 0 people in the water.": ("person", {0}),
             "Exactly three cats can be seen.": ("cat", {3}), "There are no birds pictured.": ("bird", {0}),
             "There are birds pictured.": ("bird", {1, 2, 3, 4}), "A dog can be seen.": ("dog", {1, 2, 3, 4}),
             "There are exactly 12 birds.": ("bird", {12})}
    for text, (subject, counts) in cases.items():
        st = w.parse(text)
        assert (st.subject, set(st.counts)) == (subject, counts), text
    assert w.parse("Cars are allowed to park for exactly 2 hours.") is None  # "hours" is no object of the world


def _score(model, scenes, texts):
    img = model.encode_image(scenes)
    return model.similarity(model.encode_text(texts), img).diagonal()


@torch.no_grad()
def test_beats_chance_on_held_out_counting_and_existence(model):
    """Sentences in the card's held-out forms (never used in training), written here, about scenes built here;
    chance is 50%. The floors sit below what the shipped file scores (counting 50/60, existence 77/96)."""
    subjects = ["dog", "cat", "car", "bird", "chair", "cup", "horse", "person", "boat", "apple", "book", "kite"]
    count_scenes, right, wrong = [], [], []
    for i, s in enumerate(subjects):
        for n in range(5):
            m = (n + 1 + i % 4) % 5  # another count
            count_scenes.append(sorted([s] * n + ["tree", "tree"] + (["bench"] if i % 2 else [])))
            say = lambda k: (f"In the picture there is exactly {k} {s}." if k == 1 else  # noqa: E731
                             f"In the picture there are exactly {k} {w.PLURALS[s]}.")
            right.append(say(n))
            wrong.append(say(m))
    counting = float((_score(model, count_scenes, right) > _score(model, count_scenes, wrong)).float().mean())
    ex_scenes, ex_right, ex_wrong = [], [], []
    for i, s in enumerate(subjects):
        for n in (0, 1, 2, 3):
            for aff, neg in ((f"Here you see {w.PLURALS[s]}.", f"Here you see no {w.PLURALS[s]}."),
                             (f"In the picture there are {w.PLURALS[s]}.", f"In the picture there are no {w.PLURALS[s]}.")):
                ex_scenes.append(sorted([s] * n + ["tree"] + (["bench", "bench"] if i % 2 else [])))
                ex_right.append(aff if n else neg)
                ex_wrong.append(neg if n else aff)
    existence = float((_score(model, ex_scenes, ex_right) > _score(model, ex_scenes, ex_wrong)).float().mean())
    assert (len(right), len(ex_right)) == (60, 96)
    assert counting >= 0.7 and existence >= 0.7, (counting, existence)


def test_shipped_file_is_small_and_loads_offline(model):
    assert WEIGHTS.stat().st_size <= 8e6
    assert model.text.cfg.model_name == "tiny-count" and model.vision.encoder.max_count == 4
    assert model.text.cfg.d_model == 64 and model.text.cfg.n_layers == 4
    with pytest.raises(ValueError, match="counts up to 4"):
        model.encode_image([["dog"] * 5])


def test_training_is_deterministic():
    from hooked_clip.models.tiny_count.train import train

    small = dict(batch=4, extra_scenes=2, log_every=0)
    (m1, used1), (m2, used2) = train(1, **small), train(1, **small)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert used1 == used2 and s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["text.blocks.0.attn.W_Q"], build_state()["text.blocks.0.attn.W_Q"])  # it trained


def build_state():
    from hooked_clip.models.tiny_count import ARCHITECTURE
    from hooked_clip.models.tiny_negation import build

    return build(w.OBJECTS, seed=0, **ARCHITECTURE).state_dict()


def test_world_pairs_keeps_what_the_world_covers_and_names_the_rest(model):
    from hooked_clip.analyses.valse_negation.demo_scenes import caption_scenes, world_pairs

    pairs = PairSet([MinimalPair("a", "There are exactly 2 dogs.", "There are exactly 3 dogs."),
                     MinimalPair("b", "There are exactly 12 birds.", "There are exactly 2 birds."),
                     MinimalPair("c", "There are exactly 2 floor grates visible.", "There are exactly 3 floor grates visible."),
                     MinimalPair("d", "There are no cats.", "There are cats."),
                     MinimalPair("e", "Cars may park for exactly 2 hours.", "Cars may park for exactly 1 hour.")])
    kept = world_pairs(model, pairs)
    assert [p.id for p in kept.pairs] == ["a", "d"]
    reasons = dict(kept.dropped)
    assert "a count outside the world's 0-4 (12)" in reasons["b"]
    assert "vocabulary" in reasons["c"] and "grates" in reasons["c"]
    assert set(reasons) == {"b", "c", "e"}
    scenes = caption_scenes(model, kept)
    assert scenes[0].count("dog") == 2 and scenes[1].count("cat") == 0


def test_atlas_on_tiny_count_with_and_without_scenes(model, tmp_path, capsys):
    from hooked_clip.analyses.cli import main
    from hooked_clip.analyses.localize.trace import localize
    from hooked_clip.analyses.valse_negation.demo_scenes import world_pairs

    main(["localize", "--model", "tiny-count", "--dataset", "valse:existence", "--dataset", "valse:counting-small-quant",
          "--limit", "3", "--no-progress", "--scenes", "--out", str(tmp_path)])
    capsys.readouterr()
    scenes = json.loads((tmp_path / "results.json").read_text())["models"]["tiny-count"]
    assert "S(text, image)" in scenes["metric"]
    assert set(scenes["phenomena"]) == {"valse:existence", "valse:counting-small-quant"}
    assert all(t["mean_d"] > 0 for t in scenes["phenomena"].values())  # it prefers the captions
    report = (tmp_path / "report.md").read_text()
    assert "existence and counting (0-4)" in report and "scene built from its caption" in report
    dropped = (tmp_path / "dropped.csv").read_text()
    assert dropped.count("not in the toy world") == scenes["dropped"] > 0  # the first 3 of each hold some
    pairs = world_pairs(model, load_dataset("valse:existence").head(3) + load_dataset("valse:counting-small-quant").head(3))
    text_only = localize(model, pairs, progress=False)  # the text-only metric (the CLI's --world-only)
    assert "text-only" in text_only.metric and sorted(set(text_only.phenomena)) == sorted(scenes["phenomena"])
    assert text_only.ids == [p.id for p in pairs.pairs] and not text_only.cte[:, 0, 0].isnan().any()


def test_valse_counting_pieces_are_filtered_to_the_world(model):
    from hooked_clip.analyses.valse_negation.demo_scenes import world_pairs

    pairs = load_dataset("valse:counting-hard")
    kept = world_pairs(model, pairs)
    assert len(kept) + len(kept.dropped) == len(pairs)
    assert all(w.parse(p.caption) is not None for p in kept.pairs)


@pytest.mark.parametrize("extra, words", [
    (["--scenes", "--model", "openai/clip-vit-base-patch32"], "is the demo models' image metric"),
    (["--world-only", "--model", "tiny-count", "--model", "some/clip"], "is for the demo models"),
    (["--scenes", "--images", ".", "--model", "tiny-count"], "sees synthesized scenes"),
])
def test_scene_options_user_errors_are_one_line(extra, words, capsys):
    from hooked_clip.analyses.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["localize", "--dataset", "valse:existence"] + extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and len(err.strip().splitlines()) == 1
