"""The packaged VALSE negation study: data counts, the exact CTE invariants on every item, aggregation,
interruption and resume, the CLI end to end on the demo model, and bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import VALSE, hf_clip, largest_difference

from hooked_clip.analyses.valse_negation import study
from hooked_clip.analyses.valse_negation.aggregate import cte_matrix, aggregate
from hooked_clip.analyses.valse_negation.data import DataFormatError, NEGATOR_POS, aligned_pairs, load_items
from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages
from hooked_clip.analyses.valse_negation.layout import ROWS, to_rows
from hooked_clip.analyses.valse_negation.segments import segment
from hooked_clip.analyses.valse_negation.study import RunDirMismatchError, Settings, run_items
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
        assert a["segment"] == segment(a["d"]) and abs(a["d"] - (a["s_caption"] - a["s_foil"])) <= 1e-5
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
    m = cte_matrix(recs)
    assert m["matrix"][5][0] == pytest.approx((2 * 1 + 5 * 3) / 4)  # weighted by further-token counts
    assert m["matrix"][3][0] == pytest.approx(2 / 3)


def test_interrupted_run_resumes_to_identical_results(random_demo, tmp_path, monkeypatch):
    settings = Settings(limit=40, chunk=8)
    full = run_items(random_demo, tmp_path / "full", model_id="random", images=SceneImages(), settings=settings, progress=False)
    calls = {"n": 0}
    real = study.atomic_write

    def killed_inside_the_third_chunk(path, text):  # after 2 chunks and 3 records of the third
        if path.parent.name == "items":
            calls["n"] += 1
            if calls["n"] == 20:
                raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(study, "atomic_write", killed_inside_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_items(random_demo, tmp_path / "cut", model_id="random", images=SceneImages(), settings=settings, progress=False)
    written = {p: p.stat().st_ino for p in (tmp_path / "cut" / "items").glob("*.json")}
    assert len(written) == 19
    assert not list((tmp_path / "cut" / "items").glob(".*"))  # no half-written files
    monkeypatch.setattr(study, "atomic_write", real)
    resumed = run_items(random_demo, tmp_path / "cut", model_id="random", images=SceneImages(), settings=settings, progress=False)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)  # the third chunk's batch mates kept
    assert all(p.stat().st_ino == ino for p, ino in written.items())  # records written before the kill are kept


def test_run_dir_of_another_model_is_refused(random_demo, tmp_path):
    run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)
    other = build(OBJECTS, seed=8)
    from hooked_clip.fingerprint import fingerprint

    was, now = fingerprint(random_demo).short, fingerprint(other).short
    with pytest.raises(RunDirMismatchError, match=rf"other weights \(fingerprint differs: model 'random' \({was}\)\), "
                                                  rf"not of model 'random' \({now}\)"):  # both named
        run_items(other, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)
    with pytest.raises(RunDirMismatchError, match="limit"):
        run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=6), progress=False)


def test_the_study_runs_without_tf32_and_records_it(random_demo, tmp_path, monkeypatch):
    """Every measurement runs with torch's fp32 precision settings at IEEE (TF32 off), restored afterwards; the
    run config says so; a run directory written before the key existed is refused, saying why."""
    names = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")

    def precision():
        return [getattr(getattr(torch.backends, n.split(".")[0]), n.split(".")[1]).fp32_precision for n in names]
    before = precision()
    seen, real = [], study._measure

    def spy(*args, **kwargs):
        seen.append(precision())
        return real(*args, **kwargs)
    monkeypatch.setattr(study, "_measure", spy)
    run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)
    assert seen and all(p == ["ieee"] * 3 for p in seen)
    assert precision() == before
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tf32"] is False
    del config["tf32"]  # as an older version wrote it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirMismatchError, match=r"did not record \['tf32'\].*older version"):
        run_items(random_demo, tmp_path, model_id="random", images=SceneImages(), settings=Settings(limit=4), progress=False)


def test_spacy_subject_parser_records_the_english_models_version(monkeypatch):
    import spacy

    from hooked_clip.analyses.valse_negation.data import AUTHORS_SPACY, SubjectParser

    def fake_load(name):
        nlp = spacy.blank("en")
        nlp.meta["version"] = "3.6.0"
        return nlp
    monkeypatch.setattr(spacy, "load", fake_load)
    assert SubjectParser.spacy().name == f"spacy {spacy.__version__} en_core_web_sm 3.6.0 (first noun chunk)"
    assert AUTHORS_SPACY == ("3.6.1", "3.6.0")


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
    assert results["counts"]["valid"] == 40 and results["model"] == "tiny-negation-pixels"  # the default: pixels
    assert "tiny-negation-pixels renderer" in (tmp_path / "report.md").read_text()  # the report names the pipeline
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
    # the same folder with other images is another run: refused in the old run directory, never the old scores
    for x in select_items(load_items(), 6):
        Image.fromarray((torch.rand(40, 50, 3, generator=gen) * 255).byte().numpy()).save(images / x.image_file)
    with pytest.raises(SystemExit) as exit_:
        main(["valse-negation", "--model", str(tmp_path / "ckpt"), "--images", str(images), "--limit", "6",
              "--out", str(tmp_path / "run"), "--no-progress"])
    assert exit_.value.code == 2 and "images_content" in capsys.readouterr().err
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
    and returns the mean sigmoid of its map for the prompt and the share of the map above 0.25."""
    from PIL import Image
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor, ViTImageProcessorPil)

    from hooked_clip.analyses.valse_negation.images import clipseg_subject_size
    from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer as OurTokenizer

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
    image = Image.linear_gradient("L").resize((80, 60))  # grayscale: the authors stack it to 3 channels
    area, binary = clipseg_subject_size(tmp_path)("some cars", image)
    rgb = Image.merge("RGB", [image] * 3)
    pil = CLIPSegProcessor(image_processor=ViTImageProcessorPil(size={"height": 64, "width": 64}),  # transformers 4's
                           tokenizer=processor.tokenizer)
    with torch.no_grad():
        p = torch.sigmoid(seg(**pil(text=["some cars"], images=[rgb], return_tensors="pt")).logits)
    assert abs(area - float(p.mean())) <= 1e-6 and abs(binary - float((p > 0.25).float().mean())) <= 1e-6
    assert 0 < binary < 1  # the random map straddles the threshold, so the binary area is not trivially 0 or 1
    with pytest.raises(FileNotFoundError, match="CLIPSeg"):
        clipseg_subject_size(tmp_path / "absent")


