"""fp32 parity of the hooked ViT image tower with transformers (CLIP, SigLIP) and open_clip on random weights
(every parameter randomised, LayerNorms included): every block's residual output and the image embedding,
several configurations, plus strict loading and the refusals of towers that are not reimplemented."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_clip, open_clip_model, open_clip_vit, pixels, randomize_
from hooked_clip.parity import capture_block_outputs

from hooked_clip import CheckpointMismatchError, HookedCLIP, HookedCLIPVision
from hooked_clip.vision.reference import ReferenceVisionTower
from hooked_clip.errors import UnsupportedImageTower
from hooked_clip.loaders.open_clip_vision import open_clip_vision_state_dict, vision_config_from_open_clip

ATOL = 1e-5


def assert_tower_matches(tower: HookedCLIPVision, px, ref_embeds, ref_blocks):
    names = [f"blocks.{l}.hook_resid_post" for l in range(tower.cfg.n_layers)]
    assert len(ref_blocks) == tower.cfg.n_layers
    with torch.no_grad():
        emb, cache = tower.run_with_cache(px, names_filter=names)
    assert emb.shape == ref_embeds.shape
    err = (emb - ref_embeds).abs().max().item()
    assert err <= ATOL, f"image embeddings differ by {err:.2e}"
    for layer, ref in enumerate(ref_blocks):
        err = (cache[names[layer]] - ref).abs().max().item()
        assert err <= ATOL, f"resid_post of block {layer} differs by {err:.2e}"
    # the same numbers with every hook attached (the explicit-LN-scale and pattern paths)
    with torch.no_grad():
        emb_all, _ = tower.run_with_cache(px)
    assert (emb_all - ref_embeds).abs().max().item() <= ATOL


# ------------------------------------------------------------------------------------------ transformers
HF_CLIP = {  # name: (width, heads, layers, image, patch, act, proj)
    "tiny_quick": (64, 2, 2, 32, 8, "quick_gelu", 16),
    "small_gelu": (96, 3, 3, 48, 16, "gelu", 32),
    "vitb32": (768, 12, 12, 224, 32, "quick_gelu", 512),
}


@pytest.mark.parametrize("spec", list(HF_CLIP))
def test_hf_clip_vision_parity(spec):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    width, heads, layers, image, patch, act, proj = HF_CLIP[spec]
    torch.manual_seed(0)
    hf = randomize_(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads, num_hidden_layers=layers,
        image_size=image, patch_size=patch, hidden_act=act, projection_dim=proj, layer_norm_eps=1e-5)), seed=len(spec))
    tower = HookedCLIPVision.from_hf(hf, device="cpu")
    assert (tower.cfg.pooling, tower.cfg.class_token, tower.cfg.ln_pre, tower.cfg.act_fn) == ("cls", True, True, act)
    assert tower.cfg.n_ctx == (image // patch) ** 2 + 1
    px = pixels(image, n=2 if spec == "vitb32" else 3)
    out, blocks = capture_block_outputs(hf.vision_model.encoder.layers, lambda: hf(pixel_values=px))
    assert_tower_matches(tower, px, out.image_embeds, blocks)


def test_hf_clip_model_vision_tower_is_hooked():
    hf = hf_clip("tiny_eot")
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert isinstance(model.vision, HookedCLIPVision)
    px = pixels(64)
    out, blocks = capture_block_outputs(hf.vision_model.encoder.layers, lambda: hf.get_image_features(pixel_values=px))
    ref = out.pooler_output if hasattr(out, "pooler_output") else out
    assert_tower_matches(model.vision, px, ref, blocks)


SIGLIP = {  # name: (width, heads, layers, image, patch)
    "tiny": (64, 2, 2, 32, 8),
    "small": (96, 4, 3, 48, 16),
}


@pytest.mark.parametrize("spec", list(SIGLIP))
def test_hf_siglip_vision_parity(spec):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    width, heads, layers, image, patch = SIGLIP[spec]
    torch.manual_seed(1)
    hf = randomize_(SiglipVisionModel(SiglipVisionConfig(
        hidden_size=width, intermediate_size=3 * width, num_attention_heads=heads, num_hidden_layers=layers,
        image_size=image, patch_size=patch)), seed=7 + len(spec))
    tower = HookedCLIPVision.from_hf(hf, device="cpu")
    cfg = tower.cfg
    assert (cfg.pooling, cfg.class_token, cfg.ln_pre, cfg.patch_bias, cfg.act_fn, cfg.d_proj) == (
        "attn", False, False, True, "gelu_tanh", None)
    px = pixels(image)
    out, blocks = capture_block_outputs(hf.encoder.layers, lambda: hf(pixel_values=px))
    assert_tower_matches(tower, px, out.pooler_output, blocks)
    # the pooling head is hooked: its pattern is over every patch and sums to one
    with torch.no_grad():
        _, cache = tower.run_with_cache(px, names_filter="head.attn.hook_pattern")
    pattern = cache["head.attn.hook_pattern"]
    assert pattern.shape == (3, heads, 1, cfg.n_ctx)
    assert "hook_cls_embed" not in tower.hook_dict and "ln_pre.hook_scale" not in tower.hook_dict  # none to hook
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)


def test_hf_siglip_model_vision_tower():
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(2)
    hf = randomize_(SiglipModel(SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8))), seed=3)
    tower = HookedCLIPVision.from_hf(hf, device="cpu")
    px = pixels(32)
    out, blocks = capture_block_outputs(hf.vision_model.encoder.layers, lambda: hf.get_image_features(pixel_values=px))
    ref = out.pooler_output if hasattr(out, "pooler_output") else out
    assert_tower_matches(tower, px, ref, blocks)


# ------------------------------------------------------------------------------------------------ open_clip
OPEN_CLIP = {
    "tok": dict(),
    "tok_quick_gelu": dict(act="quick_gelu"),
    "avg": dict(pool_type="avg"),
    "avg_ln_after_pool": dict(pool_type="avg", final_ln_after_pool=True),
    "tok_ln_after_pool": dict(final_ln_after_pool=True),
    "no_ln_pre": dict(no_ln_pre=True),
    "sincos_gelu_tanh": dict(act="gelu_tanh", pos_embed_type="sin_cos_2d"),
}


@pytest.mark.parametrize("spec", list(OPEN_CLIP))
def test_open_clip_vision_parity(spec):
    ref = open_clip_vit(**OPEN_CLIP[spec])
    tower = HookedCLIPVision.from_open_clip(ref, preprocess=None, device="cpu")
    kw = OPEN_CLIP[spec]
    assert tower.cfg.pooling == {"tok": "cls", "avg": "avg"}[kw.get("pool_type", "tok")]
    assert tower.cfg.ln_pre == (not kw.get("no_ln_pre", False))
    assert tower.cfg.final_ln_after_pool == kw.get("final_ln_after_pool", False)
    assert tower.cfg.act_fn == kw.get("act", "gelu")
    px = pixels(48)
    out, blocks = capture_block_outputs(ref.transformer.resblocks, lambda: ref(px))
    assert_tower_matches(tower, px, out, blocks)


def test_open_clip_model_vision_tower_is_hooked():
    oc = open_clip_model("tiny_argmax")
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    assert isinstance(model.vision, HookedCLIPVision)
    px = pixels(64)
    out, blocks = capture_block_outputs(oc.visual.transformer.resblocks, lambda: oc.encode_image(px))
    assert_tower_matches(model.vision, px, out, blocks)


# ------------------------------------------------------------------------------------ strictness, refusals
def test_strict_loading_names_missing_and_unexpected_keys():
    three = open_clip_vit(layers=3)
    cfg = vision_config_from_open_clip(open_clip_vit(layers=2), device="cpu")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(12\): transformer\.resblocks\.2\."):
        open_clip_vision_state_dict(three, cfg)
    no_ln_pre = open_clip_vit(no_ln_pre=True)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(2\): ln_pre\.bias, ln_pre\.weight"):
        open_clip_vision_state_dict(no_ln_pre, cfg)


@pytest.mark.parametrize("variant,reason", [
    (dict(ls_init_value=0.1), "layer scale"),
    (dict(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2), "attentional pooler"),
    (dict(pool_type="none"), "pool_type='none'"),
])
def test_unsupported_open_clip_vit_variants_are_refused(variant, reason):
    with pytest.raises(UnsupportedImageTower, match=reason):
        HookedCLIPVision.from_open_clip(open_clip_vit(**variant))


def test_resnet_tower_stays_reference_and_refuses_hooks():
    from open_clip.model import CLIP

    from conftest import open_clip_text_cfg

    torch.manual_seed(0)
    oc = randomize_(CLIP(embed_dim=32, vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=16, head_width=16),
                         text_cfg=open_clip_text_cfg("tiny_argmax")), seed=0)
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    assert isinstance(model.vision, ReferenceVisionTower)
    px = pixels(64, n=2)
    with torch.no_grad():
        assert (model.encode_image(px, normalize=False) - oc.encode_image(px)).abs().max() <= ATOL
    with pytest.raises(TypeError, match="ModifiedResNet.*not hooked.*not a ViT"):
        model.vision.run_with_cache(px)
    with pytest.raises(TypeError, match="ModifiedResNet.*not a ViT"):
        model.run_with_cache(["a cat"], px)
    # the text tower is hooked as before
    _, cache = model.run_with_cache(model.to_tokens(["a cat"]), names_filter="blocks.0.hook_resid_pre")
    assert "blocks.0.hook_resid_pre" in cache.cache_dict


def test_bad_pixel_input_is_refused_with_the_fix():
    tower = HookedCLIPVision.from_open_clip(open_clip_vit(), device="cpu")
    with pytest.raises(ValueError, match="48x48"):
        tower(pixels(32))
    with pytest.raises(ValueError, match=r"pixels\[None\]"):
        tower(pixels(48)[0])
    with pytest.raises(ValueError, match="3 channels"):
        tower(torch.zeros(1, 1, 48, 48))
    with pytest.raises(TypeError, match="tower.encode"):
        tower([[0.0]])
    with pytest.raises(ValueError, match=r"pos=10, d_model=64"):
        tower(torch.zeros(1, 9, 64), start_at_layer=1)


def test_hf_clip_vision_model_without_projection():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    hf = randomize_(CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                                     num_hidden_layers=2, image_size=32, patch_size=8)), seed=11)
    tower = HookedCLIPVision.from_hf(hf, device="cpu")
    assert tower.cfg.d_proj is None and tower.W_proj is None
    px = pixels(32)
    out, blocks = capture_block_outputs(hf.encoder.layers, lambda: hf(pixel_values=px))
    assert_tower_matches(tower, px, out.pooler_output, blocks)


def test_config_from_scratch():
    from hooked_clip import CLIPVisionConfig

    cfg = CLIPVisionConfig.for_image(32, 8, d_model=32, d_head=16, n_heads=2, n_layers=1, d_mlp=64, d_proj=8,
                                     pooling="avg", seed=0, device="cpu")
    assert cfg.n_ctx == 17 and cfg.grid_size == 4 and cfg.first_patch == 1
    tower = HookedCLIPVision(cfg)
    assert tower(pixels(32)).shape == (3, 8)
    with pytest.raises(ValueError, match=r"n_ctx must be .* = 17"):
        CLIPVisionConfig(image_size=32, patch_size=8, n_ctx=50)
    with pytest.raises(ValueError, match="pooling='cls' needs class_token=True"):
        CLIPVisionConfig.for_image(32, 8, class_token=False, d_model=32, d_head=16, n_heads=2)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        CLIPVisionConfig.for_image(30, 8, d_model=32, d_head=16, n_heads=2)
    with pytest.raises(ValueError, match="act_fn='relu' is not supported"):
        CLIPVisionConfig.for_image(32, 8, act_fn="relu", d_model=32, d_head=16, n_heads=2)
