"""Path patching and attribution patching on the image tower: the same functions and result types as the text
side (``tower="vision"``), path patching exact against a plain two-pass loop written here (IOI's procedure,
one run_with_hooks per pass), integrated gradients complete on the patch embeddings."""

from __future__ import annotations

import pytest
import torch
from conftest import pixels, randomize_tower_
from transformer_lens.utilities import get_act_name

from hooked_clip import CLIPVisionConfig, HookedCLIPVision
from hooked_clip.analyses.attribution import attribution_patch
from hooked_clip.analyses.metrics import cosine_to_target
from hooked_clip.analyses.patching import activation_patch
from hooked_clip.analyses.path_patching import all_senders, path_patch

ATOL = 1e-5


def vit(ln_pre: bool = True) -> HookedCLIPVision:
    cfg = CLIPVisionConfig.for_image(32, 8, d_model=32, n_heads=2, d_head=16, n_layers=3, d_mlp=64, d_proj=16,
                                     ln_pre=ln_pre, seed=0, init_range=0.2, device="cpu")
    return randomize_tower_(HookedCLIPVision(cfg), seed=1)  # weights from the init, LayerNorms and biases random


def two_pass_loop(tower, base, source, metric, sender: str, receiver: str) -> torch.Tensor:
    """IOI path patching for one sender and receiver: (1) the base run with the sender's output from the source
    run and every other head and MLP frozen at the base run, recording the receiver's input; (2) the base run
    with only that input replaced. Hook names from TransformerLens; nothing shared with the engine."""
    L = tower.cfg.n_layers
    with torch.no_grad(), tower.options(use_split_qkv_input=True):
        _, b_cache = tower.run_with_cache(base)
        _, s_cache = tower.run_with_cache(source)
        frozen = []
        for l in range(L):
            for kind in ("z", "mlp_out"):
                name = get_act_name(kind, l)

                def freeze(x, hook, name=name, kind=kind, l=l):
                    out = b_cache[name].clone()
                    if kind == "z" and sender.startswith(f"L{l}H"):
                        h = int(sender.split("H")[1])
                        out[:, :, h] = s_cache[name][:, :, h]
                    if kind == "mlp_out" and sender == f"L{l}_mlp":
                        out = s_cache[name].clone()
                    return out

                frozen.append((name, freeze))
        if sender == "embed":
            first = get_act_name("resid_pre", 0)
            frozen.append((first, lambda x, hook: s_cache[first].clone()))
        if receiver == "pooled":
            read = get_act_name("resid_post", L - 1)
        else:
            layer = int(receiver[1:].split("H")[0].split("_")[0])
            read = get_act_name("resid_mid", layer) if receiver.endswith("_mlp") else get_act_name("resid_pre", layer)
        with tower.hooks(fwd_hooks=frozen):
            _, pass1 = tower.run_with_cache(base, names_filter=[read])
        value = pass1[read]
        if receiver == "pooled":
            hook = (read, lambda x, hook: value.clone())
        elif receiver.endswith("_mlp"):
            block = tower.blocks[layer]
            hook = (get_act_name("mlp_out", layer), lambda x, hook: block.mlp(block.ln2(value)))
        else:
            h, qkv = int(receiver.split("H")[1].split(".")[0]), receiver.split(".")[1]

            def set_input(x, hook):
                x = x.clone()
                x[:, :, h] = value
                return x

            hook = (f"blocks.{layer}.hook_{qkv}_input", set_input)
        return metric(tower.run_with_hooks(base, return_type="normalized", fwd_hooks=[hook]))


@pytest.mark.parametrize("receiver", ["pooled", "L2_mlp", "L2H1.q", "L1H0.v"])
def test_image_path_patching_equals_the_two_pass_loop(receiver):
    tower = vit()
    clean, corrupt = pixels(32, n=2, seed=0), pixels(32, n=2, seed=1)
    metric = cosine_to_target(torch.randn(2, 16, generator=torch.Generator().manual_seed(2)))
    res = path_patch(tower, clean, corrupt, metric, receiver, direction="noise", progress=False)  # base = clean
    assert res.extra["senders"][0] == "embed" and set(res.extra["senders"]) <= set(all_senders(tower))
    for i, sender in enumerate(res.extra["senders"]):
        ref = two_pass_loop(tower, clean, corrupt, metric, sender, receiver)
        assert (res.values[i] - ref).abs().max() <= ATOL, (sender, receiver)
    assert res.values.std() > 1e-4