# ------------------------------------------------------------------------------ the paper's layer zoom
def _zoom_record(loc, layer3_rows, n_tokens=8):
    """A record whose layer-4 (blocks.3) zoom rows are given ([heads][8]); other layers zero (so layer 4
    also has the largest mean Δ)."""
    zero = [[0.0] * 8 for _ in layer3_rows]
    return {"id": str(id(layer3_rows)), "negation_in": loc, "caption": "", "foil": "",
            "aligned": {"similarity": 0.9, "n_tokens": n_tokens, "head_delta": [[0.0] * len(layer3_rows)] * 3 + [[0.5] * len(layer3_rows)],
                        "head_rows": [zero, zero, zero, layer3_rows]}}


def test_paper_zoom_counts_missing_further_rows_as_zero_and_keeps_the_negator_row():
    nan = float("nan")
    # two heads; rows: SOT, there, is/are, negator (own query row), subj 1st, subj further (max), ".", EOT
    # (SOT..is/are are NaN in the records: queries before the negator cannot see it)
    items = [[[nan, nan, nan, -0.2, 0.4, 0.3, 0.5, 0.1], [nan, nan, nan, 0.0, 0.0, 0.0, 0.0, 0.0]],
             [[nan, nan, nan, 0.1, 0.2, nan, 0.3, 0.0], [nan, nan, nan, 0.0, 0.0, nan, 0.0, 0.0]],  # T = 7
             [[nan, nan, nan, 0.0, 0.0, 0.6, 0.1, 0.2], [nan, nan, nan, 0.9, 0.0, 0.0, 0.0, 0.0]]]
    records = {str(k): {**_zoom_record("caption", rows, n), "id": str(k)} for k, (rows, n) in enumerate(zip(items, (8, 7, 9)))}
    paper = aggregate(records, 4, 2)["zoom"]
    assert paper["rule"] == "paper" and paper["layer"] == 4  # always the paper's layer 4, not the largest Δ
    assert paper["n_caption"] == 3 and paper["n_caption_without_further"] == 1
    h1 = paper["caption"][0]
    # written out by hand: plain means over all 3 items, the T = 7 item counting 0 in "subj further"
    assert h1 == pytest.approx([0, 0, 0, (-0.2 + 0.1 + 0.0) / 3, (0.4 + 0.2 + 0.0) / 3, (0.3 + 0 + 0.6) / 3,
                                (0.5 + 0.3 + 0.1) / 3, (0.1 + 0.0 + 0.2) / 3])
    assert paper["caption"][1][3] == pytest.approx(0.3)  # H2's negator row: 0.9 / 3, kept
    other = aggregate(records, 4, 2, zoom="strongest-layer")["zoom"]
    assert other["rule"] == "strongest-layer"
    assert other["caption"][0][5] == pytest.approx((0.3 + 0.6) / 2)  # over the items that have further tokens
    assert other["caption"][0][3] == pytest.approx(-0.1 / 3)
    with pytest.raises(ValueError, match="zoom rule"):
        aggregate(records, 4, 2, zoom="largest")
    assert aggregate(records, 3, 2)["zoom"]["layer"] is None  # a 3-layer model has no layer 4: said, not faked


def test_zoom_rows_measured_on_the_model_keep_the_negator_row(random_demo, tmp_path):
    """The stored zoom rows against a plain loop over attention patterns, the negator's own row included."""
    records = run_items(random_demo, tmp_path, model_id="random", images=None, settings=Settings(limit=6), progress=False)
    rec = next(r for r in records.values() if "aligned" in r)
    a = rec["aligned"]
    neg = a["caption"] if rec["negation_in"] == "caption" else a["foil"]
    aff = a["foil"] if rec["negation_in"] == "caption" else a["caption"]
    _, c_neg = random_demo.text.run_with_cache(neg)
    _, c_aff = random_demo.text.run_with_cache(aff)
    eot = a["n_tokens"] - 1
    for layer in range(random_demo.cfg.n_layers):
        diff = (c_neg[f"blocks.{layer}.attn.hook_pattern"] - c_aff[f"blocks.{layer}.attn.hook_pattern"])[0, :, :, 3]
        for h in range(random_demo.cfg.n_heads):
            rows = a["head_rows"][layer][h]
            assert abs(rows[3] - float(diff[h, 3])) <= 1e-6  # the negator attending to itself
            assert abs(rows[4] - float(diff[h, 4])) <= 1e-6 and abs(rows[7] - float(diff[h, eot])) <= 1e-6
            further = [float(diff[h, q]) for q in range(5, eot - 1)]
            assert (math.isnan(rows[5]) if not further else abs(rows[5] - max(further)) <= 1e-6)


# ------------------------------------------------------------------------------ subjects
class _Chunk:
    def __init__(self, text):
        self.text = text


