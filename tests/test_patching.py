"""The batched patching engine against a plain one-forward-per-patch loop, its exact invariants, and its
bad-input errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import hf_clip
from transformer_lens import patching as tl_patching
from transformer_lens.utilities import get_act_name

from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.analyses.patching import activation_patch
from hooked_clip import HookedCLIP

NEG = ["There are no cats in the picture.", "There is no dog.", "There are no people.", "no"]
AFF = ["There are some cats in the picture.", "There is a dog.", "There are some people.", "a"]
ATOL = 1e-5
# written here, not imported from the engine: the reference must not share the engine's tables
POSITIONAL = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
PER_HEAD = ["z", "q", "k", "v", "pattern"]


@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")


@pytest.fixture(scope="module")
def metric(model):
    target = torch.randn(len(NEG), model.cfg.d_proj, generator=torch.Generator().manual_seed(1))
    return cosine_to_target(target)


def loop_reference(model, result, clean, corrupt, metric):
    """TL-style: one full forward per index, hook written by hand, nothing shared with the engine."""
    source, target = (clean, corrupt) if result.direction == "denoise" else (corrupt, clean)
    source_t, target_t = model.to_tokens(source), model.to_tokens(target)
    _, cache = model.run_with_cache(source_t)
    ref = torch.empty_like(result.values)
    act = result.act_name
    for li, layer in enumerate(result.labels["layer"]):
        name = get_act_name(act, layer)
        for idx in itertools.product(*[range(len(result.labels[a])) for a in result.axes[1:]]):
            where = {a: result.labels[a][i] for a, i in zip(result.axes[1:], idx)}

            def hook(x, hook, where=where):
                x = x.clone()
                pos, head = where.get("pos", slice(None)), where.get("head", slice(None))
                sl = (slice(None), head, pos) if act == "pattern" else (slice(None), pos, head) if act in PER_HEAD else (slice(None), pos)
                x[sl] = cache[hook.name][sl]
                return x

            out = model.run_with_hooks(target_t, return_type="normalized", fwd_hooks=[(name, hook)])
            ref[(li, *idx)] = metric(out)
    return ref


CASES = [(a, "layer_pos") for a in POSITIONAL + PER_HEAD] + [(a, i) for a in PER_HEAD for i in ("layer_head", "layer_pos_head")]


@pytest.mark.parametrize("act,index", CASES)
def test_engine_equals_one_forward_per_patch_loop(model, metric, act, index):
    res = activation_patch(model, NEG, AFF, metric, act, index=index, progress=False, batch_size=7)
    assert res.axes == ("layer", *index.split("_")[1:])
    ref = loop_reference(model, res, NEG, AFF, metric)
    assert (res.values - ref).abs().max() <= ATOL


@pytest.mark.parametrize("act", ["resid_mid", "z", "pattern"])
def test_noising_equals_loop(model, metric, act):
    res = activation_patch(model, NEG, AFF, metric, act, direction="noise", progress=False)
    assert (res.values - loop_reference(model, res, NEG, AFF, metric)).abs().max() <= ATOL


def test_chunk_size_does_not_change_results(model, metric):
    a = activation_patch(model, NEG, AFF, metric, "resid_pre", batch_size=1, progress=False)
    b = activation_patch(model, NEG, AFF, metric, "resid_pre", batch_size=4096, progress=False)
    assert (a.values - b.values).abs().max() <= ATOL


def test_patching_identical_states_has_zero_effect(model, metric):
    res = activation_patch(model, NEG, NEG, metric, "z", index="layer_pos_head", progress=False)
    assert torch.equal(res.values, res.corrupt.expand_as(res.values))
    # and the minimal pair's shared prefix ("[SOT] there are/is") at every layer
    res = activation_patch(model, NEG, AFF, metric, "resid_pre", progress=False)
    assert torch.equal(res.values[:, :3, :3], res.corrupt[:3].expand(res.values.shape[0], 3, 3))


@pytest.mark.parametrize("act", ["resid_pre", "resid_mid", "resid_post", "z", "v"])
def test_denoising_a_whole_layer_reproduces_clean(model, metric, act):
    """All positions of a residual state carry everything downstream; for z/v (whole layer output) the
    rest of the model already sees the clean prefix only through patched states, so only the residual
    states must restore exactly."""
    res = activation_patch(model, NEG, AFF, metric, act, index="layer", progress=False)
    if act.startswith("resid"):
        assert (res.values - res.clean).abs().max() <= ATOL
    assert (res.values - loop_reference(model, res, NEG, AFF, metric)).abs().max() <= ATOL


def test_normalized_and_dataframe(model, metric):
    res = activation_patch(model, NEG, AFF, metric, "resid_pre", index="layer", progress=False)
    assert (res.normalized() - 1).abs().max() <= 1e-4  # whole residual = full restoration
    df = res.to_dataframe()
    assert list(df.columns) == ["layer", "example", "metric", "normalized"] and len(df) == 2 * len(NEG)


def test_matches_transformer_lens_patching(model, metric):
    """transformer_lens.patching.get_act_patch_resid_pre on our tower == our engine (mean over examples)."""
    text = model.text
    clean_t, corrupt_t = model.to_tokens(NEG), model.to_tokens(AFF)
    with torch.no_grad():
        _, clean_cache = text.run_with_cache(clean_t)
        tl = tl_patching.get_act_patch_resid_pre(
            text, corrupt_t, clean_cache, lambda e: metric(torch.nn.functional.normalize(e, dim=-1)).mean())
    ours = activation_patch(model, clean_t, corrupt_t, metric, "resid_pre", progress=False)
    assert tl.shape == ours.values.shape[:2]
    assert (tl - ours.values.mean(-1)).abs().max() <= ATOL


def test_alignment_for_different_lengths(model, metric):
    clean, corrupt = ["There are no cats."], ["There are cats."]
    with pytest.raises(ValueError, match=r"differ in token length at examples \[0\].*alignment="):
        activation_patch(model, clean, corrupt, metric, progress=False)
    m = cosine_to_target(torch.randn(1, model.cfg.d_proj, generator=torch.Generator().manual_seed(2)))
    align = torch.tensor([[0, 1, 2, 4, 5, 6]])  # corrupt "cats . EOT" <- clean positions 4, 5, 6
    res = activation_patch(model, clean, corrupt, m, "resid_pre", alignment=align, progress=False)
    _, cache = model.run_with_cache(model.to_tokens(clean))
    for layer, pos in [(0, 3), (1, 5)]:
        def hook(x, hook):
            x = x.clone()
            x[:, pos] = cache[hook.name][:, align[0, pos]]
            return x
        ref = m(model.run_with_hooks(corrupt, return_type="normalized", fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]))
        assert (res.values[layer, pos] - ref).abs().max() <= ATOL
    align[0, 3] = -1
    res = activation_patch(model, clean, corrupt, m, "resid_pre", alignment=align, progress=False)
    assert torch.isnan(res.values[:, 3]).all() and not torch.isnan(res.values[:, 4]).any()


def test_bad_inputs(model, metric):
    with pytest.raises(ValueError, match=r"must map embeddings \(4, 32\) to one value per example, shape \(4,\); got \(\)"):
        activation_patch(model, NEG, AFF, lambda e: e.sum(), progress=False)
    with pytest.raises(ValueError, match="unknown activation 'resid'.*patchable"):
        activation_patch(model, NEG, AFF, metric, "resid", progress=False)
    with pytest.raises(ValueError, match="'mlp_out' has no head axis"):
        activation_patch(model, NEG, AFF, metric, "mlp_out", index="layer_head", progress=False)
    with pytest.raises(ValueError, match=r"positions \[12\] are outside 0..9"):
        activation_patch(model, NEG, AFF, metric, positions=[0, 12], progress=False)
    with pytest.raises(ValueError, match=r"layers \[5\] are outside 0..1"):
        activation_patch(model, NEG, AFF, metric, layers=[5], progress=False)
    with pytest.raises(ValueError, match="batch_size.*positive integer, got 0"):
        activation_patch(model, NEG, AFF, metric, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="4 clean examples but 3 corrupt ones"):
        activation_patch(model, NEG, AFF[:3], metric, progress=False)
    with pytest.raises(ValueError, match="direction must be"):
        activation_patch(model, NEG, AFF, metric, direction="both", progress=False)
    with pytest.raises(ValueError, match="pair row by row"):
        activation_patch(model, NEG, AFF, similarity_metric(model, torch.zeros(3, 32)), progress=False)
