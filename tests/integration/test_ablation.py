"""Ablation hooks: zero, mean (valid positions only) and resample, for heads, MLPs and positions."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_clip

from hooked_clip.analyses.ablation import ablate_heads, ablate_mlps, ablate_positions
from hooked_clip import HookedCLIP

TEXTS = ["There are no cats in the picture.", "There is a dog.", "no"]
REFERENCE = ["a photo of a cat", "There are some elephants in the water near the trees.", "dogs"]


def test_zero_ablating_every_head_leaves_only_the_output_bias(model):
    tokens = model.to_tokens(TEXTS)
    hooks = ablate_heads(model, [(1, h) for h in range(model.cfg.n_heads)], "zero")
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_attn_out")
    b_o = model.text.blocks[1].attn.b_O
    assert torch.allclose(cache["attn_out", 1], b_o.expand_as(cache["attn_out", 1]), atol=1e-6)


def test_zero_head_ablation_equals_manual_hook(model):
    tokens = model.to_tokens(TEXTS)

    def manual(z, hook):
        z = z.clone()
        z[:, [2, 3], 1] = 0
        return z

    ref = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", manual)])
    out = model.run_with_hooks(tokens, fwd_hooks=ablate_heads(model, [(0, 1)], "zero", positions=[2, 3]))
    assert torch.equal(out, ref)
    assert not torch.equal(out, model.text(tokens))


def test_mean_ablation_uses_valid_positions_only(model):
    ref_tokens = model.to_tokens(REFERENCE)
    pool = model.pool_positions(ref_tokens)
    _, cache = model.run_with_cache(ref_tokens, names_filter="blocks.0.hook_mlp_out")
    act = cache["mlp_out", 0]
    pos = 4  # valid in rows 0 and 1 only ("dogs" ends at position 2)
    assert pool.tolist()[2] < pos <= min(pool.tolist()[:2])
    expected = act[:2, pos].mean(0)
    tokens = model.to_tokens(TEXTS)
    with model.hooks(fwd_hooks=ablate_mlps(model, [0], "mean", reference=REFERENCE)):
        _, ablated = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    assert torch.allclose(ablated["mlp_out", 0][:, pos], expected.expand(len(TEXTS), -1), atol=1e-6)


def test_resample_ablation_is_seeded_and_takes_reference_rows(model):
    tokens = model.to_tokens(TEXTS)
    a = model.run_with_hooks(tokens, fwd_hooks=ablate_positions(model, [4], "resample", reference=REFERENCE, seed=1))
    b = model.run_with_hooks(tokens, fwd_hooks=ablate_positions(model, [4], "resample", reference=REFERENCE, seed=1))
    assert torch.equal(a, b)
    hooks = ablate_positions(model, [1, 2], "resample", act_name="resid_post", layers=[0], reference=REFERENCE)
    _, ref_cache = model.run_with_cache(model.to_tokens(REFERENCE), names_filter="blocks.0.hook_resid_post")
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    got = cache["resid_post", 0][:, 1:3]
    candidates = ref_cache["resid_post", 0][:, 1:3]
    for row in got:
        assert any(torch.equal(row, c) for c in candidates)


def test_ablation_bad_input(model):
    with pytest.raises(ValueError, match=r"heads \[\(0, 9\)\] invalid"):
        ablate_heads(model, [(0, 9)])
    with pytest.raises(ValueError, match="need reference="):
        ablate_mlps(model, [0], "mean")
    with pytest.raises(ValueError, match="kind must be 'zero', 'mean' or 'resample'"):
        ablate_mlps(model, [0], "random")
    with pytest.raises(ValueError, match=r"layers \[7\] invalid"):
        ablate_mlps(model, [7])
    with pytest.raises(ValueError, match="positions is empty"):
        ablate_positions(model, [])
    long = model.to_tokens(["There are some very long sentences about elephants and buses in the picture."])
    with pytest.raises(ValueError, match="reference set is .* positions long"):
        model.run_with_hooks(long, fwd_hooks=ablate_mlps(model, [0], "mean", reference=["a cat"]))
