"""HookedCLIP over both towers: one cache with text./vision. names, one run patching both towers, and the
text-only API unchanged."""

from __future__ import annotations

import pytest
import torch

from hooked_clip.errors import UnknownHookError

TEXTS = ["There is a cat.", "no dogs", "A man riding a bicycle."]


@pytest.fixture(scope="module")
def px():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_run_with_cache_over_both_towers(tiny_model, px):
    model = tiny_model
    tokens = model.to_tokens(TEXTS)
    with torch.no_grad():
        sim, cache = model.run_with_cache(tokens, px)
        _, tcache = model.text.run_with_cache(tokens, "normalized")
        _, vcache = model.vision.run_with_cache(px, "normalized")
        assert torch.equal(sim, model(tokens, px)) and sim.shape == (3, 2)
    assert set(cache.keys()) == ({f"text.{k}" for k in tcache.keys()} | {f"vision.{k}" for k in vcache.keys()}
                                 | {"hook_text_embed", "hook_text_embed_normalized", "hook_image_embed",
                                    "hook_image_embed_normalized"})
    for k in tcache.keys():
        assert torch.equal(cache[f"text.{k}"], tcache[k])
    for k in vcache.keys():
        assert torch.equal(cache[f"vision.{k}"], vcache[k])
    assert torch.equal(cache["hook_image_embed"], vcache["hook_image_embed"])
    assert torch.equal(cache["hook_text_embed"], tcache["hook_text_embed"])
    assert torch.allclose(model.similarity(cache["hook_text_embed"], cache["hook_image_embed"]), sim)


def test_names_filter_over_both_towers(tiny_model, px):
    names = ["vision.blocks.1.attn.hook_pattern", "text.blocks.0.hook_resid_post", "hook_image_embed"]
    _, cache = tiny_model.run_with_cache(TEXTS, images=px, names_filter=names)
    assert sorted(cache.keys()) == sorted(names)
    assert cache["vision.blocks.1.attn.hook_pattern"].shape == (2, 2, 17, 17)
    _, cache = tiny_model.run_with_cache(TEXTS, px, names_filter=lambda n: n.endswith("hook_pooled"))
    assert sorted(cache.keys()) == ["text.hook_pooled", "vision.hook_pooled"]
    with pytest.raises(UnknownHookError, match="prefix hook names with 'text.' or 'vision.'"):
        tiny_model.run_with_cache(TEXTS, px, names_filter=["blocks.0.hook_resid_post"])
    with pytest.raises(UnknownHookError, match="Did you mean 'blocks.0.hook_resid_post'"):
        tiny_model.run_with_cache(TEXTS, px, names_filter=["vision.blocks.0.hook_resid_pst"])


def test_run_with_hooks_patches_both_towers_in_one_run(tiny_model, px):
    model = tiny_model
    tokens = model.to_tokens(TEXTS)
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    with torch.no_grad():
        both = model.run_with_hooks(tokens, px, fwd_hooks=[("vision.blocks.0.hook_attn_out", zero),
                                                            ("text.blocks.1.hook_mlp_out", zero)])
        t = model.text.run_with_hooks(tokens, "normalized", fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
        i = model.vision.run_with_hooks(px, "normalized", fwd_hooks=[("blocks.0.hook_attn_out", zero)])
        clean = model(tokens, px)
    assert torch.allclose(both, model.similarity(t, i), atol=1e-5)
    assert (both - clean).abs().max() > 1e-3  # both patches changed the result
    # a top-level embedding hook replaces the image embedding
    with torch.no_grad():
        swapped = model.run_with_hooks(tokens, px, fwd_hooks=[("hook_image_embed", lambda a, hook: a.flip(0))])
    assert torch.allclose(swapped, clean.flip(1), atol=1e-5)
    # hooks() routes the same names, so encode_image sees them; no hook is left behind
    with model.hooks(fwd_hooks=[("vision.blocks.0.hook_attn_out", zero)]), torch.no_grad():
        assert torch.allclose(model.encode_image(px), i, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(model(tokens, px), clean)
    with pytest.raises(ValueError, match="vision hooks need images"):
        model.run_with_hooks(tokens, fwd_hooks=[("vision.blocks.0.hook_attn_out", zero)])


def test_text_only_api_is_unchanged(tiny_model):
    model = tiny_model
    tokens = model.to_tokens(TEXTS)
    with torch.no_grad():
        emb, cache = model.run_with_cache(tokens)
        assert torch.equal(emb, model.text(tokens))
        assert "blocks.0.hook_resid_pre" in cache.cache_dict and not any(k.startswith(("text.", "vision.")) for k in cache.keys())
        pooled, _ = model.run_with_cache(tokens, "pooled")
        assert pooled.shape == (3, model.cfg.d_model)
        out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: a * 0)])
        assert out.shape == emb.shape and not torch.equal(out, emb)
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: a * 0)]):
            assert torch.equal(model.encode_text(tokens, normalize=False), out)