def test_image_path_patching_from_a_clip_model(tiny_model):
    """``tower="vision"`` on a HookedCLIP; one-layer paths to the pooled residual of the last block's MLP equal
    activation patching of that MLP (nothing lies between)."""
    size = tiny_model.vision.cfg.image_size
    clean, corrupt = pixels(size, n=2, seed=3), pixels(size, n=2, seed=4)
    metric = cosine_to_target(torch.randn(2, tiny_model.vision.cfg.d_proj, generator=torch.Generator().manual_seed(5)))
    last = tiny_model.vision.cfg.n_layers - 1
    paths = path_patch(tiny_model, clean, corrupt, metric, "pooled", f"L{last}_mlp", tower="vision", direction="noise",
                       progress=False)
    act = activation_patch(tiny_model, clean, corrupt, metric, "mlp_out", index="layer", direction="noise",
                           tower="vision", layers=[last], progress=False)
    assert (paths.values[0] - act.values[0]).abs().max() <= ATOL


def test_image_integrated_gradients_are_complete_on_the_patch_embeddings():
    """IG from the base image's patch embeddings to the source's: with the residual entering block 0 linear in
    them (no ln_pre), the attribution of resid_pre(0) sums to the whole patching effect (completeness), up to
    the midpoint rule's error; plain AtP (one gradient) does not."""
    tower = vit(ln_pre=False)
    clean, corrupt = pixels(32, n=3, seed=6), pixels(32, n=3, seed=7)
    metric = cosine_to_target(torch.randn(3, 16, generator=torch.Generator().manual_seed(8)))
    exact = activation_patch(tower, clean, corrupt, metric, "resid_pre", index="layer", layers=[0], progress=False)
    effect = exact.values[0] - exact.corrupt
    ig = attribution_patch(tower, clean, corrupt, metric, "resid_pre", "layer", ig_steps=32)
    assert ig.extra["ig_steps"] == 32 and ig.axes == ("layer",)
    ig_err = (ig.values[0] - exact.values[0]).abs().max()
    assert ig_err <= 0.02 * effect.abs().max(), (ig_err, effect)
    atp = attribution_patch(tower, clean, corrupt, metric, "resid_pre", "layer")
    assert (atp.values[0] - exact.values[0]).abs().max() > ig_err


def test_image_attribution_result_matches_activation_patching_layout(tiny_model):
    size = tiny_model.vision.cfg.image_size
    clean, corrupt = pixels(size, n=2, seed=9), pixels(size, n=2, seed=10)
    metric = cosine_to_target(torch.randn(2, tiny_model.vision.cfg.d_proj, generator=torch.Generator().manual_seed(1)))
    for act, index in (("z", "layer_pos_head"), ("k", "layer_head"), ("resid_pre", "layer_pos")):
        est = attribution_patch(tiny_model, clean, corrupt, metric, act, index, tower="vision")
        exact = activation_patch(tiny_model, clean, corrupt, metric, act, index=index, tower="vision", progress=False)
        assert est.axes == exact.axes and est.labels == exact.labels and est.values.shape == exact.values.shape
        assert torch.allclose(est.clean, exact.clean, atol=ATOL) and torch.allclose(est.corrupt, exact.corrupt, atol=ATOL)


def test_image_lens_reads_each_layer_through_the_towers_own_read_out(tiny_model):
    """Row l of the image lens is the embedding of the residual after block l, read out by the tower itself
    (ln_post, class-token pooling, projection): the last row is the image embedding, the others equal running
    the remaining blocks' read-out on a hand-cached residual; the similarity is the model's own."""
    from hooked_clip.analyses.lens import lens_embeddings, lens_similarity

    vision = tiny_model.vision
    px = pixels(vision.cfg.image_size, n=2, seed=11)
    rows = lens_embeddings(tiny_model, px, ln="recompute", tower="vision")
    assert rows.shape == (vision.cfg.n_layers + 1, 2, vision.cfg.d_proj)
    with torch.no_grad():
        assert torch.allclose(rows[-1], vision(px, "embed"), atol=ATOL)
        resid = vision(px, stop_at_layer=1)  # the residual entering block 1 = after block 0
        pooled = vision.ln_post(resid)[:, 0]
        assert torch.allclose(rows[1], pooled @ vision.W_proj, atol=ATOL)
    text = torch.randn(3, vision.cfg.d_proj)
    sims = lens_similarity(tiny_model, px, text, ln="recompute", tower="vision")
    assert torch.allclose(sims[-1], tiny_model.similarity(vision(px, "embed"), text), atol=1e-4)
    with pytest.raises(ValueError, match="ln='recompute'"):
        lens_embeddings(tiny_model, px, tower="vision")
