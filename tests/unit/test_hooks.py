"""TransformerLens semantics: every hook exists, fires and is patchable; caches, shorthand, hooks()
cleanup, start/stop_at_layer, opt-in attn result / split qkv input, fused attention, TL's own patching."""

from __future__ import annotations

import pytest
import torch
from conftest import MIXED_TEXTS, hf_clip
from transformer_lens import utilities as utils

from hooked_clip import HookedCLIP

DESIGN_BLOCK_HOOKS = [
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "ln1.hook_scale", "ln1.hook_normalized",
    "ln2.hook_scale", "ln2.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result", "hook_q_input", "hook_k_input",
    "hook_v_input", "hook_attn_out", "hook_mlp_out", "mlp.hook_pre", "mlp.hook_post",
]
DESIGN_ROOT_HOOKS = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized",
                     "hook_pooled", "hook_text_embed", "hook_text_embed_normalized"]


@pytest.fixture(scope="module")
def full_model():
    """Opt-in hooks on: use_attn_result and use_split_qkv_input."""
    return HookedCLIP.from_hf(hf_clip("tiny_argmax", with_vision=False), device="cpu",
                              use_attn_result=True, use_split_qkv_input=True)


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return tiny_model.to_tokens(MIXED_TEXTS)


def all_hook_names(model):
    return DESIGN_ROOT_HOOKS + [f"blocks.{l}.{h}" for l in range(model.cfg.n_layers) for h in DESIGN_BLOCK_HOOKS]


def test_every_design_hook_exists(full_model):
    assert set(all_hook_names(full_model)) == set(full_model.text.hook_dict)


def test_every_hook_fires_with_documented_shape(full_model, tokens):
    _, cache = full_model.run_with_cache(tokens, return_type="normalized")
    assert set(cache.keys()) == set(all_hook_names(full_model))
    cfg, b = full_model.cfg, tokens.shape[0]
    p = int(full_model.pool_positions(tokens).max()) + 1
    assert cache["blocks.0.attn.hook_q"].shape == (b, p, cfg.n_heads, cfg.d_head)
    assert cache["blocks.0.attn.hook_pattern"].shape == (b, cfg.n_heads, p, p)
    assert cache["blocks.0.attn.hook_result"].shape == (b, p, cfg.n_heads, cfg.d_model)
    assert cache["blocks.0.hook_q_input"].shape == (b, p, cfg.n_heads, cfg.d_model)
    assert cache["blocks.1.mlp.hook_post"].shape == (b, p, cfg.d_mlp)
    assert cache["ln_final.hook_scale"].shape == (b, p, 1)
    assert cache["hook_pooled"].shape == (b, cfg.d_model)
    assert cache["hook_text_embed"].shape == (b, cfg.d_proj)
    assert cache["hook_text_embed_normalized"].shape == (b, cfg.d_proj)


@pytest.mark.parametrize("index", range(len(DESIGN_ROOT_HOOKS) + 2 * len(DESIGN_BLOCK_HOOKS)))
def test_every_hook_is_patchable(full_model, tokens, index):
    name = all_hook_names(full_model)[index]
    gen = torch.Generator().manual_seed(index)
    with torch.no_grad():
        clean = full_model.text(tokens, return_type="normalized")

        def perturb(x, hook):
            return x + 0.5 * torch.randn(x.shape, generator=gen)

        patched = full_model.run_with_hooks(tokens, return_type="normalized", fwd_hooks=[(name, perturb)])
    assert (patched - clean).abs().max() > 1e-3, f"patching {name} did not change the output"


def test_hook_result_and_split_inputs_are_exact(full_model, tiny_model, tokens):
    plain = HookedCLIP.from_hf(hf_clip("tiny_argmax", with_vision=False), device="cpu")
    with torch.no_grad():
        assert (full_model.encode_text(tokens) - plain.encode_text(tokens)).abs().max() <= 1e-6
        _, cache = full_model.run_with_cache(tokens)
    for layer in range(full_model.cfg.n_layers):
        summed = cache["result", layer].sum(dim=2) + full_model.text.blocks[layer].attn.b_O
        assert torch.allclose(summed, cache["attn_out", layer], atol=1e-6)


