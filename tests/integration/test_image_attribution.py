"""Image-side direct attribution, mean-ablation variants and patch attention views, checked against
quantities computed independently (the model's own outputs, per-head results from ``hook_result``)."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_clip, randomize_

from hooked_clip import HookedCLIP, HookedCLIPVision
from hooked_clip.analyses.image_attribution import (decompose_image, image_similarity_attribution,
                                                    mean_image_ablation, patch_attention_html)

ATOL = 1e-5


def pixels(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def open_clip_clip(**vision_kw):
    """A random open_clip CLIP whose ViT pools as asked."""
    from open_clip.model import CLIP

    from conftest import open_clip_text_cfg

    torch.manual_seed(3)
    vision_cfg = dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32, **vision_kw)
    oc = randomize_(CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=open_clip_text_cfg("tiny_argmax")), seed=3)
    return HookedCLIP.from_open_clip(oc, device="cpu")


def _check_sums(m: HookedCLIP, px: torch.Tensor):
    texts = ["There is a cat.", "no dogs at all", "a red bus"][: px.shape[0]]
    d = decompose_image(m, px)
    with torch.no_grad():
        ref = m.vision(px)
        t = m.encode_text(texts)
    assert torch.equal(d.image_embed, ref)
    assert (d.total() - ref).abs().max() <= ATOL
    s = image_similarity_attribution(m, d, t)
    with torch.no_grad():
        expected = m.similarity(t, m.encode_image(px)).diagonal()
    assert (s.total - expected).abs().max() <= ATOL
    assert (s.sum() - expected).abs().max() <= ATOL
    a = s.as_attribution()
    assert len(a.labels) == a.values.shape[0] and (a.values.sum(0) - expected).abs().max() <= ATOL
    return d


@pytest.mark.parametrize("variant", ["hf_cls", "oc_avg", "oc_avg_ln_after_pool", "oc_tok_no_ln_pre"])
def test_decomposition_sums_to_embedding_and_similarity(model, variant):
    m = {"hf_cls": lambda: model,
         "oc_avg": lambda: open_clip_clip(pool_type="avg"),
         "oc_avg_ln_after_pool": lambda: open_clip_clip(pool_type="avg", final_ln_after_pool=True),
         "oc_tok_no_ln_pre": lambda: open_clip_clip(no_ln_pre=True)}[variant]()
    _check_sums(m, pixels(3))


def test_head_contributions_match_per_head_results(model):
    """heads summed over source positions == each head's own output (hook_result, an independent path)
    through ln_post (frozen scale) and the projection."""
    px = pixels(2)
    d = decompose_image(model, px)
    v = model.vision
    v.cfg.use_attn_result = True
    try:
        with torch.no_grad():
            _, cache = v.run_with_cache(px)
    finally:
        v.cfg.use_attn_result = False
    scale = cache["ln_post.hook_scale"][:, 0]  # cls pooling: position 0
    for l in range(v.cfg.n_layers):
        result = cache[f"blocks.{l}.attn.hook_result"][:, 0]  # [batch, head, d_model]
        expected = ((result - result.mean(-1, keepdim=True)) / scale[:, None]) * v.ln_post.w @ v.W_proj
        assert (d.heads[:, l].sum(2) - expected).abs().max() <= ATOL
        mlp = cache[f"blocks.{l}.hook_mlp_out"][:, 0]
        assert (d.mlp[:, l] - ((mlp - mlp.mean(-1, keepdim=True)) / scale) * v.ln_post.w @ v.W_proj).abs().max() <= ATOL


def test_mean_ablation_of_earlier_layers(model):
    px, ref_px = pixels(2), pixels(4, seed=1)
    d, ref = decompose_image(model, px), decompose_image(model, ref_px)
    # ablating everything before the last layer keeps the last layer's own contributions
    n = model.vision.cfg.n_layers
    ab = d.mean_ablate_before(n - 1, ref)
    assert torch.equal(ab.heads[:, -1], d.heads[:, -1]) and torch.equal(ab.mlp[:, -1], d.mlp[:, -1])
    assert torch.allclose(ab.embed, ref.embed.mean(0, keepdim=True).expand_as(ab.embed))
    assert torch.allclose(ab.image_embed, ab.total())
    # ablating every layer against the images themselves gives the batch-mean embedding (all terms linear)
    full = d.mean_ablate_before(n, d)
    assert (full.image_embed - d.image_embed.mean(0, keepdim=True)).abs().max() <= ATOL
    t = torch.randn(2, d.image_embed.shape[1], generator=torch.Generator().manual_seed(5))
    s = image_similarity_attribution(model, ab, t)
    assert (s.sum() - model.similarity(t, ab.image_embed).diagonal()).abs().max() <= ATOL
    with pytest.raises(ValueError, match="layer must lie in 0..2"):
        d.mean_ablate_before(3, ref)


def test_attention_pooling_tower_is_refused():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    tower = HookedCLIPVision.from_hf(SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=16)))
    with pytest.raises(ValueError, match="attention head .SigLIP."):
        decompose_image(tower, pixels(1, 32))


def test_mean_image_layer_ablation(model):
    px, ref_px = pixels(2), pixels(5, seed=2)
    v = model.vision
    hooks = mean_image_ablation(model, ref_px, [1])
    assert [n for n, _ in hooks] == ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    with torch.no_grad():
        _, ref_cache = v.run_with_cache(ref_px, names_filter=["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"])
        with v.hooks(fwd_hooks=hooks):
            ablated, cache = v.run_with_cache(px, names_filter=["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"])
        clean = v(px)
    mean_write = (ref_cache["blocks.1.hook_attn_out"] + ref_cache["blocks.1.hook_mlp_out"]).mean(0)
    assert torch.allclose(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"] + mean_write, atol=1e-6)
    assert (ablated - clean).abs().max() > 1e-4
    # against a reference that is the image itself, nothing changes
    with torch.no_grad(), v.hooks(fwd_hooks=mean_image_ablation(model, px[:1], [0, 1], part="resid_post")):
        assert torch.allclose(v(px[:1]), clean[:1], atol=1e-6)
    with pytest.raises(ValueError, match="blocks are 0..1"):
        mean_image_ablation(model, ref_px, [2])


def test_patch_attention_html_is_self_contained(model):
    html = patch_attention_html(model, pixels(1), layer=1)
    assert "r3c3" in html and "CLS" in html and "unpkg" not in html and "cdn" not in html.lower()[:2000]
    with pytest.raises(ValueError, match="one image"):
        patch_attention_html(model, pixels(2), layer=0)
