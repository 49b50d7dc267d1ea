"""Circuit tools: pooled cache helpers, similarity lens, direct similarity attribution, attribution
patching (AtP / AtP*), path patching and head scores — exact invariants and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import hf_clip

from hooked_clip.analyses.attribution import attribution_patch, direct_attribution, direct_difference_attribution, direct_similarity_attribution
from hooked_clip.analyses.heads import attention_to_tokens, head_correlation, negator_head_scores
from hooked_clip.analyses.lens import TunedLens, lens_agreement, lens_difference, lens_embeddings, lens_ranking, lens_similarity
from hooked_clip.analyses.metrics import cosine_to_target
from hooked_clip.analyses.path_patching import all_senders, path_patch
from hooked_clip.analyses.patching import activation_patch
from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText
from hooked_clip.text.readout import accumulated_resid, apply_ln_to_stack, decompose_resid, embedding_bias, ln_final_scale, stack_head_results, to_embedding_space

NEG = ["There are no cats in the picture.", "There is no dog.", "There are no people.", "You see no red bus here."]
AFF = ["There are some cats in the picture.", "There is a dog.", "There are some people.", "You see a red bus here."]
ATOL = 1e-5


@pytest.fixture()
def fresh():
    """A model of its own (tests below attach permanent hooks or edit weights)."""
    return HookedCLIP.from_hf(hf_clip("laion_gelu"), device="cpu")


def images(model, n, seed=0):
    return torch.randn(n, model.cfg.d_proj, generator=torch.Generator().manual_seed(seed))


def freeze_ln_final(model, value=2.0):
    """Make ln_final affine (a constant scale), so the output is linear in the last layer's writers."""
    model.text.add_hook("ln_final.hook_scale", lambda s, hook: torch.full_like(s, value), is_permanent=True)


# ------------------------------------------------------------------------------------------- cache
def test_pooled_cache_helpers_are_exact(model):
    text = model.text
    tokens = model.to_tokens(NEG)
    _, cache = text.run_with_cache(tokens)
    pool = text.pool_positions(tokens)
    final = cache[f"blocks.{text.cfg.n_layers - 1}.hook_resid_post"][torch.arange(4), pool]
    for heads in (True, False):
        stack, labels = decompose_resid(text, cache, pool, heads=heads)
        assert len(labels) == stack.shape[0] and (stack.sum(0) - final).abs().max() <= ATOL
    acc, labels = accumulated_resid(text, cache, pool)
    assert labels[0] == "0_pre" and acc.shape[0] == text.cfg.n_layers + 1 and torch.equal(acc[-1], final)
    heads_out, _ = stack_head_results(text, cache, pool)
    attn0 = cache["blocks.0.hook_attn_out"][torch.arange(4), pool]
    assert (heads_out[: text.cfg.n_heads].sum(0) + text.blocks[0].attn.b_O - attn0).abs().max() <= ATOL
    # frozen-scale LN of the decomposition sums to ln_final's output minus its bias, and projects to the embedding
    stack, _ = decompose_resid(text, cache, pool)
    normed = apply_ln_to_stack(text, stack, ln_final_scale(cache, pool))
    ln_out = cache["ln_final.hook_normalized"][torch.arange(4), pool]
    assert (normed.sum(0) + text.ln_final.b - ln_out).abs().max() <= ATOL
    emb = to_embedding_space(text, normed).sum(0) + embedding_bias(text)
    assert (emb - text(tokens)).abs().max() <= ATOL


# -------------------------------------------------------------------------------------------- lens
def test_lens_last_row_is_the_model_output(model):
    for ln in ("frozen", "recompute"):
        emb = lens_embeddings(model, NEG, ln=ln)
        assert emb.shape == (model.cfg.n_layers + 1, 4, model.cfg.d_proj)
        assert (emb[-1] - model.text(NEG)).abs().max() <= ATOL
    img = images(model, 4)
    d = lens_difference(model, NEG, AFF, img)
    s = model.similarity(model.encode_text(NEG), img).diagonal() - model.similarity(model.encode_text(AFF), img).diagonal()
    assert (d[-1] - s).abs().max() <= 1e-4
    sims = lens_similarity(model, NEG, img)
    ranks = lens_ranking(model, NEG, img, torch.arange(4))
    manual = (sims > sims.diagonal(dim1=1, dim2=2)[..., None]).sum(-1)
    assert torch.equal(ranks, manual)
    assert torch.allclose(lens_agreement(model, NEG)[-1], torch.tensor(1.0), atol=1e-5)