def test_patching_one_heads_query_input_leaves_other_heads(full_model, tokens):
    def patch_head0(x, hook):
        x = x.clone()
        x[:, :, 0] += torch.randn(x[:, :, 0].shape, generator=torch.Generator().manual_seed(0))
        return x

    with torch.no_grad():
        _, clean = full_model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
        with full_model.hooks(fwd_hooks=[("blocks.0.hook_q_input", patch_head0)]):
            _, patched = full_model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    z0, z1 = clean["blocks.0.attn.hook_z"], patched["blocks.0.attn.hook_z"]
    assert (z0[:, :, 0] - z1[:, :, 0]).abs().max() > 1e-4
    assert torch.equal(z0[:, :, 1:], z1[:, :, 1:])


def test_cache_shorthand_and_get_act_name(tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    assert torch.equal(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache[utils.get_act_name("pattern", 0)], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(cache["resid_post", -1], cache["blocks.1.hook_resid_post"])
    _, only = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert sorted(only.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_pattern_hooks_see_real_values_under_fused_attention(tokens):
    tiny_model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", use_fused_attn=True)
    with torch.no_grad():
        fused = tiny_model.encode_text(tokens, normalize=False)
        emb, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n or "hook_v" in n or "hook_z" in n)
    assert (emb - fused).abs().max() <= 1e-6  # explicit path (pattern hooked) == fused path
    pattern = cache["pattern", 0]
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern[..., 0]), atol=1e-6)
    assert (pattern.triu(1) == 0).all()  # causal
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, cache["v", 0])
    assert torch.allclose(z, cache["z", 0], atol=1e-6)


def test_start_and_stop_at_layer(tiny_model, tokens):
    with torch.no_grad():
        full = tiny_model.text(tokens)
        resid = tiny_model.text(tokens, stop_at_layer=1)
        _, cache = tiny_model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
        assert torch.equal(resid, cache["resid_pre", 1])
        rest = tiny_model.text(resid, start_at_layer=1, tokens=tokens)
        assert torch.equal(rest, full)
        pools = tiny_model.pool_positions(tokens)
        assert torch.equal(tiny_model.text(resid, start_at_layer=1, pool_positions=pools), full)


def test_raising_hook_leaves_no_hook_attached(tiny_model, tokens):
    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", boom), ("hook_embed", lambda x, hook: x)])
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", boom)]):
            tiny_model.encode_text(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), boom)])
    assert not any(hp.has_hooks() for hp in tiny_model.text.hook_points())
    assert not any(m._forward_hooks for m in tiny_model.text.modules())


def test_unknown_hook_names_suggest_close_ones(tiny_model, tokens):
    from hooked_clip.errors import UnknownHookError

    with pytest.raises(UnknownHookError, match=r"no hook 'blocks.0.hook_resid_pr'.*'blocks.0.hook_resid_pre'"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pr", lambda x, hook: x)])
    with pytest.raises(UnknownHookError, match="blocks.7.hook_resid_post"):
        tiny_model.run_with_cache(tokens, names_filter=["blocks.7.hook_resid_post"])
    assert not any(hp.has_hooks() for hp in tiny_model.text.hook_points())


def test_patching_an_identical_state_has_zero_effect(tiny_model):
    """Position 0..2 ("[SOT] there are") are identical in both sentences, so under the causal mask their
    residuals are identical too: patching them changes nothing, exactly."""
    neg, aff = tiny_model.to_tokens(["There are no cats."]), tiny_model.to_tokens(["There are some cats."])
    with torch.no_grad():
        _, neg_cache = tiny_model.run_with_cache(neg)
        base = tiny_model.encode_text(aff)
        for layer in range(tiny_model.cfg.n_layers):
            for pos in range(3):
                def patch(x, hook, pos=pos, layer=layer):
                    x = x.clone()
                    x[:, pos] = neg_cache["resid_pre", layer][:, pos]
                    return x

                out = tiny_model.run_with_hooks(aff, return_type="normalized",
                                                fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])
                assert torch.equal(out, base)


