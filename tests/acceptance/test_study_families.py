"""The VALSE study end to end on BERT-style towers (ChineseCLIP, ALIGN: BERT WordPiece, CLS-pooled; AltCLIP:
XLM-R-style ids, CLS-pooled; open_clip's RoBERTa tower: mean-pooled), random weights, tokenizer files trained
offline on the VALSE sentences, random images. Chunks mix pairs of different lengths, so every run is a padded
batch: each pair's CTE must equal the same pair traced alone, unpadded."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import roberta_bpe, wordpiece

from hooked_clip import HookedCLIP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_families import _valse_images  # noqa: E402
from test_post_ln import build, open_clip_hf_model  # noqa: E402

LIMIT = 6


def _check(run: Path, model, pooled_row: bool):
    res = json.loads((run / "results.json").read_text())
    report = (run / "report.md").read_text()
    t = model.cfg.describe()
    assert t["pooling"] in report and t["padding"] in report and res["text_tower"] == t
    records = [json.loads(p.read_text()) for p in sorted((run / "items").glob("*.json"))]
    aligned = [r for r in records if "aligned" in r]
    assert len(records) == LIMIT and aligned
    assert len({r["aligned"]["n_tokens"] for r in aligned}) > 1  # the chunk is a padded batch
    rows = res["cte"]["caption"]["all"]["rows"] if "caption" in res["cte"] else res["cte"]["foil"]["all"]["rows"]
    assert (rows[-1] == "[pooled]") == pooled_row and rows[0] == "[SOT]" and rows[7] == "[EOT]"  # CLS / SEP present
    from hooked_clip.analyses.causal_tracing import minimal_pair_trace
    from hooked_clip.analyses.valse_negation.layout import PairLayout, to_rows
    from hooked_clip.loaders.files import read_safetensors

    img = read_safetensors(run / "image_embeds.safetensors")
    for r in aligned:
        a = r["aligned"]
        neg, aff = (a["caption"], a["foil"]) if r["negation_in"] == "caption" else (a["foil"], a["caption"])
        alone = minimal_pair_trace(model, [neg], [aff], img[r["id"]][None], progress=False)  # unpadded
        expected, _ = to_rows(alone[0], PairLayout.from_record(a))
        # CTE = d*/d: rounding in the logits (~1e-6) grows by 1/|d| (the random towers' d are small)
        tol = 5e-6 / abs(a["s_caption"] - a["s_foil"])
        for got, want in zip(a["cte_rows"], expected):
            assert all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol for x, y in zip(got, want)), r["id"]
        # at the embeddings only the negator differs: its row carries the whole gap, every other row nothing
        first = a["cte_rows"][0]
        assert first[3] == pytest.approx(1.0, abs=max(1e-4, tol))
        assert all(math.isnan(v) or abs(v) <= 1e-4 for i, v in enumerate(first) if i != 3)


@pytest.mark.parametrize("cls_name, tokenizer", [("ChineseCLIPModel", wordpiece), ("AlignModel", wordpiece),
                                                 ("AltCLIPModel", roberta_bpe)])
def test_study_runs_end_to_end_on_a_bert_style_directory(tmp_path, cls_name, tokenizer):
    from hooked_clip.analyses.cli import main

    tok = tokenizer(tmp_path / "ckpt")  # the tokenizer's files in the checkpoint directory, as on the hub
    hf = build(cls_name, vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=40)
    hf.save_pretrained(tmp_path / "ckpt")
    images = _valse_images(tmp_path / "images", LIMIT)
    main(["valse-negation", "--model", str(tmp_path / "ckpt"), "--images", str(images), "--limit", str(LIMIT),
          "--rome", "--out", str(tmp_path / "run"), "--no-progress"])
    model = HookedCLIP.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert model.cfg.pooling == "first" and model.cfg.mask_padding
    _check(tmp_path / "run", model, pooled_row=True)


def test_study_runs_on_an_open_clip_roberta_tower(tmp_path):
    """open_clip's hf_model_name tower (RoBERTa, mean pooling, MLP projection) from Python: run, aggregate, report."""
    from hooked_clip.analyses.valse_negation.aggregate import aggregate
    from hooked_clip.analyses.valse_negation.images import FolderImages
    from hooked_clip.analyses.valse_negation.report import write_outputs
    from hooked_clip.analyses.valse_negation.study import Settings, run_items

    roberta_bpe(tmp_path / "tokdir")
    oc = open_clip_hf_model("RobertaConfig", "mean_pooler", "mlp", vocab_size=1000)
    model = HookedCLIP.from_open_clip(oc, device="cpu", tokenizer=str(tmp_path / "tokdir"))
    assert model.cfg.pooling == "mean"
    images = FolderImages(_valse_images(tmp_path / "images", LIMIT))
    records = run_items(model, tmp_path / "run", model_id="open_clip-roberta-tiny", images=images,
                        settings=Settings(limit=LIMIT), progress=False)
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    write_outputs(tmp_path / "run", records, results, model=model, model_id="open_clip-roberta-tiny")
    _check(tmp_path / "run", model, pooled_row=False)