class _StubNLP:
    """Stands in for spaCy's en_core_web_sm (not installable offline): noun chunks from a table."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, text):
        self.calls.append(text)
        return type("Doc", (), {"noun_chunks": iter(_Chunk(t) for t in self.table.get(text, []))})()


def test_subject_prompt_is_the_first_noun_chunk_of_the_aligned_caption(random_demo, tmp_path):
    from hooked_clip.analyses.valse_negation.data import SubjectParser
    from hooked_clip.analyses.valse_negation.study import select_items

    chosen = {x.id for x in select_items(load_items(), 16)}
    foil = [p for p in aligned_pairs(load_items()) if p.negation_in == "foil" and p.id in chosen]
    assert len(foil) >= 4 and foil[0].caption.startswith("There are some ")  # the aligned caption, not VALSE's
    nlp = _StubNLP({foil[0].caption: ["some cars", "the street"], foil[1].caption: ["a dog"]})
    records = run_items(random_demo, tmp_path, model_id="random", images=None, settings=Settings(limit=16),
                        progress=False, subject_parser=SubjectParser(nlp, "stub"))
    assert records[foil[0].id]["aligned"]["subject"] == "some cars"  # the first chunk
    assert records[foil[1].id]["aligned"]["subject"] == "a dog"
    assert records[foil[2].id]["aligned"]["subject"] is None  # no noun chunk: no subject (the paper's 236 of 240)
    assert all("subject" not in r["aligned"] for r in records.values() if "aligned" in r and r["negation_in"] == "caption")
    assert sorted(nlp.calls) == sorted(p.caption for p in foil)  # only the foil-negated aligned captions
    subjects = aggregate(records, random_demo.cfg.n_layers, random_demo.cfg.n_heads)["confounds"]["subjects"]
    assert subjects["foil_pairs"] == len(foil) and subjects["with_subject"] == 2
    with pytest.raises(RunDirMismatchError, match="subject_parser"):
        run_items(random_demo, tmp_path, model_id="random", images=None, settings=Settings(limit=16),
                  progress=False, subject_parser=SubjectParser.regex())
    assert SubjectParser.regex()("There are some cars parked.") == "some cars"
    assert "NOT the authors'" in SubjectParser.regex().name
    # the image side adds both areas where there is a prompt
    folder = FolderImages(tmp_path, segmenter=lambda prompt, image: (0.5, 0.25))
    folder.open = lambda item: None  # the stub segmenter needs no pixels
    got = folder.subjects(foil[:3], [{"subject": "some cars"}, {"subject": None}, None])
    assert got == [{"subject": "some cars", "subject_area": 0.5, "subject_area_binary": 0.25},
                   {"subject": None, "subject_area": None, "subject_area_binary": None}, None]


def test_missing_spacy_pipeline_names_the_install_command(monkeypatch):
    import sys

    from hooked_clip.analyses.valse_negation.data import SubjectParser

    import spacy  # noqa: F401  (in the dev extra; its English pipeline is a separate user download)
    with pytest.raises(OSError, match=r"python -m spacy download en_core_web_sm"):
        SubjectParser.spacy("en_core_web_sm_not_installed")
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[spacy\]'"):
        SubjectParser.spacy()


def test_subject_confound_uses_both_areas_and_pairs_with_a_subject():
    recs = {}
    for k, (area, binary, d) in enumerate([(0.1, 0.0, -1.0), (0.3, 0.5, 0.5), (0.5, 1.0, 2.0), (0.2, 0.0, 0.0)]):
        recs[str(k)] = {"id": str(k), "negation_in": "foil", "caption": "", "d": d,
                        "aligned": {"d": d, "segment": segment(d), "cte_rows": [[0.0] * 8] * 2, "n_further": 0,
                                    "similarity": 0.9, "n_tokens": 8, "head_delta": [[0.0]], "head_rows": [[[0.0] * 8]],
                                    "subject": f"s{k}", "subject_area": area, "subject_area_binary": binary}}
    recs["4"] = {"id": "4", "negation_in": "foil", "caption": "", "d": 1.0,
                 "aligned": {"d": 1.0, "segment": "correct", "cte_rows": [[0.0] * 8] * 2, "n_further": 0,
                             "similarity": 0.9, "n_tokens": 8, "head_delta": [[0.0]], "head_rows": [[[0.0] * 8]],
                             "subject": None, "subject_area": None, "subject_area_binary": None}}
    conf = aggregate(recs, 1, 1)["confounds"]
    assert conf["subjects"] == {"foil_pairs": 5, "with_subject": 4, "without_subject": ["4"]}
    assert conf["subject_size_vs_d_foil"]["n"] == 4 and conf["subject_size_binary_vs_d_foil"]["n"] == 4
    assert conf["subject_size_vs_d_foil"]["r"] == pytest.approx(np.corrcoef([0.1, 0.3, 0.5, 0.2], [-1, 0.5, 2, 0])[0, 1])
    assert conf["subject_size_binary_vs_d_foil"]["r"] == pytest.approx(np.corrcoef([0, 0.5, 1, 0], [-1, 0.5, 2, 0])[0, 1])


def test_demo_model_vocabulary_covers_every_valse_sentence():
    """The demo model ships its extra words (vocabulary.txt) instead of reading the study's data."""
    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.models.tiny_negation.train import extra_vocabulary
    from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

    tok = CLIPTokenizer()
    words = {i for w in extra_vocabulary() for i in tok.encode(w)}
    sentences = {i for x in load_items() for s in (x.caption, x.foil) for i in tok.encode(s)}
    assert sentences <= words


