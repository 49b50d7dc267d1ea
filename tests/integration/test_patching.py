"""The batched patching engine against a plain one-forward-per-patch loop, its exact invariants, and its
bad-input errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import assert_matches_loop, hf_clip
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
def metric(model):
    target = torch.randn(len(NEG), model.cfg.d_proj, generator=torch.Generator().manual_seed(1))
    return cosine_to_target(target)


CASES = [(a, "layer_pos") for a in POSITIONAL + PER_HEAD] + [(a, i) for a in PER_HEAD for i in ("layer_head", "layer_pos_head")]


@pytest.mark.parametrize("act,index", CASES)
def test_engine_equals_one_forward_per_patch_loop(model, metric, act, index):
    res = activation_patch(model, NEG, AFF, metric, act, index=index, progress=False, batch_size=7)
    assert res.axes == ("layer", *index.split("_")[1:])
    assert_matches_loop(res, model.text, model.to_tokens(NEG), model.to_tokens(AFF), metric)


@pytest.mark.parametrize("act", ["resid_mid", "z", "pattern"])
def test_noising_equals_loop(model, metric, act):
    res = activation_patch(model, NEG, AFF, metric, act, direction="noise", progress=False)
    assert_matches_loop(res, model.text, model.to_tokens(NEG), model.to_tokens(AFF), metric)


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
    assert_matches_loop(res, model.text, model.to_tokens(NEG), model.to_tokens(AFF), metric)


def test_normalized_and_dataframe(model, metric):
    res = activation_patch(model, NEG, AFF, metric, "resid_pre", index="layer", progress=False)
    # whole residual = full restoration: normalized 1 up to float error, which the normalisation divides by
    # the clean-corrupt gap (5e-4 for one example here)
    assert ((res.normalized() - 1).abs() * (res.clean - res.corrupt).abs()).max() <= ATOL
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


def hidden_state_loop(model, clean, corrupt, metric, direction):
    """One full forward per (hidden state, position), hook names written out here: state 0 is the
    embeddings' output (blocks.0.hook_resid_pre), state l >= 1 the output of block l - 1 (0-indexed)."""
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    source_t, target_t = model.to_tokens(source), model.to_tokens(target)
    _, cache = model.run_with_cache(source_t)
    n_layers, n_pos = model.cfg.n_layers, target_t.shape[1]
    ref = torch.empty(n_layers + 1, n_pos, len(clean))
    for state in range(n_layers + 1):
        name = "blocks.0.hook_resid_pre" if state == 0 else f"blocks.{state - 1}.hook_resid_post"
        for pos in range(n_pos):
            def hook(x, hook, pos=pos):
                x = x.clone()
                x[:, pos] = cache[hook.name][:, pos]
                return x

            ref[state, pos] = metric(model.run_with_hooks(target_t, return_type="normalized", fwd_hooks=[(name, hook)]))
    return ref


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("fused", [False, True])
def test_hidden_state_patch_equals_loop(metric, direction, fused):
    """One sweep over every hidden state: rows of different layers, offsets and widths share forwards (batch
    sizes that cut the plan differently), and the last block computes only the pooled row."""
    from hooked_clip.analyses.patching import hidden_state_patch

    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", use_fused_attn=fused)
    ref = hidden_state_loop(model, NEG, AFF, metric, direction)
    for batch_size in (3, 1024):
        res = hidden_state_patch(model, NEG, AFF, metric, direction=direction, batch_size=batch_size, progress=False)
        assert res.axes == ("state", "pos") and res.labels["state"] == list(range(model.cfg.n_layers + 1))
        assert (res.values - ref).abs().max() <= ATOL
    # the same numbers as activation patching of resid_pre and of the last block's resid_post
    pre = activation_patch(model, NEG, AFF, metric, "resid_pre", direction=direction, progress=False)
    post = activation_patch(model, NEG, AFF, metric, "resid_post", layers=[model.cfg.n_layers - 1],
                            direction=direction, progress=False)
    assert (torch.cat([pre.values, post.values]) - res.values).abs().max() <= ATOL
    some = hidden_state_patch(model, NEG, AFF, metric, direction=direction, states=[0, model.cfg.n_layers],
                              positions=[3, 4], progress=False)
    assert (some.values - ref[[0, -1]][:, [3, 4]]).abs().max() <= ATOL
    with pytest.raises(ValueError, match="states"):
        hidden_state_patch(model, NEG, AFF, metric, states=[model.cfg.n_layers + 1])


@pytest.mark.parametrize("fused", [False, True])
def test_block_computing_one_query_row_equals_full_block(fused):
    """The engine's last block: one query position per row (keys and values at all), same row as the full
    block computes, with and without a key/value prefix of per-row lengths."""
    from hooked_clip.components import KeyValuePrefix

    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", use_fused_attn=fused)
    torch.manual_seed(0)
    block = model.text.blocks[-1]
    x = torch.randn(3, 6, model.cfg.d_model)
    rows = torch.arange(3)
    pos = torch.tensor([5, 2, 0])
    with torch.no_grad():
        full = block(x)
        assert (block(x, None, pos)[:, 0] - full[rows, pos]).abs().max() <= ATOL
        # row 0 runs positions 2:6 after a 2-long prefix, row 1 runs 4:6 (padded to 4 columns) after a 4-long
        # one, row 2 runs 0:4 without; the prefix tensor has 4 slots, shorter prefixes padded
        _, k, v = block.attn.calculate_qkv(*[block.ln1(x)] * 3)
        offset = torch.tensor([2, 4, 0])
        columns = (offset[:, None] + torch.arange(4)).clamp(max=5)
        prefix = KeyValuePrefix(k[:, :4], v[:, :4], offset)
        want = torch.tensor([5, 5, 3])
        out = block(x[rows[:, None], columns], prefix, want - offset)
        assert (out[:, 0] - full[rows, want]).abs().max() <= ATOL
        out = block(x[rows[:, None], columns], prefix)  # every position of every row
        assert (out[0] - full[0, 2:6]).abs().max() <= ATOL and (out[1, :2] - full[1, 4:6]).abs().max() <= ATOL
        assert (out[2] - full[2, :4]).abs().max() <= ATOL
