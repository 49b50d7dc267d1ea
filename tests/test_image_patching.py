"""Image-side activation patching through the shared engine against a plain one-forward-per-patch loop:
class-token, average and attention-pooled ViTs (transformers CLIP, open_clip, transformers SigLIP)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import randomize_
from test_vision_parity import open_clip_vit, pixels

from hooked_clip import HookedCLIPVision
from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.analyses.patching import activation_patch

ATOL = 1e-5
PER_HEAD = ("z", "q", "k", "v", "pattern")


def image_loop(tower, clean, corrupt, metric, act, axes, labels, direction="denoise"):
    """One full forward of the image tower per index, the hook written here (TL-style), nothing shared with
    the engine."""
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    with torch.no_grad():
        _, cache = tower.run_with_cache(source)
        ref = torch.empty(*[len(labels[a]) for a in axes], clean.shape[0])
        for idx in itertools.product(*[range(len(labels[a])) for a in axes]):
            where = {a: labels[a][i] for a, i in zip(axes, idx)}
            name = f"blocks.{where['layer']}.attn.hook_{act}" if act in PER_HEAD else f"blocks.{where['layer']}.hook_{act}"

            def hook(x, hook, where=where):
                x = x.clone()
                pos, head = where.get("pos", slice(None)), where.get("head", slice(None))
                sl = (slice(None), head, pos) if act == "pattern" else (slice(None), pos, head) if act in PER_HEAD else (slice(None), pos)
                x[sl] = cache[hook.name][sl]
                return x

            ref[idx] = metric(tower.run_with_hooks(target, return_type="normalized", fwd_hooks=[(name, hook)]))
    return ref


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
    if "pos" in index:
        assert res.labels["pos"] == list(range(tower.cfg.n_ctx))
    ref = image_loop(tower, clean, corrupt, metric, act, res.axes, res.labels)
    assert (res.values - ref).abs().max() <= ATOL


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
        ref = image_loop(model.vision, clean, corrupt, metric, "resid_pre", res.axes, res.labels, direction)
        assert (res.values - ref).abs().max() <= ATOL
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
