"""Cross-checkpoint patching (``source_model=``): the source run recorded on another checkpoint of the same
architecture, exact against a one-forward-per-patch loop on two random checkpoints, both towers; models that
differ in more than their weights are refused naming the fields."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_loop, hf_clip, patch_loop, pixels

from hooked_clip import HookedCLIP
from hooked_clip.analyses.causal_tracing import item_noise, minimal_pair_trace, rome_trace
from hooked_clip.analyses.metrics import cosine_to_target
from hooked_clip.analyses.patching import activation_patch, hidden_state_patch
from hooked_clip.errors import ArchitectureMismatchError, UnsupportedModelError

TEXTS = ["There are no cats in the picture.", "There is no dog.", "no"]
AFF = ["There are some cats in the picture.", "There is a dog.", "a"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    """Two random checkpoints of one architecture (every parameter random, LayerNorms included)."""
    return (HookedCLIP.from_hf(hf_clip("tiny_eot", seed=0), device="cpu"),
            HookedCLIP.from_hf(hf_clip("tiny_eot", seed=5), device="cpu"))


def metric_for(model, n, seed=1):
    return cosine_to_target(torch.randn(n, model.cfg.d_proj, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("act,index", [("resid_pre", "layer_pos"), ("z", "layer_pos_head")])
def test_text_same_inputs_equals_loop(pair, act, index):
    base, tuned = pair
    metric = metric_for(base, len(TEXTS))
    res = activation_patch(base, TEXTS, None, metric, act, index=index, source_model=tuned, progress=False,
                           batch_size=5)
    toks = base.to_tokens(TEXTS)
    assert_matches_loop(res, base.text, toks, toks, metric, source_tower=tuned.text)
    # the source run's metric is the other checkpoint's
    with torch.no_grad():
        assert torch.allclose(res.clean, metric(tuned.text(toks, return_type="normalized")), atol=ATOL)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_text_clean_corrupt_pair_equals_loop(pair, direction):
    base, tuned = pair
    metric = metric_for(base, len(TEXTS))
    res = activation_patch(base, TEXTS, AFF, metric, "resid_mid", direction=direction, source_model=tuned,
                           progress=False)
    assert_matches_loop(res, base.text, base.to_tokens(TEXTS), base.to_tokens(AFF), metric, source_tower=tuned.text)


@pytest.mark.parametrize("act,index", [("resid_pre", "layer_pos"), ("z", "layer_head")])
def test_vision_equals_loop(pair, act, index):
    base, tuned = pair
    px = pixels(64, n=2, seed=3)
    metric = metric_for(base, 2, seed=2)
    res = activation_patch(base, px, None, metric, act, index=index, tower="vision", source_model=tuned,
                           progress=False)
    assert_matches_loop(res, base.vision, px, px, metric, source_tower=tuned.vision)


def test_hidden_states_equal_loop(pair):
    base, tuned = pair
    metric = metric_for(base, len(TEXTS))
    res = hidden_state_patch(base, TEXTS, None, metric, source_model=tuned, progress=False)
    toks = base.to_tokens(TEXTS)
    pre, _ = patch_loop(base.text, toks, toks, metric, "resid_pre", "layer_pos", source_tower=tuned.text)
    post, _ = patch_loop(base.text, toks, toks, metric, "resid_post", "layer_pos", source_tower=tuned.text)
    expected = torch.cat([pre, post[-1:]])  # states 0..L-1 enter the blocks, state L leaves the last
    assert (res.values - expected).abs().max() <= ATOL


def test_minimal_pair_trace_reads_source_states(pair):
    base, tuned = pair
    images = torch.randn(len(TEXTS), base.cfg.d_proj, generator=torch.Generator().manual_seed(4))
    cross = minimal_pair_trace(base, TEXTS, AFF, images, source_model=tuned, progress=False)
    own = minimal_pair_trace(base, TEXTS, AFF, images, progress=False)
    assert cross.shape == own.shape and not torch.allclose(cross.nan_to_num(), own.nan_to_num())


def test_rome_trace_restores_the_other_checkpoints_states(pair):
    """ROME tracing with the clean states from another checkpoint, against a loop: noisy runs of the base,
    one full forward per restored (state, position), the noise drawn by item_noise."""
    base, tuned = pair
    texts, noise_pos, n_samples, std = TEXTS[:2], [1, 2], 2, 0.5
    metric = metric_for(base, len(texts))
    res = rome_trace(base, texts, metric, noise_pos, n_samples=n_samples, noise_std=std, source_model=tuned,
                     progress=False)
    toks = base.to_tokens(texts)[:, : res.scores.shape[2]]
    lengths = base.text.input_lengths(toks)
    noise = item_noise(toks, lengths, n_samples, base.text.cfg.d_model, 0) * (3.0 * std)
    mask = torch.zeros(toks.shape, dtype=torch.bool)
    mask[:, noise_pos] = True
    noise = noise * mask[None, :, :, None]
    L = base.text.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    with torch.no_grad():
        _, clean = tuned.text.run_with_cache(toks)
    expected = torch.empty_like(res.scores)
    for s, name in enumerate(names):
        for p in range(toks.shape[1]):
            outs = []
            for k in range(n_samples):
                def add(x, hook, k=k):
                    return x + noise[k]

                def restore(x, hook, p=p, name=name):
                    x = x.clone()
                    x[:, p] = clean[name][:, p]
                    return x

                with torch.no_grad():
                    outs.append(metric(base.text.run_with_hooks(toks, return_type="normalized",
                                                                fwd_hooks=[("hook_embed", add), (name, restore)])))
            expected[:, s, p] = torch.stack(outs).mean(0)
    assert (res.scores - expected).abs().max() <= ATOL
    with torch.no_grad():
        assert torch.allclose(res.clean, metric(tuned.text(toks, return_type="normalized")), atol=ATOL)


def test_architecture_mismatch_names_the_fields(pair):
    base, _ = pair
    other = HookedCLIP.from_hf(hf_clip("tiny_argmax", seed=0), device="cpu")  # quick_gelu, argmax pooling
    metric = metric_for(base, len(TEXTS))
    with pytest.raises(ArchitectureMismatchError, match="act_fn.*'gelu' vs.*'quick_gelu'") as err:
        activation_patch(base, TEXTS, None, metric, source_model=other, progress=False)
    assert isinstance(err.value, UnsupportedModelError) and "pooling" in str(err.value)
    with pytest.raises(ArchitectureMismatchError, match="act_fn"):
        rome_trace(base, TEXTS, metric, [1], source_model=other, progress=False)


def test_corrupt_none_needs_a_source_model(pair):
    base, _ = pair
    with pytest.raises(ValueError, match="corrupt is None.*source_model="):
        activation_patch(base, TEXTS, None, metric_for(base, len(TEXTS)), progress=False)


def test_a_source_model_on_another_device_is_refused(pair):
    import copy

    base, tuned = pair
    moved = copy.deepcopy(tuned).to("meta")  # any other device
    with pytest.raises(ValueError, match="move one with .to"):
        activation_patch(base, TEXTS, None, metric_for(base, len(TEXTS)), source_model=moved, progress=False)
