"""The packaged VALSE negation study: data counts, the exact CTE invariants on every item, aggregation,
interruption and resume, the CLI end to end on the demo model, and bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import hf_clip

from hooked_clip.analyses.valse_negation import study
from hooked_clip.analyses.valse_negation.data import DataFormatError, NEGATOR_POS, aligned_pairs, load_items
from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages
from hooked_clip.analyses.valse_negation.report import _cte_matrix, aggregate
from hooked_clip.analyses.valse_negation.study import RunDirMismatchError, Settings, run_items, to_rows
from hooked_clip import HookedCLIP
from hooked_clip.models.tiny_negation import build
from hooked_clip.models.tiny_negation.world import OBJECTS


@pytest.fixture(scope="module")
def random_demo():
    """The demo model's architecture with random weights (the invariants hold for any weights)."""
    return build(OBJECTS, seed=7)


def test_counts():
    items = load_items()
    assert len(items) == 505
    assert sum(x.negation_in == "caption" for x in items) == 256
    pairs = aligned_pairs(items)
    assert len(pairs) == 490
    assert sum(p.negation_in == "caption" for p in pairs) == 250
    foil = [p for p in pairs if p.negation_in == "foil"]
    assert sum(p.affirmative.startswith("There are some ") for p in foil) == 160
    assert sum(p.affirmative.startswith("There is a") for p in foil) == 80
    model = build(OBJECTS[:3])
    for p in pairs:
        neg, aff = model.to_tokens(p.negated)[0], model.to_tokens(p.affirmative)[0]
        assert neg.shape == aff.shape and model.to_str_tokens(p.negated)[NEGATOR_POS] == "no"
        assert (neg != aff).nonzero().flatten().tolist() == [NEGATOR_POS]


def test_cte_invariants_on_every_item(random_demo, tmp_path):
    records = run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), progress=False)
    assert len(records) == 505
    L = random_demo.cfg.n_layers
    aligned = [r["aligned"] for r in records.values() if "aligned" in r]
    assert len(aligned) == 490
    for a in aligned:
        rows = torch.tensor(a["cte_rows"], dtype=torch.float64)  # [L+1, 8]
        # CTE = d*/d: float error in d* (~1e-6 logits) is divided by d, so compare d* = CTE * d in logits
        assert abs((rows[0, 3] - 1) * a["d"]) <= 1e-5  # CTE(0, negator) = 1
        assert torch.all(rows[:, :3] == 0)  # CTE(l, p < 3) = 0
        assert abs((rows[L, 7] - 1) * a["d"]) <= 1e-5  # CTE(L, EOT) = 1
        assert torch.all(rows[L, 3:7].nan_to_num(0) == 0)  # nothing else at the last layer
        assert a["segment"] == study.segment(a["d"]) and abs(a["d"] - (a["s_caption"] - a["s_foil"])) <= 1e-5
    res = aggregate(records, L, random_demo.cfg.n_heads)
    assert res["counts"] == {"valid": 505, "aligned": 490, "valid_caption": 256, "valid_foil": 249,
                             "aligned_caption": 250, "aligned_foil": 240}
    segs = res["scores"]["aligned"]["all"]["segments"]
    assert sum(segs.values()) == 490
    assert res["confounds"]["similarity_vs_d_caption_without_no_people"]["n"] == 206  # the paper's 250 - 44


def test_to_rows_and_weighted_further_row():
    values = torch.arange(10.0)[None].repeat(2, 1)  # [layers, pos]; EOT at 8: further = positions 5, 6
    rows, n = to_rows(values, eot=8)
    assert n == 2 and rows[0] == [0, 1, 2, 3, 4, 5.5, 7, 8]
    rows, n = to_rows(values, eot=6)  # T = 7: no further tokens
    assert n == 0 and math.isnan(rows[0][5]) and rows[0][6:] == [5, 6]
    recs = [{"aligned": {"cte_rows": [[0, 0, 0, 1, 0, 2.0, 0, 0]], "n_further": 1}},
            {"aligned": {"cte_rows": [[0, 0, 0, 0, 0, 5.0, 0, 0]], "n_further": 3}},
            {"aligned": {"cte_rows": [[0, 0, 0, 1, 0, float("nan"), 0, 0]], "n_further": 0}}]
    m = _cte_matrix(recs)
    assert m["matrix"][5][0] == pytest.approx((2 * 1 + 5 * 3) / 4)  # weighted by further-token counts
    assert m["matrix"][3][0] == pytest.approx(2 / 3)


