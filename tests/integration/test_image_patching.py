"""Image-side activation patching through the shared engine against a plain one-forward-per-patch loop:
class-token, average and attention-pooled ViTs (transformers CLIP, open_clip, transformers SigLIP)."""

from __future__ import annotations


import pytest
import torch
from conftest import assert_matches_loop, open_clip_vit, pixels, randomize_


from hooked_clip import HookedCLIPVision
from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.analyses.patching import activation_patch

ATOL = 1e-5
PER_HEAD = ("z", "q", "k", "v", "pattern")


def siglip_tower():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    hf = randomize_(SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=96, num_attention_heads=2,
                                                         num_hidden_layers=2, image_size=32, patch_size=16)), seed=9)
    return HookedCLIPVision.from_hf(hf, device="cpu")


TOWERS = {
    "hf_clip_cls": lambda model: model.vision,
    "open_clip_avg": lambda model: HookedCLIPVision.from_open_clip(open_clip_vit(pool_type="avg"), preprocess=None, device="cpu"),
    "siglip_attn_pool": lambda model: siglip_tower(),
}
CASES = [("resid_pre", "layer_pos"), ("resid_post", "layer_pos"), ("mlp_out", "layer_pos"), ("z", "layer_pos_head"),
         ("k", "layer_head"), ("pattern", "layer_pos")]


@pytest.mark.parametrize("spec", list(TOWERS))
@pytest.mark.parametrize("act,index", CASES)
def test_image_patching_equals_one_forward_per_patch_loop(tiny_model, spec, act, index):
    tower = TOWERS[spec](tiny_model)
    size = tower.cfg.image_size
    clean, corrupt = pixels(size, n=2, seed=0), pixels(size, n=2, seed=1)
    d = tower.cfg.d_proj or tower.cfg.d_model
    metric = cosine_to_target(torch.randn(2, d, generator=torch.Generator().manual_seed(3)))
    res = activation_patch(tower, clean, corrupt, metric, act, index=index, batch_size=5, progress=False)
    assert res.axes == ("layer", *index.split("_")[1:])
    assert_matches_loop(res, tower, clean, corrupt, metric)


def test_image_patching_from_a_clip_model_with_a_similarity_metric(tiny_model):
    """``tower="vision"`` on a HookedCLIP: S(text, patched image) with the model's own similarity; noising too;
    patching every layer's whole residual restores the other run exactly."""
    model = tiny_model
    size = model.vision.cfg.image_size
    clean, corrupt = pixels(size, n=3, seed=4), pixels(size, n=3, seed=5)
    with torch.no_grad():
        text = model.encode_text(["a cat", "a dog", "a car"])
    metric = similarity_metric(model, text)
    for direction in ("denoise", "noise"):
        res = activation_patch(model, clean, corrupt, metric, "resid_pre", direction=direction, tower="vision",
                               progress=False)
        assert_matches_loop(res, model.vision, clean, corrupt, metric)
    whole = activation_patch(model, clean, corrupt, metric, "resid_pre", index="layer", tower="vision", progress=False)
    assert (whole.values - whole.clean).abs().max() <= ATOL
    with torch.no_grad():
        assert (whole.clean - metric(model.vision(clean, "normalized"))).abs().max() <= ATOL


def test_image_patching_bad_input(tiny_model):
    model = tiny_model
    size = model.vision.cfg.image_size
    px = pixels(size, n=2)
    metric = cosine_to_target(torch.randn(2, model.cfg.d_proj))
    with pytest.raises(ValueError, match=r"tower must be one of \('text', 'vision'\), got 'image' \(the image tower is called 'vision'\)"):
        activation_patch(model, px, px, metric, tower="image", progress=False)
    with pytest.raises(ValueError, match="two images always share the patch grid"):
        activation_patch(model, px, px, metric, tower="vision", alignment=torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="2 clean examples but 3 corrupt"):
        activation_patch(model, px, pixels(size, n=3), metric, tower="vision", progress=False)
    with pytest.raises(ValueError, match="this is the text tower; pass the HookedCLIP to run on its vision tower"):
        activation_patch(model.text, px, px, metric, tower="vision", progress=False)
