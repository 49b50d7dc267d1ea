"""Padded batches of bidirectional towers through every engine analysis: exact against the same analysis run
per example without padding (and activation patching against the one loop reference), on a post-LN
(BERT-style, CLS-pooled) and a pre-LN (mean-pooled, padding masked) tower. Pairs of different lengths share
one batch, as VALSE chunks do."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import patch_loop, randomize_tower_

from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText
from hooked_clip.analyses.causal_tracing import minimal_pair_trace, rome_trace
from hooked_clip.analyses.metrics import cosine_to_target
from hooked_clip.analyses.patching import activation_patch, hidden_state_patch
from hooked_clip.analyses.path_patching import path_patch

ATOL = 1e-5
LENGTHS = [7, 4, 6]  # tokens per example (CLS first), then padding (id 0)
TOWERS = {
    "post_ln_cls": dict(ln_position="post", pooling="first", n_token_types=2, ln_embed=True, final_ln=False,
                        proj_bias=True, proj_act="tanh"),
    "pre_ln_mean": dict(ln_position="pre", pooling="mean"),
}


def tower(kind: str) -> HookedCLIPText:
    cfg = CLIPTextConfig(d_model=32, n_heads=2, d_head=16, n_layers=3, d_mlp=64, n_ctx=12, d_vocab=100, d_proj=16,
                         causal=False, mask_padding=True, trim_after_pool=False, pad_token_id=0, seed=0, device="cpu",
                         init_range=0.25, **TOWERS[kind])
    return randomize_tower_(HookedCLIPText(cfg), seed=1)  # weights from the init, LayerNorms and biases random


def pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, corrupt) ids [3, 7]: corrupt differs from clean at position 2 of each row."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        clean[b, :n] = torch.randint(3, 100, (n,), generator=gen)
        clean[b, 0] = 2
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(3, 100, (len(LENGTHS),), generator=gen)
    return clean, corrupt


def target(d: int) -> torch.Tensor:
    return torch.randn(len(LENGTHS), d, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", list(TOWERS))
@pytest.mark.parametrize("act,index", [("resid_pre", "layer_pos"), ("z", "layer_pos_head"), ("pattern", "layer_pos"),
                                       ("mlp_out", "layer")])
def test_activation_patching_on_padded_batches_equals_the_unpadded_loop(kind, act, index):
    t = tower(kind)
    clean, corrupt = pairs()
    goal = target(t.cfg.d_proj)
    res = activation_patch(t, clean, corrupt, cosine_to_target(goal), act, index=index, progress=False, batch_size=4)
    for b, n in enumerate(LENGTHS):
        ref, labels = patch_loop(t, clean[b:b + 1, :n], corrupt[b:b + 1, :n], cosine_to_target(goal[b:b + 1]), act, index)
        mine = res.values[..., b]
        if "pos" in index:
            assert (mine[:, :n] - ref[:, :n, ..., 0]).abs().max() <= ATOL, (kind, act, b)
            # patching a padding position changes nothing: its keys are never read, it is never pooled
            assert n == max(LENGTHS) or (mine[:, n:] - res.corrupt[b]).abs().max() <= ATOL
        else:
            assert (mine - ref[..., 0]).abs().max() <= ATOL
    assert res.values.std() > 1e-4


@pytest.mark.parametrize("kind", list(TOWERS))
def test_hidden_states_cte_and_path_patching_on_padded_batches_equal_per_example_runs(kind):
    t = tower(kind)
    model = HookedCLIP(t, None, logit_scale=math.log(50.0))
    clean, corrupt = pairs(seed=3)
    goal = target(t.cfg.d_proj)
    states = hidden_state_patch(model, clean, corrupt, cosine_to_target(goal), progress=False)
    cte = minimal_pair_trace(model, clean, corrupt, goal, progress=False)
    if t.cfg.ln_position == "post":  # paths do not separate where every residual sum passes a LayerNorm
        with pytest.raises(ValueError, match="path patching needs a pre-LN tower"):
            path_patch(model, clean, corrupt, cosine_to_target(goal), "L2_mlp", progress=False)
    else:
        paths = path_patch(model, clean, corrupt, cosine_to_target(goal), "L2_mlp", progress=False)
    assert (states.clean - states.corrupt).abs().min() > 1e-3  # the pairs differ: the CTE is well defined
    for b, n in enumerate(LENGTHS):
        one = lambda fn, *a: fn(model, clean[b:b + 1, :n], corrupt[b:b + 1, :n], *a, progress=False)  # noqa: E731
        s = one(hidden_state_patch, cosine_to_target(goal[b:b + 1]))
        assert (states.values[:, :n, b] - s.values[..., 0]).abs().max() <= ATOL
        c = one(minimal_pair_trace, goal[b:b + 1])
        # CTE = d*/d: rounding in the metric (~1e-6) grows by 1/|d| (|d| may be as small as 1e-3 here)
        tol = max(ATOL, 5e-6 / float((states.clean - states.corrupt).reshape(-1)[b].abs()))
        assert torch.allclose(cte[b, :, :n], c[0], atol=tol, equal_nan=True)
        assert torch.isnan(cte[b, :, n:]).all()  # padding holds no token of the pair (empty for the longest)
        if t.cfg.ln_position == "pre":
            p = one(path_patch, cosine_to_target(goal[b:b + 1]), "L2_mlp")
            assert p.labels == paths.labels and (paths.values[..., b] - p.values[..., 0]).abs().max() <= ATOL


@pytest.mark.parametrize("kind", list(TOWERS))
def test_rome_tracing_on_padded_batches_equals_per_example_runs(kind):
    t = tower(kind)
    clean, _ = pairs(seed=4)
    goal = target(t.cfg.d_proj)
    kw = dict(kind="resid", n_samples=3, noise_std=0.5, seed=7, progress=False)
    res = rome_trace(t, clean, cosine_to_target(goal), [1, 2], **kw)
    for b, n in enumerate(LENGTHS):
        one = rome_trace(t, clean[b:b + 1, :n], cosine_to_target(goal[b:b + 1]), [1, 2], **kw)
        assert (res.scores[b, :, :n] - one.scores[0]).abs().max() <= ATOL
        assert (res.clean[b] - one.clean[0]).abs() <= ATOL and (res.corrupted[b] - one.corrupted[0]).abs() <= ATOL


def test_pairs_of_different_lengths_are_refused_naming_the_example():
    t = tower("post_ln_cls")
    clean, corrupt = pairs()
    corrupt[1, 4] = 7  # example 1 now has 5 tokens against clean's 4
    with pytest.raises(ValueError, match=r"differ in token length at examples \[1\] \(clean 4 vs corrupt 5 tokens"):
        activation_patch(t, clean, corrupt, cosine_to_target(target(16)), progress=False)


def test_attention_mask_argument_as_in_transformer_lens():
    t = tower("pre_ln_mean")
    clean, _ = pairs()
    with torch.no_grad():
        own = t(clean)
        given = t(clean, attention_mask=(clean != 0).long())
        none_masked = t(clean, attention_mask=torch.ones_like(clean))
    assert torch.equal(own, given)
    assert (own - none_masked).abs().max() > 1e-4  # reading the padding changes the embedding
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, pos\]"):
        t(clean, attention_mask=torch.ones(3))
    with pytest.raises(ValueError, match="1 \\(token\\) and 0 \\(padding\\) only"):
        t(clean, attention_mask=torch.full_like(clean, 2))