# ------------------------------------------------------------------------------ image preprocessing
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
MODES = [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG")]
SIZES = [(50, 70), (300, 200), (64, 64), (17, 90), (640, 480)]


def _write_images(folder, items):
    """One file per item (VALSE's names), cycling through modes, formats and sizes; RGBA with varied alpha,
    P with a transparent palette entry (both composited onto white by CLIPProcessor, not by PIL's convert)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    made = []
    for k, x in enumerate(items):
        mode, fmt = MODES[k % len(MODES)]
        w, h = SIZES[k % len(SIZES)]
        rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        if mode == "RGBA":
            im = rgba
        elif mode == "P":
            im = rgba.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=64)
            im.info["transparency"] = 0
        else:
            im = rgba.convert(mode)
        im.save(folder / x.image_file, format=fmt)
        made.append((mode, fmt, (w, h)))
    return made


def d_of(model, e_c, e_f, img):
    """d = S(caption, image) - S(foil, image), the model's own similarity."""
    return model.paired_similarity(e_c, img) - model.paired_similarity(e_f, img)


def _fed_pixels(model, folder, items):
    """The pixel batches the study's FolderImages feeds the image encoder."""
    seen = []
    tower = getattr(model.vision, "encoder", model.vision)  # reference module, or the hooked tower itself
    handle = tower.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        FolderImages(folder, batch_size=3).embed(model, items)
    finally:
        handle.remove()
    return torch.cat(seen)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor

    from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer as OurTokenizer

    path = tmp_path_factory.mktemp("hf_ckpt")
    hf_clip("laion_gelu").save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(path)
    OurTokenizer().save_hf_vocab(path)
    return path


def test_pixels_for_an_hf_model_equal_clipprocessor(hf_dir, tmp_path):
    from PIL import Image
    from transformers import CLIPProcessor

    from hooked_clip.analyses.valse_negation.images import preprocessing_name
    from hooked_clip.analyses.valse_negation.study import select_items

    items = select_items(load_items(), 14)
    made = _write_images(tmp_path, items)
    assert {m for m, _, _ in made} == {"RGB", "L", "CMYK", "RGBA", "P"}
    model = HookedCLIP.from_pretrained(str(hf_dir))
    # the authors' entry point, on the PIL backend: transformers 4's CLIPProcessor (5's default is torchvision)
    processor = CLIPProcessor.from_pretrained(str(hf_dir), backend="pil")
    ref = torch.cat([processor(images=Image.open(tmp_path / x.image_file), return_tensors="pt")["pixel_values"]
                     for x in items])
    fed = _fed_pixels(model, tmp_path, items)
    assert torch.equal(fed, ref)
    assert preprocessing_name(model).startswith("transformers CLIP image processor, PIL backend")
    # and against a plain PIL pipeline written out here (opaque files): resize the short side to 64 with PIL's
    # bicubic, centre crop, scale to 0..1, normalise with OpenAI's mean and std
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    opaque = [k for k, x in enumerate(items) if Image.open(tmp_path / x.image_file).mode in ("RGB", "L", "CMYK")]
    assert len(opaque) >= 4
    for k in opaque:
        im = Image.open(tmp_path / items[k].image_file).convert("RGB")
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(64 * long / short)
        im = im.resize((64, new_long) if w <= h else (new_long, 64), Image.BICUBIC)
        left, top = (im.size[0] - 64) // 2, (im.size[1] - 64) // 2
        x = torch.from_numpy(np.asarray(im.crop((left, top, left + 64, top + 64)), dtype=np.float32)).permute(2, 0, 1)
        assert (fed[k] - (x / 255 - mean) / std).abs().max() <= 1e-5, items[k].image_file


def test_clipseg_input_is_on_the_pil_backend(tmp_path):
    """CLIPSeg's input takes the same PIL path as the authors' transformers 4 (checked on the loaded processor)."""
    from transformers import CLIPSegProcessor, CLIPTokenizer, ViTImageProcessor

    from hooked_clip.analyses.valse_negation import images
    from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer as OurTokenizer

    OurTokenizer().save_hf_vocab(tmp_path)
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
                     tokenizer=CLIPTokenizer.from_pretrained(tmp_path)).save_pretrained(tmp_path)
    seen = {}
    real = CLIPSegProcessor.from_pretrained

    def spy(*args, **kwargs):
        seen["processor"] = real(*args, **kwargs)
        raise OSError("stop after the processor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CLIPSegProcessor, "from_pretrained", spy)
        with pytest.raises(FileNotFoundError):
            images.clipseg_subject_size(tmp_path)
    assert type(seen["processor"].image_processor).__name__.endswith("Pil")


def test_pixels_for_an_open_clip_model_equal_open_clips_preprocess(tmp_path):
    import open_clip
    from PIL import Image
    from conftest import open_clip_model

    from hooked_clip.analyses.valse_negation.images import preprocessing_name
    from hooked_clip.analyses.valse_negation.study import select_items

    items = select_items(load_items(), 14)
    _write_images(tmp_path, items)
    oc = open_clip_model("laion_gelu")
    model = HookedCLIP.from_open_clip(oc)
    preprocess = open_clip.image_transform(oc.visual.image_size, is_train=False)  # open_clip's eval transform
    ref = torch.stack([preprocess(Image.open(tmp_path / x.image_file)) for x in items])
    assert torch.equal(_fed_pixels(model, tmp_path, items), ref)
    assert preprocessing_name(model).startswith("open_clip preprocess")
    assert "open_clip" not in preprocessing_name(build(OBJECTS[:3])) and "CLIPProcessor" not in preprocessing_name(build(OBJECTS[:3]))


def test_d_gap_between_the_two_pixel_pipelines_on_a_random_model(hf_dir, tmp_path):
    """Not an equality: how far d moves when the same (random) model sees open_clip's pixels instead of
    CLIPProcessor's. Printed (pytest -s) and recorded in docs/tutorials/05-valse-study.md."""
    import open_clip
    from PIL import Image

    from hooked_clip.analyses.valse_negation.study import select_items

    items = select_items(load_items(), 28)
    _write_images(tmp_path, items)
    model = HookedCLIP.from_pretrained(str(hf_dir))
    hf_pixels = _fed_pixels(model, tmp_path, items)
    oc_pixels = torch.stack([open_clip.image_transform(64, is_train=False)(Image.open(tmp_path / x.image_file)) for x in items])
    with torch.no_grad():
        e_c, e_f = model.encode_text([x.caption for x in items]), model.encode_text([x.foil for x in items])
        d = [d_of(model, e_c, e_f, model.encode_image(px, normalize=False)) for px in (hf_pixels, oc_pixels)]
    gap = (d[0] - d[1]).abs()
    print(f"\nmax |d(CLIPProcessor pixels) - d(open_clip pixels)| = {gap.max():.4g} logits "
          f"(median {gap.median():.3g}; logit scale {model.logit_scale.exp():.1f}; pixels differ by up to "
          f"{(hf_pixels - oc_pixels).abs().max():.3g})")
    assert gap.max() > 0  # the pipelines differ (resampling, transparency), so which one ran is reported


# ------------------------------------------------------------------------------ --reference
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from hooked_clip import load_model

    path = tmp_path_factory.mktemp("demo_run")
    model = load_model("tiny-negation")
    records = run_items(model, path, model_id="tiny-negation", images=SceneImages(), settings=Settings(limit=30),
                        progress=False)
    return model, records


def test_reference_of_our_own_run_reproduces_and_perturbations_are_found(demo_run, tmp_path):
    from hooked_clip.analyses.valse_negation.reference import compare, load_reference, section, to_reference_format

    _, records = demo_run
    ref = to_reference_format(records)
    assert len(ref) == sum("aligned" in r for r in records.values()) >= 25
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    same = compare(records, load_reference(path))
    assert same["verdict"].startswith("REPRODUCED") and same["abs_diff"]["score"]["max"] == 0
    assert same["segments"]["agree"] == same["n_common"] and same["similarity"]["r"] == pytest.approx(1)

    ids = list(ref)
    foil_id = next(k for k in ids if ref[k]["negation"] == "foil" and ref[k]["subject"])
    other = next(k for k in ids if k != foil_id)
    bumped = dict(ref[foil_id], logit_foil=ref[foil_id]["logit_foil"] + 0.5, subject="a different thing")
    bumped["score"] = bumped["logit_caption"] - bumped["logit_foil"]
    bumped["segment"] = next(s for s in ("correct", "ambiguous", "incorrect") if s != ref[foil_id]["segment"])
    ref2 = {**ref, foil_id: bumped, other: dict(ref[other], positions=ref[other]["positions"] + 1),
            "existence_visual7w_999999999": dict(ref[other])}
    dropped = ids[-1]
    del ref2[dropped]
    path.write_text(json.dumps(ref2))
    c = compare(records, load_reference(path))
    assert c["abs_diff"]["score"]["max"] == pytest.approx(0.5) and c["abs_diff"]["logit_caption"]["max"] == 0
    assert c["abs_diff"]["logit_foil"]["median"] == 0
    assert c["segments"]["moved"] == [{"id": foil_id, "run": ref[foil_id]["segment"], "reference": bumped["segment"]}]
    assert [d["id"] for d in c["positions"]["differ"]] == [other]
    assert c["subjects"]["differ"] == [{"id": foil_id, "run": ref[foil_id]["subject"], "reference": "a different thing"}]
    assert c["missing_from_run"] == ["existence_visual7w_999999999"] and c["extra_in_run"] == [dropped]
    assert c["verdict"].startswith("DIFFERS") and "1 item in another segment" in c["verdict"]
    text = "\n".join(section(c, str(path)))
    for needle in ("Verdict: DIFFERS", "\\|Δ d\\|", foil_id, dropped, "existence_visual7w_999999999", "positions (token count) equal"):
        assert needle in text, needle


def test_reference_adds_d_correlation_binary_area_and_the_items_identity(demo_run, tmp_path):
    """per_item.json carries correct (d > 0), dataset_idx and image_file (from VALSE's own fields); the comparison
    gives Pearson r of d, the binary subject area and flips across d = 0; the tolerance is the caller's."""
    from hooked_clip.analyses.valse_negation.reference import DEFAULT_TOLERANCE, compare, load_reference, section, to_reference_format

    _, records = demo_run
    raw = json.loads(VALSE.read_text())
    ref = to_reference_format(records)
    for k, v in ref.items():
        assert v["image_file"] == raw[k]["image_file"] and v["dataset_idx"] == str(raw[k]["dataset_idx"])
        assert v["correct"] == (records[k]["aligned"]["d"] > 0)
    keys = [k for k in ref if ref[k]["negation"] == "foil" and ref[k]["subject"]][:2]
    for k in keys:  # the toy scenes have no binary area: give both sides one
        ref[k]["subject_area_binary"] = 0.5
        records[k]["aligned"]["subject_area_binary"] = 0.5
    ref[keys[0]]["subject_area_binary"] = 0.75
    ids = list(ref)
    scores = [ref[k]["score"] for k in ids]
    flip = min(ids, key=lambda k: abs(ref[k]["score"]))  # the item nearest d = 0 moves to the other side
    delta = -2 * ref[flip]["score"] - math.copysign(0.004, ref[flip]["score"])
    ref[flip] = dict(ref[flip], logit_caption=ref[flip]["logit_caption"] + delta, score=ref[flip]["score"] + delta,
                     correct=not ref[flip]["correct"])
    ref[ids[0]] = dict(ref[ids[0]], image_file="v7w_0.jpg")
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    c = compare(records, load_reference(path), tolerance=abs(delta) + 1)
    expect = np.corrcoef(scores, [ref[k]["score"] for k in ids])[0, 1]
    assert c["score_r"] == pytest.approx(expect, abs=1e-12) and c["score_r"] < 1
    assert c["correct"]["differ"] == [{"id": flip, "run": ref[flip]["score"] < 0, "reference": ref[flip]["score"] > 0}]
    assert c["subject_area_binary_abs_diff"]["max"] == pytest.approx(0.25) and c["subject_area_binary_abs_diff"]["n"] == 2
    assert {"id": ids[0], "field": "image_file", "run": raw[ids[0]]["image_file"], "reference": "v7w_0.jpg"} in c["text_differs"]
    assert "logits differ" not in c["verdict"] and "other side of d = 0" in c["verdict"]  # within the given tolerance
    assert "logits differ" in compare(records, load_reference(path))["verdict"]  # not within the default
    text = "\n".join(section(c, str(path)))
    assert "d: Pearson r" in text and "subject_area_binary" in text and f"default {DEFAULT_TOLERANCE:g}" in text
    for k in keys:
        records[k]["aligned"]["subject_area_binary"] = None


def test_malformed_reference_files_are_refused_with_the_problem_named(demo_run, tmp_path):
    from hooked_clip.analyses.valse_negation.reference import ReferenceFormatError, load_reference, to_reference_format

    ref = to_reference_format(demo_run[1])
    key = next(iter(ref))
    path = tmp_path / "ref.json"
    cases = [({key: {k: v for k, v in ref[key].items() if k != "positions"}}, r"lacks the field\(s\) \['positions'\]"),
             ({key: dict(ref[key], logit_caption="20.1")}, "logit_caption='20.1' is not a finite number"),
             ({key: dict(ref[key], segment="right")}, "segment='right' must be one of"),
             ({key: dict(ref[key], negation="both")}, "negation='both'"),
             ({key: dict(ref[key], score=ref[key]["score"] + 1)}, "is not logit_caption - logit_foil"),
             ({key: dict(ref[key], correct=not ref[key]["correct"])}, "correct means d > 0"),
             ({key: dict(ref[key], image_file=3)}, "image_file=3 is not"),
             ({key: [1, 2]}, "not an object"),
             ([ref[key]], "keyed by VALSE id")]
    for data, message in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(ReferenceFormatError, match=message):
            load_reference(path)
    path.write_text("{oops")
    with pytest.raises(ReferenceFormatError, match="not valid JSON"):
        load_reference(path)


def test_cli_reference_section_end_to_end(tmp_path, capsys):
    from hooked_clip.analyses.cli import main

    main(["valse-negation", "--limit", "10", "--out", str(tmp_path / "a"), "--no-progress"])
    ref = json.loads((tmp_path / "a" / "per_item.json").read_text())  # our run, in the authors' format
    first = next(iter(ref))
    ref[first]["logit_caption"] += 0.25
    ref[first]["score"] += 0.25
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    main(["valse-negation", "--limit", "10", "--out", str(tmp_path / "a"), "--no-progress", "--reference", str(tmp_path / "ref.json")])
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Replication" in report and "Verdict: DIFFERS" in report and "up to 0.25" in report
    assert "Only part of the data ran** (`--limit 10`)" in report  # "like for like?" flags a partial run
    main(["valse-negation", "--limit", "10", "--out", str(tmp_path / "a"), "--no-progress", "--reference",
          str(tmp_path / "ref.json"), "--reference-tolerance", "0.3"])
    assert "Verdict: REPRODUCED" in (tmp_path / "a" / "report.md").read_text()
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["replication"]["abs_diff"]["logit_caption"]["max"] == pytest.approx(0.25, abs=1e-9)
    (tmp_path / "bad.json").write_text(json.dumps({first: {"caption": "x"}}))
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit status 2
        main(["valse-negation", "--limit", "10", "--out", str(tmp_path / "b"), "--no-progress", "--reference", str(tmp_path / "bad.json")])
    assert exit_info.value.code == 2 and "lacks the field" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before any work


# ------------------------------------------------------------------------------ several models
def test_comparison_of_the_demo_model_and_a_demo_sized_random_model(demo_run, tmp_path):
    from hooked_clip.analyses.valse_negation.comparison import write_comparison
    from hooked_clip.analyses.valse_negation.report import write_outputs

    model, records = demo_run
    runs = []
    for name, m, recs in (("tiny-negation", model, records),
                          ("tiny-negation-random", build(OBJECTS, seed=7), None)):
        if recs is None:
            recs = run_items(m, tmp_path / name, model_id=name, images=SceneImages(), settings=Settings(limit=30), progress=False)
        write_outputs(tmp_path / name, recs, aggregate(recs, m.cfg.n_layers, m.cfg.n_heads), model_id=name)
        runs.append((name, tmp_path / name))
    path = write_comparison(tmp_path, runs)
    text = path.read_text()
    data = json.loads((tmp_path / "comparison.json").read_text())
    a, b = data["summaries"]
    assert a["scores"]["aligned"]["all"]["accuracy"] > b["scores"]["aligned"]["all"]["accuracy"]  # trained vs random
    for s, name in zip((a, b), ("tiny-negation", "tiny-negation-random")):
        res = json.loads((tmp_path / name / "results.json").read_text()) if name != "tiny-negation" else None
        if res is not None:  # the summary carries the run's own numbers, not recomputed ones
            assert s["cte"]["foil"]["negator"] == (res["cte"]["foil"]["correct"]["matrix"] or [None] * 8)[3]
            assert s["top_heads"]["caption"] == res["heads"]["caption"]["top"][:3]
    assert "`tiny-negation` | `tiny-negation-random`" in text and "## Top negator-selective heads" in text
    assert (tmp_path / "comparison_cte.png").is_file()
    with pytest.raises(ValueError, match="at least two"):
        write_comparison(tmp_path, runs[:1])


def test_comparison_says_which_towers_two_models_share_and_the_papers_foil_heads():
    """The two shipped demo models have one text tower (the same weights, compared tensor by tensor here) and
    different image towers: the comparison's weight rows say so. The foil row carries the paper's foil column."""
    from hooked_clip import load_model
    from hooked_clip.analyses.valse_negation.comparison import _head_rows, _intro
    from hooked_clip.analyses.valse_negation.report import tower_weights

    a, b = load_model("tiny-negation", device="cpu"), load_model("tiny-negation-pixels", device="cpu")
    ta, tb = a.text.state_dict(), b.text.state_dict()
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # the fact, independently
    wa, wb = tower_weights(a), tower_weights(b)
    assert wa["text"] == wb["text"] and wa["vision"] != wb["vision"]
    summaries = [{"model": "tiny-negation", "tower_weights": wa, "preprocessing": "scenes"},
                 {"model": "tiny-negation-pixels", "tower_weights": wb, "preprocessing": "glyph renderer", "limit": 5},
                 {"model": "other", "tower_weights": {"text": "0" * 16, "vision": None}}]
    text = "\n".join(_intro(summaries, {s["model"]: "d" for s in summaries}, "|---|---|---|---|---|"))
    assert "| text tower weights | identical to `tiny-negation-pixels`'s | identical to `tiny-negation`'s | its own | – |" in text
    assert "| vision tower weights | its own | its own | – | – |" in text
    assert "| image pipeline | scenes | glyph renderer | – |" in text and "first 5 (--limit)" in text
    caption, foil = _head_rows([{"model": "m", "top_heads": {}}])
    assert caption.endswith("L3H1 (Layer 4 Head 2) 0.39, L3H2 (Layer 4 Head 3) 0.24, L2H5 (Layer 3 Head 6) 0.20 |")
    assert foil.endswith("L3H1 (Layer 4 Head 2) 0.38, L3H2 (Layer 4 Head 3) 0.23, L2H5 (Layer 3 Head 6) 0.23 |")


def test_cli_several_models_end_to_end_and_resumable(hf_dir, tmp_path, capsys):
    from hooked_clip.analyses.cli import main
    from hooked_clip.analyses.valse_negation.study import select_items

    _write_images(tmp_path / "images", select_items(load_items(), 8))
    main(["valse-negation", "--model", "tiny-negation", "--limit", "8", "--out", str(tmp_path / "demo"), "--no-progress"])
    argv = ["valse-negation", "--model", "tiny-negation", "--model", str(hf_dir), "--images", str(tmp_path / "images"),
            "--limit", "8", "--out", str(tmp_path / "cmp"), "--no-progress",
            "--reference", str(tmp_path / "demo" / "per_item.json"), "--subject-parser", "regex"]
    main(argv)
    dirs = sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir())
    assert len(dirs) == 2 and any(d.startswith("tiny-negation-fp-") for d in dirs)  # <name>-<fingerprint>
    for d in dirs:
        assert (tmp_path / "cmp" / d / "report.md").is_file()
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "tiny-negation" in text and str(hf_dir) in text and "## Confounds" in text
    verdicts = text.split("## Against the reference file")[1].split("##")[0]
    assert "`tiny-negation`: REPRODUCED" in verdicts and f"`{hf_dir}`: DIFFERS" in verdicts  # its own run vs another model
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("items/*.json")}
    main(argv)  # resumes: every item is already measured, nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("items/*.json")} == stamp
    with pytest.raises(SystemExit) as exit_info:
        main(["valse-negation", "--model", "tiny-negation", "--model", "tiny-negation"])
    assert exit_info.value.code == 2 and "twice" in capsys.readouterr().err