def test_lens_needs_a_projection_and_valid_targets(model):
    text = HookedCLIPText(CLIPTextConfig(d_model=32, d_head=16, n_heads=2, n_layers=1, d_mlp=64, d_proj=None, seed=0))
    with pytest.raises(ValueError, match="no text projection|needs a text projection"):
        lens_embeddings(text, NEG)
    with pytest.raises(ValueError, match="targets"):
        lens_ranking(model, NEG, images(model, 4), torch.tensor([0, 1, 2, 9]))


def test_tuned_lens_round_trips_and_refuses_a_wrong_model(model, tmp_path):
    with torch.no_grad():  # fit enables gradients for the lens itself
        lens = TunedLens.fit(model, NEG + AFF, steps=5)
    assert all(p.grad is None for p in model.text.parameters())  # the model is frozen, not trained
    assert all(p.requires_grad for p in model.text.parameters())  # and left as it was
    lens.save(tmp_path / "lens.safetensors")
    again = TunedLens.load(tmp_path / "lens.safetensors", model)
    assert torch.equal(lens_embeddings(model, NEG, tuned=lens), lens_embeddings(model, NEG, tuned=again))
    other = HookedCLIP.from_hf(hf_clip("one_layer"), device="cpu")  # same width, another depth
    assert other.cfg.d_model == model.cfg.d_model and other.cfg.n_layers != model.cfg.n_layers
    with pytest.raises(ValueError, match="n_layers"):
        TunedLens.load(tmp_path / "lens.safetensors", other)


# ------------------------------------------------------------------------------ direct attribution
def test_direct_similarity_attribution_sums_to_the_similarity(model):
    img = images(model, 4)
    for heads in (True, False):
        att = direct_similarity_attribution(model, NEG, img, heads=heads)
        s = model.similarity(model.encode_text(NEG), img).diagonal()
        assert (att.total - s).abs().max() <= 1e-4  # logits; 1e-6 in cosine
        assert (att.values.sum(0) - att.total).abs().max() <= ATOL
        assert att.labels[-1] == "bias" and len(att.labels) == att.values.shape[0]
    diff = direct_difference_attribution(model, NEG, AFF, img)
    assert (diff.values.sum(0) - diff.total).abs().max() <= ATOL
    assert set(diff.to_dataframe().columns) == {"component", "example", "value"}


# --------------------------------------------------------------------------- attribution patching
@pytest.mark.parametrize("act,index", [("z", "layer_pos_head"), ("z", "layer_head"), ("attn_out", "layer_pos"),
                                       ("mlp_out", "layer_pos"), ("resid_post", "layer_pos"), ("v", "layer_pos_head"),
                                       ("pattern", "layer_pos_head"), ("q", "layer_pos_head"), ("k", "layer_pos_head")])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_patching_is_exact_where_the_metric_is_linear(fresh, act, index, direction):
    """With ln_final's scale frozen, the last MLP removed and a linear metric of the unnormalised embedding,
    the metric is linear in the last layer's z / v / attn_out / mlp_out / resid_post and in its pattern, so
    AtP is exact there; for q and k, AtP* recomputes the softmax exactly, so it is exact too."""
    freeze_ln_final(fresh)
    with torch.no_grad():
        for p in fresh.text.blocks[-1].mlp.parameters():
            p.zero_()
        fresh.text.blocks[-1].attn.W_Q *= 30  # sharp attention: the softmax is far from linear
    v = torch.randn(fresh.cfg.d_proj, generator=torch.Generator().manual_seed(2))
    metric = lambda e: e @ v  # noqa: E731
    last = fresh.cfg.n_layers - 1
    kw = dict(index=index, direction=direction, return_type="embed")
    est = attribution_patch(fresh, NEG, AFF, metric, act, **kw)
    exact = activation_patch(fresh, NEG, AFF, metric, act, layers=[last], progress=False, **kw)
    assert est.values.shape[0] == fresh.cfg.n_layers and est.values.shape[1:] == exact.values.shape[1:]
    assert (est.values[last] - exact.values[0]).abs().max() <= 1e-4
    assert torch.allclose(est.clean, exact.clean, atol=1e-5) and torch.allclose(est.corrupt, exact.corrupt, atol=1e-5)
    if act in ("q", "k"):  # plain AtP linearises the softmax and is not exact
        plain = attribution_patch(fresh, NEG, AFF, metric, act, atp_star=False, **kw)
        assert (plain.values[last] - exact.values[0]).abs().max() > 1e-4


