"""fp32 parity with HF transformers and open_clip on random weights: final embeddings and every block's
residual output, trimming on and off, several configs, a batch of mixed lengths."""

from __future__ import annotations

import pytest
import torch
from conftest import MIXED_TEXTS, SPECS, hf_clip, open_clip_model

from hooked_clip import HookedCLIP
from hooked_clip.parity import capture_block_outputs

ATOL = 1e-5


def assert_matches(model: HookedCLIP, tokens, ref_embeds, ref_blocks):
    for trim in (True, False):
        names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
        with torch.no_grad():
            emb, cache = model.run_with_cache(tokens, names_filter=names, trim=trim)
        err = (emb - ref_embeds).abs().max().item()
        assert err <= ATOL, f"text embeddings differ by {err:.2e} (trim={trim})"
        n_pos = cache[names[0]].shape[1]
        if trim:
            assert n_pos == int(model.pool_positions(tokens).max()) + 1
        else:
            assert n_pos == tokens.shape[1]
        for layer, ref in enumerate(ref_blocks):
            err = (cache[names[layer]] - ref[:, :n_pos]).abs().max().item()
            assert err <= ATOL, f"resid_post of block {layer} differs by {err:.2e} (trim={trim})"


@pytest.mark.parametrize("spec", list(SPECS))
def test_hf_parity(spec):
    hf = hf_clip(spec, with_vision=False)
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert model.cfg.n_layers == SPECS[spec].layers and model.cfg.pooling == SPECS[spec].pooling
    tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")
    out, blocks = capture_block_outputs(hf.text_model.encoder.layers, lambda: hf(input_ids=tokens))
    assert len(blocks) == SPECS[spec].layers
    assert_matches(model, tokens, out.text_embeds, blocks)


@pytest.mark.parametrize("spec", list(SPECS))
def test_open_clip_parity(spec):
    oc = open_clip_model(spec)
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    assert model.cfg.act_fn == SPECS[spec].act and model.cfg.pooling == SPECS[spec].pooling
    tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")
    out, blocks = capture_block_outputs(oc.transformer.resblocks, lambda: oc.encode_text(tokens))
    assert_matches(model, tokens, out, blocks)


def test_eot_pooling_reads_first_eot_not_argmax():
    """With an EOT id that is not the largest id (here '.'), first-EOT pooling and argmax pooling read
    different positions; ours follows HF's rule for that config and differs from argmax pooling."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from conftest import randomize_

    dot = 269
    hf = randomize_(CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
        projection_dim=32, eos_token_id=dot)), seed=5)
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert model.cfg.pooling == "eot" and model.cfg.eot_token_id == dot
    tokens = model.to_tokens(["There is a cat. It sleeps.", "no dogs."])
    assert model.pool_positions(tokens).tolist() == [5, 3]
    with torch.no_grad():
        ref = hf(input_ids=tokens).text_embeds
        assert (model.encode_text(tokens, normalize=False) - ref).abs().max() <= ATOL
        argmax = HookedCLIP.from_hf(hf, device="cpu", pooling="argmax")
        assert (argmax.encode_text(tokens, normalize=False) - ref).abs().max() > 1e-3


def test_hf_image_tower_and_similarity():
    from PIL import Image
    from transformers import CLIPImageProcessorPil  # transformers 4's pipeline, the library's default

    hf = hf_clip("tiny_eot")
    model = HookedCLIP.from_hf(hf, device="cpu")
    tokens = model.to_tokens(MIXED_TEXTS)
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref = hf(input_ids=tokens, pixel_values=pixels).logits_per_text
        ours = model.similarity(model.encode_text(tokens), model.encode_image(pixels))
        assert (ours - ref).abs().max().item() <= 1e-4  # logits are exp(4.2) ~ 67x the cosine
        assert (model(tokens, pixels) - ref).abs().max().item() <= 1e-4
        # PIL input goes through the reference preprocessing
        images = [Image.fromarray((torch.rand(80, 100, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
        px = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})(
            images=images, return_tensors="pt")["pixel_values"]
        ref_img = hf.visual_projection(hf.vision_model(pixel_values=px).pooler_output)
        assert (model.encode_image(images, normalize=False) - ref_img).abs().max().item() <= ATOL


def test_open_clip_image_tower_and_similarity():
    from open_clip.transform import image_transform
    from PIL import Image

    oc = open_clip_model("tiny_argmax")
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")
    gen = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref, _ = oc.get_logits(pixels, tokens)  # [image, text]
        ours = model.similarity(model.encode_text(tokens), model.encode_image(pixels))
        assert (ours.T - ref).abs().max().item() <= 1e-4
        images = [Image.fromarray((torch.rand(90, 70, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
        transform = image_transform(64, is_train=False)
        ref_img = oc.encode_image(torch.stack([transform(im) for im in images]))
        assert (model.encode_image(images, normalize=False) - ref_img).abs().max().item() <= ATOL


def test_text_only_checkpoint_has_no_image_tower():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot", with_vision=False), device="cpu")
    with pytest.raises(ValueError, match="no image tower"):
        model.encode_image(torch.zeros(1, 3, 64, 64))