def test_documented_image_hook_names_exist(tiny_model, px):
    """The names the vision tower's docstring lists are the tower's hooks, and TL's shorthand works."""
    from transformer_lens.utilities import get_act_name

    v = tiny_model.vision
    names = set(v.hook_dict)
    for name in ["hook_patch_embed", "hook_cls_embed", "hook_pos_embed", "ln_pre.hook_scale", "ln_pre.hook_normalized",
                 "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post",
                 "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z",
                 "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.hook_attn_out",
                 "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "ln_post.hook_scale",
                 "ln_post.hook_normalized", "hook_pooled", "hook_image_embed", "hook_image_embed_normalized"]:
        assert name in names, name
    with torch.no_grad():
        _, cache = v.run_with_cache(px)
    assert cache["hook_patch_embed"].shape == (2, 16, 64) and cache["hook_cls_embed"].shape == (2, 1, 64)
    assert torch.equal(cache["pattern", 1], cache[get_act_name("pattern", 1)])
    assert torch.equal(cache["resid_post", 0], cache["blocks.0.hook_resid_post"])
    # start/stop at a layer, as in TransformerLens
    with torch.no_grad():
        mid = v(px, stop_at_layer=1)
        assert torch.equal(mid, cache["blocks.1.hook_resid_pre"])
        assert torch.allclose(v(mid, start_at_layer=1), v(px), atol=1e-6)


def test_siglip_pil_images_use_siglip_preprocessing():
    from PIL import Image
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    from conftest import randomize_
    from hooked_clip import HookedCLIPVision

    torch.manual_seed(0)
    hf = randomize_(SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                                         num_hidden_layers=1, image_size=32, patch_size=16)), 4)
    tower = HookedCLIPVision.from_hf(hf)
    gen = torch.Generator().manual_seed(6)
    images = [Image.fromarray((torch.rand(50, 40, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
    px = SiglipImageProcessorPil(size={"height": 32, "width": 32})(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(tower.as_pixels(images), px)
    with torch.no_grad():
        assert (tower.encode(images) - hf(pixel_values=px).pooler_output).abs().max() <= 1e-5


def test_transformer_lens_habits_on_the_clip_model():
    """load_model takes the forward options a TL user passes; set_use_attn_result reaches both towers;
    model(texts) runs the text tower; a PatchingResult prints its shape, not every number."""
    from hooked_clip import load_model
    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch

    model = load_model("tiny-negation-pixels", device="cpu", use_attn_result=True)
    assert model.text.cfg.use_attn_result and model.vision.cfg.use_attn_result
    model.set_use_attn_result(False)
    assert not model.text.cfg.use_attn_result and not model.vision.cfg.use_attn_result
    with pytest.raises(ValueError, match="set_options sets only"):
        model.set_options(n_layers=2)
    with torch.no_grad():
        assert torch.equal(model(["there is a dog."]), model.encode_text(["there is a dog."]))
    res = activation_patch(model, ["there is no dog."], ["there is a dog."],
                           cosine_to_target(torch.randn(1, model.cfg.d_proj)), progress=False)
    text = repr(res)
    assert text.startswith("PatchingResult(resid_pre, denoise, values [layer=4, pos=") and "tensor" not in text
