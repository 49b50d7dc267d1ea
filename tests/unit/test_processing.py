"""Weight processing (fold_ln, center_writing_weights, fold_value_biases): outputs unchanged against the
HF / open_clip references on every parity config; each step's own invariant; refusing to run twice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MIXED_TEXTS, SPECS, hf_clip, open_clip_model

from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText
from hooked_clip.weight_processing import center_writing_weights, fold_ln, fold_value_biases

ATOL = 1e-5
ALL = dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True)
IMAGES = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("steps", [ALL, dict(fold_ln=True), dict(center_writing_weights=True), dict(fold_value_biases=True)],
                         ids=["all", "fold_ln", "center", "fold_vb"])
def test_hf_embeddings_and_similarities_unchanged(spec, steps):
    hf = hf_clip(spec)
    model = HookedCLIP.from_hf(hf, device="cpu", **steps)
    tokens = model.to_tokens(MIXED_TEXTS)
    with torch.no_grad():
        ref_text = hf.text_projection(hf.text_model(input_ids=tokens).pooler_output)
        ref_image = hf.visual_projection(hf.vision_model(pixel_values=IMAGES).pooler_output)
        ref_cos = F.normalize(ref_text, dim=-1) @ F.normalize(ref_image, dim=-1).T
        ours = model.encode_text(tokens, normalize=False)
        sim = model.similarity(ours, model.encode_image(IMAGES))
    assert (ours - ref_text).abs().max() <= ATOL
    # logits are logit_scale (~67 here) x cosine: 1e-5 on the cosine
    assert (sim / hf.logit_scale.exp() - ref_cos).abs().max() <= ATOL


@pytest.mark.parametrize("spec", list(SPECS))
def test_open_clip_embeddings_unchanged(spec):
    oc = open_clip_model(spec)
    model = HookedCLIP.from_open_clip(oc, device="cpu", **ALL)
    tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")  # open_clip needs its full context
    with torch.no_grad():
        assert (model.encode_text(tokens, normalize=False) - oc.encode_text(tokens)).abs().max() <= ATOL
    assert model.cfg.ln_folded and model.cfg.writing_weights_centered and model.cfg.value_biases_folded


def test_each_step_does_what_it_says():
    model = HookedCLIP.from_hf(hf_clip("tiny_argmax"), device="cpu", **ALL)
    text = model.text
    for ln in [text.ln_final] + [b.ln1 for b in text.blocks] + [b.ln2 for b in text.blocks]:
        assert torch.equal(ln.w, torch.ones_like(ln.w)) and torch.equal(ln.b, torch.zeros_like(ln.b))
    for W in (text.W_E, text.W_pos, text.W_O, text.W_out):
        assert W.mean(-1).abs().max() < 1e-6
    assert all(torch.equal(b.attn.b_V, torch.zeros_like(b.attn.b_V)) for b in text.blocks)
    assert text.b_proj is not None  # ln_final's bias became a projection bias (HF has none)
    _, cache = model.run_with_cache(["There are no dogs."])
    resid = cache["blocks.1.hook_resid_post"]
    assert resid.mean(-1).abs().max() < 1e-5  # centred writers: the residual stream is mean-free


def test_processing_twice_is_refused():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", fold_ln=True)
    with pytest.raises(ValueError, match="fold_ln was already applied"):
        fold_ln(model)
    center_writing_weights(model.text)
    with pytest.raises(ValueError, match="center_writing_weights was already applied"):
        center_writing_weights(model)
    fold_value_biases(model)
    with pytest.raises(ValueError, match="already applied"):
        fold_value_biases(model)
    with pytest.raises(TypeError, match="fold_ln must be True or False"):
        HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", fold_ln="yes")


def test_fold_ln_without_projection_keeps_ln_final():
    text = HookedCLIPText(CLIPTextConfig(d_model=32, d_head=16, n_heads=2, n_layers=2, d_mlp=64, d_proj=None, seed=0))
    with torch.no_grad():
        for p in text.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = text(["There are no cats."])
    fold_ln(text)
    assert not torch.equal(text.ln_final.w, torch.ones_like(text.ln_final.w))  # nothing to fold it into
    assert (text(["There are no cats."]) - before).abs().max() <= ATOL


def test_every_loader_takes_the_processing_options(tmp_path):
    from hooked_clip import load_model

    hf = hf_clip("tiny_eot")
    hf.save_pretrained(tmp_path)
    plain = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    folded = HookedCLIP.from_pretrained(tmp_path, device="cpu", **ALL)
    assert folded.cfg.ln_folded and folded.cfg.value_biases_folded and not plain.cfg.ln_folded
    assert (folded.encode_text(MIXED_TEXTS) - plain.encode_text(MIXED_TEXTS)).abs().max() <= ATOL
    demo = load_model("tiny-negation", fold_ln=True)
    assert demo.cfg.ln_folded and not load_model("tiny-negation").cfg.ln_folded
