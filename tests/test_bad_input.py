"""Each bad input gets one clear exception naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from hooked_clip import CLIPTextConfig, HookedCLIPText


def test_wrong_token_dtype_and_shape(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])
    with pytest.raises(TypeError, match=r"integer ids, got dtype torch.float32.*to_tokens.*start_at_layer"):
        tiny_model.encode_text(tokens.float())
    with pytest.raises(ValueError, match=r"\[batch, pos\], got \(7,\); add a batch dimension"):
        tiny_model.encode_text(tokens[0])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 49408\)"):
        tiny_model.encode_text(tokens + 49408)
    with pytest.raises(TypeError, match="tensor of ids or text"):
        tiny_model.text(None)


def test_over_context_length(tiny_model):
    with pytest.raises(ValueError, match="over the context length of 77.*truncate=True"):
        tiny_model.encode_text(["word " * 80])
    with pytest.raises(ValueError, match="80 positions, over the context length 77"):
        tiny_model.encode_text(torch.ones(1, 80, dtype=torch.long))


def test_start_at_layer_inputs(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])
    resid = tiny_model.text(tokens, stop_at_layer=1)
    with pytest.raises(ValueError, match=r"\[batch, pos, d_model=64\], got \(1, 7, 32\)"):
        tiny_model.text(resid[..., :32], start_at_layer=1, tokens=tokens)
    with pytest.raises(ValueError, match="pass tokens=... or pool_positions="):
        tiny_model.text(resid, start_at_layer=1)
    with pytest.raises(TypeError, match="float residual stream"):
        tiny_model.text(tokens, start_at_layer=1, tokens=tokens)
    with pytest.raises(ValueError, match=r"pool_positions must lie in \[0, 7\)"):
        tiny_model.text(resid, start_at_layer=1, pool_positions=torch.tensor([9]))


def test_eot_pooling_without_eot(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])[:, :-1]
    with pytest.raises(ValueError, match=r"rows \[0\] have no EOT token"):
        tiny_model.encode_text(tokens)


def test_bad_config_and_return_type(tiny_model):
    with pytest.raises(ValueError, match="act_fn='relu' is not supported"):
        CLIPTextConfig(act_fn="relu")
    with pytest.raises(ValueError, match="pooling='cls' is not supported"):
        CLIPTextConfig(pooling="cls")
    with pytest.raises(ValueError, match="n_heads \\* d_head must equal d_model"):
        CLIPTextConfig(d_model=64, n_heads=3, d_head=20)
    with pytest.raises(ValueError, match="return_type must be one of"):
        tiny_model.text(tiny_model.to_tokens("a"), return_type="logits")


def test_bad_image_and_similarity_input(tiny_model):
    with pytest.raises(ValueError, match=r"float \[batch, channels, height, width\]"):
        tiny_model.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="must be 64x64"):
        tiny_model.encode_image(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="empty list of images"):
        tiny_model.encode_image([])
    t = tiny_model.encode_text(["a cat"])
    with pytest.raises(ValueError, match="text_embeds have width 32 but image_embeds 16"):
        tiny_model.similarity(t, torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"image_embeds must be a \[n, d_proj\] tensor"):
        tiny_model.similarity(t, torch.zeros(32))


def test_trimming_only_where_exact():
    assert CLIPTextConfig(pooling="argmax").trims
    assert not CLIPTextConfig(pooling="last").trims
    assert not CLIPTextConfig(causal=False).trims
    assert not CLIPTextConfig(trim_after_pool=False).trims


def test_non_causal_and_last_pooling_are_not_trimmed():
    """Without a causal mask later positions change earlier ones, so nothing may be dropped."""
    for cfg in (CLIPTextConfig(d_model=32, n_heads=2, d_head=16, n_layers=1, d_mlp=64, causal=False, seed=0, device="cpu"),
                CLIPTextConfig(d_model=32, n_heads=2, d_head=16, n_layers=1, d_mlp=64, pooling="last", seed=0, device="cpu")):
        model = HookedCLIPText(cfg)
        tokens = model.to_tokens(["a cat", "there are no dogs in the picture"])
        _, cache = model.run_with_cache(tokens)
        assert cache["resid_pre", 0].shape[1] == tokens.shape[1]