def test_transformer_lens_patching_runs_on_our_model(tiny_model):
    """transformer_lens.patching accepts the tower unchanged and matches a plain run_with_hooks loop."""
    from transformer_lens import patching
    from transformer_lens.model_protocol import TransformerLensModel

    text = tiny_model.text
    assert isinstance(text, TransformerLensModel)
    clean = text.to_tokens(["There are no cats.", "There is no dog."])
    corrupt = text.to_tokens(["There are some cats.", "There is a dog."])
    target = tiny_model.encode_text(clean).detach()

    def metric(embeds):
        return torch.nn.functional.cosine_similarity(embeds, target, dim=-1).mean()

    with torch.no_grad():
        _, clean_cache = text.run_with_cache(clean)
        tl = patching.get_act_patch_resid_pre(text, corrupt, clean_cache, metric)
        ref = torch.zeros(text.cfg.n_layers, clean.shape[1])
        for layer in range(text.cfg.n_layers):
            for pos in range(clean.shape[1]):
                def hook(x, hook, layer=layer, pos=pos):
                    x = x.clone()
                    x[:, pos] = clean_cache["resid_pre", layer][:, pos]
                    return x
                ref[layer, pos] = metric(text.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]))
    assert tl.shape == ref.shape
    assert (tl - ref).abs().max() <= 1e-6
    assert (ref[:, :3] == metric(text(corrupt))).all()  # identical prefix: no effect


def test_numbers_do_not_depend_on_attached_hooks(tiny_model, tokens):
    """A fully cached run and a plain run are bit-identical, so clean caches and patched runs agree."""
    with torch.no_grad():
        plain = tiny_model.text(tokens, return_type="normalized")
        cached, cache = tiny_model.run_with_cache(tokens, return_type="normalized")
        assert torch.equal(plain, cached)
        assert torch.equal(tiny_model.text(tokens, stop_at_layer=2), cache["resid_post", 1])


def test_layer_norm_scale_hook_semantics(tiny_model, tokens):
    """Reading ln scales changes nothing; editing one in place or returning a new one takes effect; the
    cached scale reproduces the normalised output."""
    name = "blocks.1.ln2.hook_scale"
    with torch.no_grad():
        plain = tiny_model.text(tokens)
        read = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: None)])
        assert torch.equal(read, plain)

        def in_place(x, hook):
            x.mul_(2.0)
            return x

        edited = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, in_place)])
        returned = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x * 2.0)])
        assert (edited - plain).abs().max() > 1e-3
        assert torch.allclose(edited, returned, atol=1e-6)
        _, cache = tiny_model.run_with_cache(tokens)
    ln = tiny_model.text.blocks[1].ln2
    x = cache["resid_mid", 1]
    recon = (x - x.mean(-1, keepdim=True)) / cache[name] * ln.w + ln.b
    assert torch.allclose(recon, cache["blocks.1.ln2.hook_normalized"], atol=1e-5)


def test_prefix_run_equals_full_run(tiny_model, tokens):
    """Running only the positions after a prefix, with the prefix's keys/values, gives the same output."""
    text = tiny_model.text
    tokens = tokens[text.pool_positions(tokens) >= 3]  # rows long enough for a 3-token prefix
    with torch.no_grad():
        full = text(tokens)
        _, cache = text.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_k", "hook_v", "hook_resid_pre")))
        pool = text.pool_positions(tokens)
        for start, prefix in [(0, 1), (1, 3)]:
            kv = [(cache["k", j][:, :prefix], cache["v", j][:, :prefix]) for j in range(start, text.cfg.n_layers)]
            out = text(cache["resid_pre", start][:, prefix:], start_at_layer=start, pool_positions=pool - prefix, prefix=kv)
            assert (out - full).abs().max() <= 1e-6
        with pytest.raises(ValueError, match="prefix needs start_at_layer"):
            text(tokens, prefix=kv)
        with pytest.raises(ValueError, match="prefix has 1 entries for 2 blocks"):
            text(cache["resid_pre", 0][:, 3:], start_at_layer=0, pool_positions=pool - 3, prefix=kv)


# ------------------------------------------------------------------------ checked hook returns (issue 14)
def test_every_hook_point_is_checked(full_model, tiny_model):
    from hooked_clip.hook_points import CheckedHookPoint

    for model in (full_model, tiny_model):
        assert all(isinstance(hp, CheckedHookPoint) for hp in model.text.hook_dict.values())


def test_hook_returning_fewer_rows_stops_the_run(tiny_model):
    """x[:1] on a batch of 2 used to be indexed/broadcast downstream: row 1 silently became example 0."""
    from hooked_clip.errors import HookReturnError

    tokens = tiny_model.to_tokens(["There is a cat.", "There are no dogs."])
    with pytest.raises(HookReturnError, match=r"on 'blocks.0.hook_resid_pre' \(fwd\) returned a tensor of shape "
                                              r"\(1, 7, 64\).*replaces has shape \(2, 7, 64\)"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x[:1])])
    assert not any(hp.has_hooks() for hp in tiny_model.text.hook_points())