def test_figures_name_the_model_share_colour_ranges_and_clip_nothing(demo_run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from hooked_clip.analyses.run_dirs import final_name
    from hooked_clip.analyses.valse_negation.report import write_outputs

    model, records = demo_run
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    seen = {}
    real = Figure.savefig

    def spy(fig, path, *args, **kwargs):
        images = [ax.images[0] for ax in fig.axes if ax.images]
        seen[final_name(path)] = (fig._suptitle.get_text() if fig._suptitle else "",
                                              [im.get_clim() for im in images], fig)
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    write_outputs(tmp_path, records, results, model=model, model_id="tiny-negation")
    assert {"cte_heatmaps.png", "heads.png", "heads_layer_zoom.png", "score_histogram.png"} <= set(seen)
    for name, (title, clims, _) in seen.items():
        assert title.startswith("tiny-negation: "), name
        assert len(set(clims)) <= 1, name  # both panels on one colour range
    cte = [np.array(results["cte"][loc]["correct"]["matrix"], float) for loc in ("foil", "caption")]
    lo, hi = seen["cte_heatmaps.png"][1][0]
    assert lo <= min(np.nanmin(m) for m in cte) and hi >= max(np.nanmax(m) for m in cte) > 1  # > 1 shown, not clipped
    assert lo <= min(0, min(np.nanmin(m) for m in cte))
    hist = seen["score_histogram.png"][2].axes[0]
    assert all(float(t).is_integer() for t in hist.get_yticks()) and hist.get_ylabel() == "items"
    for name in ("cte_heatmaps.png", "heads.png", "heads_layer_zoom.png"):
        fig = seen[name][2]
        assert all(ax.get_ylabel() for ax in fig.axes), name  # every axis and colour bar is labelled
    assert "<title>tiny-negation: attention patterns" in (tmp_path / "attention.html").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "heads_delta_caption.csv" in report and "heads_corr_d_caption.csv" in report and "zoom_layer4_caption.csv" in report


def test_outputs_of_a_run_with_an_empty_correct_segment(demo_run, tmp_path):
    """A random model can have no item in the correct segment: the CTE panels are then empty, not an error."""
    import copy

    from hooked_clip.analyses.valse_negation.report import write_outputs

    model, records = demo_run
    records = copy.deepcopy(records)
    for r in records.values():
        if "aligned" in r:
            r["aligned"]["segment"] = "ambiguous"
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    assert results["cte"]["caption"]["correct"]["n"] == results["cte"]["foil"]["correct"]["n"] == 0
    write_outputs(tmp_path, records, results, model_id="empty")
    assert (tmp_path / "cte_heatmaps.png").is_file() and "n = 0" in (tmp_path / "report.md").read_text()


def test_cli_reference_on_a_text_only_run_compares_subject_prompts(hf_dir, tmp_path):
    """Without images the text parts are still compared: token counts, similarity, subject prompts (regex
    fallback here, named as such); logits are listed as not compared."""
    from hooked_clip.analyses.cli import main
    from hooked_clip.analyses.valse_negation.data import SubjectParser

    main(["valse-negation", "--model", str(hf_dir), "--limit", "10", "--out", str(tmp_path / "a"), "--no-progress"])
    ref = json.loads((tmp_path / "a" / "per_item.json").read_text())
    regex = SubjectParser.regex()
    for k, r in ref.items():
        r.update(logit_caption=21.0, logit_foil=20.0, score=1.0, segment="correct")
        r["subject"] = regex(r["caption"]) if r["negation"] == "foil" else None
    changed = next(k for k, r in ref.items() if r["subject"])
    ref[changed]["subject"] = "the authors' prompt"
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    main(["valse-negation", "--model", str(hf_dir), "--limit", "10", "--out", str(tmp_path / "b"), "--no-progress",
          "--reference", str(tmp_path / "ref.json"), "--subject-parser", "regex"])
    report = (tmp_path / "b" / "report.md").read_text()
    assert "regex fallback" in report and "Not compared: logits, d and segments" in report
    c = json.loads((tmp_path / "b" / "results.json").read_text())["replication"]
    assert [d["id"] for d in c["subjects"]["differ"]] == [changed] and c["positions"]["equal"] == c["n_common"]


def test_rows_follow_the_tokenizer_without_a_start_token():
    """A tokenizer that lays the sentences out otherwise (here CLIP's BPE without its start token: everything one
    position earlier) gets its rows from its own positions, the missing start token an absent (NaN) row, never
    filled with another token; CLIP's own layout is CLIP's fixed one."""
    from hooked_clip import load_model
    from hooked_clip.analyses.valse_negation.layout import PairLayout, check_token_layout, row_labels
    from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

    class NoStartToken(CLIPTokenizer):
        def encode(self, text, *args, **kwargs):
            return super().encode(text, *args, **kwargs)[1:]

    model = load_model("tiny-negation")
    neg, aff = ["There are no cats.", "There is no big dog."], ["There are some cats.", "There is a big dog."]
    assert check_token_layout(model.text, neg, aff) == [PairLayout.clip(6), PairLayout.clip(7)]
    model.text.tokenizer = NoStartToken()
    layouts = check_token_layout(model.text, neg, aff)
    assert [x.negator for x in layouts] == [2, 2] and [x.eot for x in layouts] == [5, 6]
    assert [model.to_str_tokens(s)[x.negator] for s, x in zip(neg, layouts)] == ["no", "no"]
    assert row_labels(layouts) == ["[SOT] (absent)"] + ROWS[1:]
    values = torch.arange(10.0)[None]  # [layer, pos]
    rows, n_further = to_rows(values, layouts[1])  # "there is no big dog . [EOT]" at 0..6
    assert math.isnan(rows[0][0]) and rows[0][1:] == [0, 1, 2, 3, 4, 5, 6] and n_further == 1


def test_rome_numbers_do_not_depend_on_chunking_or_resuming(random_demo, tmp_path):
    """ROME's noise scale is computed once per run (recorded in config.json) and each item's draws depend only on
    (seed, item): a run in chunks of 2, a run in one chunk, and a resumed run agree on every number."""
    settings = dict(limit=8, rome=True, rome_samples=2)
    whole = run_items(random_demo, tmp_path / "whole", model_id="random", images=SceneImages(),
                      settings=Settings(**settings), progress=False)
    chunked = run_items(random_demo, tmp_path / "chunked", model_id="random", images=SceneImages(),
                        settings=Settings(chunk=2, **settings), progress=False)
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["rome_noise_std"] > 0
    for name in sorted((tmp_path / "chunked" / "items").glob("*.json"))[:3]:
        name.unlink()  # resume: these items are measured again, in a chunk of their own
    resumed = run_items(random_demo, tmp_path / "chunked", model_id="random", images=SceneImages(),
                        settings=Settings(chunk=2, **settings), progress=False)
    results = [aggregate(r, random_demo.cfg.n_layers, random_demo.cfg.n_heads) for r in (whole, chunked, resumed)]
    # The CTE and ROME's restored fractions divide by each item's logit gap d (this random model's |d| is down to
    # 2e-3): other batch mates change float summation order by up to ~4e-5 in the logits (scaled cosines), and
    # 1/|d| amplifies that (seen at load 10 on 2 cores: 1.5e-2 in one item's CTE row, 4e-3 in the CTE's std,
    # 2e-5 in ROME's means). So per item each row agrees to 5e-5/|d|, the aggregates (|values| < 4) to 1e-2;
    # a noise draw that depended on the chunk would move ROME's numbers by ~1e-1. Every other number: 1e-5.
    cte = [r.pop("cte") for r in results]
    rome = [r.pop("rome") for r in results]
    for other in (1, 2):
        assert largest_difference(results[0], results[other]) <= 1e-5
        for a, b in ((cte[0], cte[other]), (rome[0], rome[other])):
            assert largest_difference(a, b) <= 1e-2

    def rows(recs, key):
        return {k: (r["aligned"][key], abs(r["aligned"]["d"])) for k, r in recs.items() if "aligned" in r}

    for key in ("cte_rows", "rome_rows"):
        assert rows(whole, key) and rows(whole, key).keys() == rows(chunked, key).keys() == rows(resumed, key).keys()
        for k, (want, d) in rows(whole, key).items():
            for got in (rows(chunked, key)[k][0], rows(resumed, key)[k][0]):
                for a, b in zip(want, got):  # NaN rows (absent tokens) compare as absent
                    assert all(abs(x - y) <= max(1e-5, 5e-5 / d) for x, y in zip(a, b) if x == x), (key, k)


# ------------------------------------------------------------------------------ the model's fingerprint
def test_fingerprint_keys_runs_and_comparisons(random_demo, tmp_path):
    """The run records hooked_clip's fingerprint; the same weights under another name resume the run; a
    comparison of one model under two names is refused."""
    import copy

    from hooked_clip.analyses.valse_negation.comparison import run_fingerprints
    from hooked_clip.fingerprint import fingerprint

    settings = Settings(limit=2)
    first = run_items(random_demo, tmp_path / "a", model_id="random", images=SceneImages(), settings=settings, progress=False)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["fingerprint"] == fingerprint(random_demo).as_dict()
    again = run_items(copy.deepcopy(random_demo), tmp_path / "a", model_id="random-renamed", images=SceneImages(),
                      settings=settings, progress=False)  # two names, one model: resumed, nothing measured again
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)
    for name, fp in (("b", config["fingerprint"]), ("c", fingerprint(build(OBJECTS, seed=8)).as_dict())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config, "fingerprint": fp}))
    with pytest.raises(ValueError, match="'random' and 'random-renamed' are one model"):
        run_fingerprints([("random", tmp_path / "a"), ("random-renamed", tmp_path / "b")])
    fps = run_fingerprints([("random", tmp_path / "a"), ("other", tmp_path / "c")])
    assert fps["random"] == fingerprint(random_demo).short and fps["other"] != fps["random"]