@pytest.mark.parametrize("act", ["z", "attn_out", "mlp_out", "resid_post"])
def test_integrated_gradients_are_exact_where_the_metric_is_linear(fresh, act):
    """Same linear setting: the gradient at the last layer is the same at every interpolation point."""
    freeze_ln_final(fresh)
    with torch.no_grad():
        for p in fresh.text.blocks[-1].mlp.parameters():
            p.zero_()
    v = torch.randn(fresh.cfg.d_proj, generator=torch.Generator().manual_seed(2))
    metric = lambda e: e @ v  # noqa: E731
    last = fresh.cfg.n_layers - 1
    kw = dict(index="layer_pos", return_type="embed")
    est = attribution_patch(fresh, NEG, AFF, metric, act, ig_steps=3, **kw)
    exact = activation_patch(fresh, NEG, AFF, metric, act, layers=[last], progress=False, **kw)
    assert est.extra["ig_steps"] == 3 and (est.values[last] - exact.values[0]).abs().max() <= 1e-4


def test_integrated_gradients_are_complete_at_the_embedding(fresh):
    """resid_pre of layer 0 is linear in the interpolated token embeddings, so the integrated estimates
    of all positions add up to metric(source) - metric(base) (up to the midpoint rule's O(1/k^2) error);
    plain AtP does not."""
    metric = cosine_to_target(images(fresh, 4))
    for direction in ("denoise", "noise"):
        ig = attribution_patch(fresh, NEG, AFF, metric, "resid_pre", "layer", direction=direction, ig_steps=64)
        target = ig.clean if direction == "denoise" else ig.corrupt
        assert (ig.values[0] - target).abs().max() <= 1e-3 * (ig.clean - ig.corrupt).abs().max()
    atp = attribution_patch(fresh, NEG, AFF, metric, "resid_pre", "layer")
    assert (atp.values[0] - atp.clean).abs().max() > 1e-2 * (atp.clean - atp.corrupt).abs().max()


def test_attribution_patching_bad_inputs(model):
    metric = cosine_to_target(images(model, 4))
    with pytest.raises(ValueError, match="unknown activation 'resid'; patchable"):
        attribution_patch(model, NEG, AFF, metric, "resid")
    with pytest.raises(ValueError, match="'mlp_out' has no head axis"):
        attribution_patch(model, NEG, AFF, metric, "mlp_out", "layer_head")
    with pytest.raises(ValueError, match="differ in token length"):
        attribution_patch(model, NEG, ["There are no cats."] * 4, metric)
    with pytest.raises(ValueError, match=r"ig_steps \(0 = plain AtP\) must be an integer >= 0, got -1"):
        attribution_patch(model, NEG, AFF, metric, ig_steps=-1)
    with pytest.raises(ValueError, match="atp_star=False"):
        attribution_patch(model, NEG, AFF, metric, "q", ig_steps=4)


# -------------------------------------------------------------------------------- path patching
def test_path_patching_through_a_blind_receiver_has_no_effect(fresh):
    """A receiver head whose query ignores its input (W_Q = 0) passes nothing on: every sender's path
    effect through its query is exactly zero."""
    with torch.no_grad():
        fresh.text.blocks[2].attn.W_Q[1] = 0
    metric = cosine_to_target(images(fresh, 4))
    res = path_patch(fresh, NEG, AFF, metric, "L2H1.q", direction="noise", progress=False)
    assert res.extra["senders"] == [s for s in all_senders(fresh) if s == "embed" or int(s[1]) < 2]
    # zero up to float rounding: the rows run batched (sender x example), the clean run alone
    assert (res.values - res.clean).abs().max() <= 1e-6