def test_pattern_hook_returning_one_head_stops_the_run(full_model, tokens):
    from hooked_clip.errors import HookReturnError

    def one_head(pattern, hook):
        return pattern[:, :1]

    with pytest.raises(HookReturnError, match=r"one_head on 'blocks.1.attn.hook_pattern'.*shape \(6, 1, "):
        full_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", one_head)])


@pytest.mark.parametrize("bad, got", [
    (lambda x, hook: x.double(), "torch.float64"),
    (lambda x, hook: x.to("meta"), r"torch.float32 on meta, but the activation it replaces has .* on cpu"),
    (lambda x, hook: x[..., None], r"shape \(6, \d+, 64, 1\)"),
    (lambda x, hook: x.tolist(), "returned a list"),
    (lambda x, hook: 0.0, "returned a float"),
])
def test_hook_returning_other_dtype_or_type_stops_the_run(tiny_model, tokens, bad, got):
    from hooked_clip.errors import HookReturnError

    with pytest.raises(HookReturnError, match=got):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", bad)])
    with pytest.raises(HookReturnError, match=got):  # hooks() and a HookPoint's own add_hook are checked too
        with tiny_model.hooks(fwd_hooks=[(lambda n: n == "hook_embed", bad)]):
            tiny_model.encode_text(tokens)
    point = tiny_model.text.blocks[0].hook_attn_out
    point.add_hook(bad)
    try:
        with pytest.raises(HookReturnError, match="'blocks.0.hook_attn_out'"):
            tiny_model.encode_text(tokens)
    finally:
        point.remove_hooks()


def test_backward_hook_returning_another_shape_stops(tiny_model, tokens):
    from hooked_clip.errors import HookReturnError

    text = tiny_model.text
    with torch.no_grad():
        resid = text(tokens, stop_at_layer=1)
    resid.requires_grad_(True)  # a graph whatever the parameters' requires_grad
    text.add_hook("blocks.1.hook_resid_pre", lambda g, hook: g[:1], dir="bwd")
    try:
        with torch.enable_grad(), pytest.raises(HookReturnError, match=r"'blocks.1.hook_resid_pre' \(bwd\).*the gradient it replaces"):
            text(resid, start_at_layer=1, tokens=tokens).sum().backward()
    finally:
        text.reset_hooks(including_permanent=True)


def test_well_formed_hook_returns_still_patch(tiny_model, tokens):
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        plain = tiny_model.text(tokens)
        assert torch.equal(tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: None)]), plain)
        assert torch.equal(tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x)]), plain)
        doubled = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: 2 * x)])
    assert (doubled - plain).abs().max() > 1e-3
    def reader(x, hook):
        return None

    handle = tiny_model.text.blocks[0].hook_resid_post.add_hook(reader)
    assert handle.user_hook is reader  # list_hooks() shows the user's function, not the checking wrapper
    tiny_model.text.reset_hooks()