def test_interrupted_run_resumes_to_identical_results(random_demo, tmp_path, monkeypatch):
    settings = Settings(limit=40, chunk=8)
    full = run_items(random_demo, tmp_path / "full", model_id="random", images=SceneImages(), settings=settings, progress=False)
    calls = {"n": 0}
    real = study._measure

    def crash_after_two_chunks(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "_measure", crash_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_items(random_demo, tmp_path / "cut", model_id="random", images=SceneImages(), settings=settings, progress=False)
    assert len(list((tmp_path / "cut" / "items").glob("*.json"))) == 16
    assert not list((tmp_path / "cut" / "items").glob(".*"))  # no half-written files
    monkeypatch.setattr(study, "_measure", real)
    resumed = run_items(random_demo, tmp_path / "cut", model_id="random", images=SceneImages(), settings=settings, progress=False)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)


def test_run_dir_of_another_model_is_refused(random_demo, tmp_path):
    run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)
    other = build(OBJECTS, seed=8)
    with pytest.raises(RunDirMismatchError, match="fingerprint"):
        run_items(other, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)
    with pytest.raises(RunDirMismatchError, match="limit"):
        run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=6), progress=False)


def test_bad_inputs(tmp_path):
    items = load_items()[:10]
    with pytest.raises(FileNotFoundError, match="none of the 10 expected files"):
        FolderImages(tmp_path).check(items)
    (tmp_path / items[0].image_file).write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"9 of 10 image files are missing.*v7w_"):
        FolderImages(tmp_path).check(items)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderImages(tmp_path / "nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_items(bad)
    bad.write_text(json.dumps({"x": {"caption": "There is a cat."}}))
    with pytest.raises(DataFormatError, match="lacks the field"):
        load_items(bad)
    text_only = HookedCLIP.from_hf(hf_clip("tiny_eot", with_vision=False), device="cpu")
    with pytest.raises(ValueError, match="no image tower"):
        run_items(text_only, tmp_path / "run", model_id="t", images=SceneImages(), settings=Settings(limit=2), progress=False)


def test_text_only_run_still_gives_head_scores(tmp_path):
    model = HookedCLIP.from_hf(hf_clip("tiny_eot", with_vision=False), device="cpu")
    records = run_items(model, tmp_path, model_id="t", images=None, settings=Settings(limit=12), progress=False)
    res = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    assert "scores" not in res and "cte" not in res
    n_foil = sum("aligned" in r and r["negation_in"] == "foil" for r in records.values())
    assert set(res["heads"]) == {"caption", "foil"} and res["heads"]["foil"]["n"] == n_foil >= 5


def test_cli_end_to_end_on_the_demo_model(tmp_path):
    from hooked_clip.analyses.cli import main

    main(["valse-negation", "--limit", "40", "--out", str(tmp_path), "--no-progress"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["counts"]["valid"] == 40 and results["model"] == "tiny-negation"
    for name in ("report.md", "items.csv", "scores.csv", "heads_delta_caption.csv", "cte_heatmaps.png", "heads.png",
                 "attention.html"):
        assert (tmp_path / name).is_file(), name
    html = (tmp_path / "attention.html").read_text()
    assert "<script" in html and 'src="http' not in html  # offline: the JavaScript is inline, nothing fetched
    assert "toy model" in (tmp_path / "report.md").read_text()


def test_cli_on_a_saved_hf_checkpoint_with_images_and_without(tmp_path, capsys):
    """The real-model path: a transformers checkpoint directory and a folder of JPEGs named as in VALSE."""
    from PIL import Image

    from hooked_clip.analyses.valse_negation.study import select_items
    from hooked_clip.analyses.cli import main

    hf_clip("laion_gelu").save_pretrained(tmp_path / "ckpt")
    images = tmp_path / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(0)
    for x in select_items(load_items(), 6):
        Image.fromarray((torch.rand(40, 50, 3, generator=gen) * 255).byte().numpy()).save(images / x.image_file)
    main(["valse-negation", "--model", str(tmp_path / "ckpt"), "--images", str(images), "--limit", "6",
          "--out", str(tmp_path / "run"), "--no-progress"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["scores"]["original"]["all"]["n"] == 6 and "cte" in res
    main(["valse-negation", "--model", str(tmp_path / "ckpt"), "--limit", "6", "--out", str(tmp_path / "text"),
          "--no-progress"])
    assert "skipping scores" in capsys.readouterr().err
    res = json.loads((tmp_path / "text" / "results.json").read_text())
    assert "scores" not in res and "heads" in res
    with pytest.raises(SystemExit) as exit_:  # a user error: one line, exit status 2
        main(["valse-negation", "--model", str(tmp_path / "ckpt"), "--images", str(images), "--limit", "8",
              "--out", str(tmp_path / "run8"), "--no-progress"])
    assert exit_.value.code == 2 and "image files are missing" in capsys.readouterr().err


def test_rome_variant(random_demo, tmp_path):
    records = run_items(random_demo, tmp_path, model_id="random", images=SceneImages(),
                        settings=Settings(limit=6, rome=True, rome_samples=3), progress=False)
    rows = [r["aligned"]["rome_rows"] for r in records.values() if "aligned" in r]
    assert rows and all(len(r) == random_demo.cfg.n_layers + 1 for r in rows)
    for r in rows:  # restoring the noised negator's own embedding restores the clean run exactly
        assert abs(r[0][3] - 1) <= 1e-3
    res = aggregate(records, random_demo.cfg.n_layers, random_demo.cfg.n_heads)
    assert set(res["rome"]) == {"caption", "foil"}


def test_clipseg_subject_size_from_local_weights(tmp_path):
    """The subject-size plug-in loads CLIPSeg from a local save_pretrained folder (random tiny weights here)
    and returns the mean sigmoid of its map for the subject prompt."""
    from PIL import Image
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    from hooked_clip.analyses.valse_negation.images import clipseg_subject_size
    from hooked_clip.tokenizer import CLIPTokenizer as OurTokenizer

    OurTokenizer().save_hf_vocab(tmp_path)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
                                 tokenizer=CLIPTokenizer.from_pretrained(tmp_path))
    cfg = CLIPSegConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                           num_hidden_layers=2, image_size=64, patch_size=16),
                        projection_dim=16, reduce_dim=16, extract_layers=[0, 1])
    torch.manual_seed(0)
    seg = CLIPSegForImageSegmentation(cfg).eval()
    seg.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    item = next(x for x in load_items() if x.negation_in == "foil" and x.affirmative == "There are cars parked.")
    image = Image.new("RGB", (80, 60), (120, 30, 200))
    size = clipseg_subject_size(tmp_path)(item, image)
    with torch.no_grad():
        ref = torch.sigmoid(seg(**processor(text=["cars"], images=[image], return_tensors="pt")).logits).mean()
    assert 0 <= size <= 1 and abs(size - float(ref)) <= 1e-6
    with pytest.raises(FileNotFoundError, match="CLIPSeg"):
        clipseg_subject_size(tmp_path / "absent")


def test_demo_model_vocabulary_covers_every_valse_sentence():
    """The demo model ships its extra words (vocabulary.txt) instead of reading the study's data."""
    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.models.tiny_negation.train import extra_vocabulary
    from hooked_clip.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer()
    words = {i for w in extra_vocabulary() for i in tok.encode(w)}
    sentences = {i for x in load_items() for s in (x.caption, x.foil) for i in tok.encode(s)}
    assert sentences <= words