def test_direct_path_to_the_pooled_residual_equals_direct_attribution(fresh):
    freeze_ln_final(fresh)
    v = torch.randn(fresh.cfg.d_proj, generator=torch.Generator().manual_seed(3))
    res = path_patch(fresh, NEG, AFF, lambda e: e @ v, "pooled", return_type="embed", direction="noise", progress=False)
    dirs = v.expand(4, -1)
    clean, corrupt = direct_attribution(fresh, NEG, dirs), direct_attribution(fresh, AFF, dirs)
    by_label = dict(zip(clean.labels, corrupt.values - clean.values))
    for i, sender in enumerate(res.extra["senders"]):
        expected = by_label["embed"] + by_label["pos_embed"] if sender == "embed" else by_label[sender]
        assert (res.values[i] - res.clean - expected).abs().max() <= 1e-4, sender


def test_one_layer_path_patching_equals_activation_patching():
    model = HookedCLIP.from_hf(hf_clip("one_layer"), device="cpu")  # built with one block, not cut down
    metric = cosine_to_target(images(model, 4, seed=5))
    mlp = path_patch(model, NEG, AFF, metric, "pooled", "L0_mlp", direction="noise", progress=False)
    act = activation_patch(model, NEG, AFF, metric, "mlp_out", index="layer", direction="noise", progress=False)
    assert (mlp.values[0] - act.values[0]).abs().max() <= ATOL
    with torch.no_grad():  # attention-only: the MLP writes nothing, so a head's only path is the direct one
        for p in model.text.blocks[0].mlp.parameters():
            p.zero_()
    heads = path_patch(model, NEG, AFF, metric, "pooled", ["L0H0", "L0H1"], direction="noise", progress=False)
    act = activation_patch(model, NEG, AFF, metric, "z", index="layer_head", direction="noise", progress=False)
    assert (heads.values - act.values[0]).abs().max() <= ATOL


def test_path_patching_mlp_receiver_only_changes_the_mlp(fresh):
    metric = cosine_to_target(images(fresh, 4))
    res = path_patch(fresh, NEG, AFF, metric, "L1_mlp", ["L0H0", "L1H2"], direction="noise", progress=False)
    assert res.values.shape == (2, 4) and not torch.equal(res.values[0], res.clean)


def test_path_patching_bad_inputs(model):
    metric = cosine_to_target(images(model, 4))
    with pytest.raises(ValueError, match="upstream"):
        path_patch(model, NEG, AFF, metric, "L0H1.q", "L1H0")
    with pytest.raises(ValueError, match="upstream"):
        path_patch(model, NEG, AFF, metric, "L1_mlp", "L1_mlp")
    with pytest.raises(ValueError, match="unknown receiver"):
        path_patch(model, NEG, AFF, metric, "L1H0.x")
    with pytest.raises(ValueError, match="unknown sender"):
        path_patch(model, NEG, AFF, metric, "pooled", "head3")
    with pytest.raises(ValueError, match="out of range"):
        path_patch(model, NEG, AFF, metric, "pooled", "L9H0")


# ---------------------------------------------------------------------------------- head scores
def test_negator_head_scores_equal_a_plain_loop(model):
    scores = negator_head_scores(model, NEG, AFF, [3, 3, 3, 3])
    text = model.text
    for b in range(4):
        _, c_neg = text.run_with_cache(NEG[b])
        _, c_aff = text.run_with_cache(AFF[b])
        eot = int(text.pool_positions(text.to_tokens(NEG[b]))[0])
        for l in range(text.cfg.n_layers):
            a_n, a_a = c_neg[f"blocks.{l}.attn.hook_pattern"][0], c_aff[f"blocks.{l}.attn.hook_pattern"][0]
            for h in range(text.cfg.n_heads):
                diffs = [float(a_n[h, q, 3] - a_a[h, q, 3]) for q in range(4, eot + 1)]
                assert abs(max(diffs) - float(scores.delta[b, l, h])) <= 1e-6
                assert np.allclose(scores.rows[b, l, h, 4:eot + 1].numpy(), diffs, atol=1e-6)
                assert torch.isnan(scores.rows[b, l, h, :4]).all()
    assert scores.mean().shape == (text.cfg.n_layers, text.cfg.n_heads)
    # identical sentences: no head prefers anything
    same = negator_head_scores(model, NEG, NEG, 3)
    assert torch.equal(same.delta, torch.zeros_like(same.delta))