# ------------------------------------------------------------------- hooks that cannot fire (issue 14)
def test_opt_in_hooks_need_their_flag(tiny_model, tokens):
    with pytest.raises(ValueError, match=r"'blocks.0.attn.hook_result' never fires.*use_attn_result=True"):
        tiny_model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_result"])
    with pytest.raises(ValueError, match=r"'blocks.1.hook_v_input' never fires.*use_split_qkv_input=True"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", lambda x, hook: None)])
    with pytest.raises(ValueError, match="use_attn_result"):
        tiny_model.text.add_hook("blocks.1.attn.hook_result", lambda x, hook: None)
    with pytest.raises(ValueError, match="'blocks.0.hook_q_input' never fires"):
        with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_q_input", lambda x, hook: None)]):
            pass
    assert not any(hp.has_hooks() for hp in tiny_model.text.hook_points())
    _, everything = tiny_model.run_with_cache(tokens)  # caching all hooks is still fine
    assert "blocks.0.attn.hook_result" not in everything.keys()


def test_named_hooks_that_do_not_fire_in_this_run(tiny_model, tokens):
    with pytest.raises(ValueError, match=r"\['blocks.1.hook_resid_post'\] did not fire.*stop_at_layer"):
        tiny_model.run_with_cache(tokens, stop_at_layer=1, names_filter=["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match=r"\['hook_text_embed_normalized'\] did not fire.*'return_type': 'embed'"):
        tiny_model.run_with_cache(tokens, return_type="embed", names_filter="hook_text_embed_normalized")


def test_identity_hooks_returning_the_scale_keep_numbers_bit_for_bit(tiny_model, tokens):
    """A hook at every LayerNorm ``hook_scale`` that returns a copy of its input (equal values, another
    tensor) gives the same output bit for bit as no hook: the fused kernel stays in charge. A changed
    value still takes effect."""
    names = [n for n in tiny_model.text.hook_dict if n.endswith("hook_scale")]
    assert len(names) == 2 * tiny_model.cfg.n_layers + 1
    with torch.no_grad():
        plain = tiny_model.text(tokens)
        for identity in (lambda x, hook: x.clone(), lambda x, hook: x * 1.0):
            hooked = tiny_model.run_with_hooks(tokens, fwd_hooks=[(n, identity) for n in names])
            assert torch.equal(hooked, plain)
        nudged = tiny_model.run_with_hooks(tokens, fwd_hooks=[(names[3], lambda x, hook: x * (1 + 1e-3))])
        assert not torch.equal(nudged, plain)


def test_returned_scale_with_other_gradient_path_is_respected(tiny_model, tokens):
    """Returning ``scale.detach()`` (equal values) freezes the scale for gradients: the explicit path runs,
    so the gradient differs from the plain run's, while the forward value matches to float rounding."""
    name = "ln_final.hook_scale"

    def grad_of_embed(fwd_hooks):
        embed = {}

        def keep(x, hook):
            x.retain_grad()
            embed["x"] = x

        out = tiny_model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", keep)] + fwd_hooks)
        out.sum().backward()
        return out.detach(), embed["x"].grad

    out_plain, g_plain = grad_of_embed([])
    out_frozen, g_frozen = grad_of_embed([(name, lambda x, hook: x.detach())])
    assert torch.allclose(out_frozen, out_plain, atol=1e-5)
    assert (g_frozen - g_plain).abs().max() > 1e-4


def test_identity_scale_hooks_on_the_image_tower_keep_numbers_bit_for_bit():
    """The same LayerNorm component in the hooked image tower: an identity hook returning a copy of every
    ``hook_scale`` leaves the image embedding bit for bit unchanged."""
    model = HookedCLIP.from_hf(hf_clip("tiny_argmax"), device="cpu")
    vision = model.vision
    names = [n for n in vision.hook_dict if n.endswith("hook_scale")]
    assert len(names) >= 2 * vision.cfg.n_layers + 1
    pixels = torch.randn(2, 3, vision.cfg.image_size, vision.cfg.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = vision(pixels)
        hooked = vision.run_with_hooks(pixels, fwd_hooks=[(n, lambda x, hook: x.clone()) for n in names])
    assert torch.equal(hooked, plain)


def test_fused_qkv_weights_follow_every_weight_change():
    """The fused q/k/v matrix is kept between no-grad forwards; an in-place edit, a load_state_dict or a new
    Parameter must each reach the next forward (checked against a fresh model with the same weights)."""
    from hooked_clip import CLIPTextConfig, HookedCLIPText

    cfg = dict(d_model=32, d_head=16, n_heads=2, n_layers=2, d_mlp=64, d_proj=16, seed=0, device="cpu")
    model = HookedCLIPText(CLIPTextConfig(**cfg))
    tokens = torch.tensor([[49406, 320, 1929, 49407]])

    def fresh_output():
        other = HookedCLIPText(CLIPTextConfig(**cfg))
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            return other(tokens)

    with torch.no_grad():
        model(tokens)
        model.blocks[0].attn.W_K.mul_(1.5)  # in place
        assert torch.equal(model(tokens), fresh_output())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["blocks.1.attn.b_V"] += 0.3
        model.load_state_dict(state)
        assert torch.equal(model(tokens), fresh_output())
        model.blocks[1].attn.W_Q = torch.nn.Parameter(model.blocks[1].attn.W_Q * 0.5)  # replaced
        assert torch.equal(model(tokens), fresh_output())
    out = model(tokens)  # with autograd the weights are used directly: gradients reach them
    out.sum().backward()
    assert model.blocks[0].attn.W_Q.grad is not None and model.blocks[0].attn.W_Q.grad.abs().sum() > 0