def test_head_correlation_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    scores, values = torch.rand(20, 2, 3, generator=gen), torch.rand(20, generator=gen)
    r = head_correlation(scores, values)
    for l in range(2):
        for h in range(3):
            assert abs(float(r[l, h]) - np.corrcoef(scores[:, l, h].numpy(), values.numpy())[0, 1]) <= 1e-5
    assert torch.isnan(head_correlation(torch.ones(5, 1, 1), torch.rand(5))).all()


def test_attention_to_tokens(model):
    mass = attention_to_tokens(model, NEG, ["no"])
    tokens = model.to_tokens(NEG)
    mask = tokens == model.text.tokenizer.encode("no")[1]
    assert torch.allclose(mass, attention_to_tokens(model, NEG, mask), atol=1e-6)
    everything = attention_to_tokens(model, NEG, torch.ones_like(tokens, dtype=torch.bool))
    assert torch.allclose(everything, torch.ones_like(everything), atol=1e-5)  # rows sum to 1
    with pytest.raises(ValueError, match="not one"):
        attention_to_tokens(model, NEG, ["negation"])


def test_head_score_bad_inputs(model):
    with pytest.raises(ValueError, match="differ in token length"):
        negator_head_scores(model, NEG, ["There are cats."] * 4, 3)
    with pytest.raises(ValueError, match="negator_pos"):
        negator_head_scores(model, NEG, AFF, [3, 3])


# ------------------------------------------------------------------------------ on the demo model
DEMO_NEG = ["There are no dogs in the park.", "There is no cat on the bed.", "There are no cars parked.",
            "There are no birds in the sky.", "There is no horse in the field.", "There are no cups on the table."]
DEMO_AFF = ["There are some dogs in the park.", "There is a cat on the bed.", "There are some cars parked.",
            "There are some birds in the sky.", "There is a horse in the field.", "There are some cups on the table."]
DEMO_SCENES = [["dog", "tree"], ["cat", "bed"], ["car", "sign"], ["bird", "cloud"], ["horse", "fence"], ["cup", "plate"]]
# Pearson r with exact patching, measured on the shipped weights (per pair):
# resid_pre per layer x position: AtP -0.77, IG (16 steps) 0.87; z per head: AtP -0.10, IG 0.46. The demo
# model's negation goes through a threshold (patching L0H3's z from "no" into "some" changes nothing up to
# a quarter of the way, then S drops by 10 logits), where the gradient at the corrupt run is flat.
IG_R_FLOOR = {("resid_pre", "layer_pos"): 0.75, ("z", "layer_head"): 0.35}


@pytest.fixture(scope="module")
def demo():
    from hooked_clip import load_model

    return load_model("tiny-negation")


@pytest.mark.parametrize("act,index", sorted(IG_R_FLOOR))
def test_integrated_gradients_track_exact_patching_on_the_demo_model_where_atp_does_not(demo, act, index):
    from hooked_clip.analyses.metrics import similarity_metric

    metric = similarity_metric(demo, demo.encode_image(DEMO_SCENES))
    exact = activation_patch(demo, DEMO_NEG, DEMO_AFF, metric, act, index=index, progress=False)
    y = (exact.values - exact.corrupt).flatten()

    def r(ig_steps):
        est = attribution_patch(demo, DEMO_NEG, DEMO_AFF, metric, act, index=index, ig_steps=ig_steps)
        return float(torch.corrcoef(torch.stack([(est.values - est.corrupt).flatten(), y]))[0, 1])

    r_atp, r_ig = r(0), r(16)
    assert r_ig >= IG_R_FLOOR[act, index] and r_ig - r_atp >= 0.3, (r_atp, r_ig)


def test_tuned_lens_beats_the_plain_lens_on_the_demo_model(demo):
    import random

    from hooked_clip.models.tiny_negation import world

    rng = random.Random(0)
    sents = [world.make_pair(rng.choice(world.OBJECTS), rng.random() < 0.5, rng)[i].text for _ in range(200) for i in (0, 1)]
    lens = TunedLens.fit(demo, sents[:300], steps=150)
    plain = lens_agreement(demo, sents[300:])
    tuned = lens_agreement(demo, sents[300:], tuned=lens)
    assert torch.all(tuned[:-1] > plain[:-1]), (plain, tuned)  # every layer before the output, held-out sentences
