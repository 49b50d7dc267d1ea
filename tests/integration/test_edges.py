"""Edge circuits: EAP / EAP-IG edge scores against exact edge patching (a plain per-edge loop written here),
the linear-model equality, unequal-length pairs, circuits' faithfulness and text-token x image-patch
interactions against exact joint patching."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_clip, randomize_tower_

from hooked_clip import HookedCLIP
from hooked_clip.analyses.edges import (EdgeGraph, circuit_graph, draw_circuit, edge_attribution, edge_patch,
                                        faithfulness_curve, run_circuit, token_patch_interactions)
from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.names import act_name

NEG = ["There are no cats in the picture.", "There is no dog.", "You see no red bus here."]
AFF = ["There are some cats in the picture.", "There is a dog.", "You see a red bus here."]


def images(model, n, seed=0):
    return torch.randn(n, model.cfg.d_proj, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def fresh():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    randomize_tower_(model.text, seed=3)
    return model


def sender_output(tower, cache, name):
    """A sender's output written out from a cache (independent of the package's own stacking)."""
    if name == "embed":
        return cache["blocks.0.hook_resid_pre"]
    if name.endswith("_mlp"):
        return cache[f"blocks.{int(name[1:-4])}.hook_mlp_out"]
    l, h = map(int, name[1:].split("H"))
    return torch.einsum("bpe,em->bpm", cache[f"blocks.{l}.attn.hook_z"][:, :, h], tower.blocks[l].attn.W_O[h])


def plain_edge_loop(model, base_texts, source_texts, metric, edges, return_type="normalized", tower="text",
                    alignment=None):
    """The reference: per edge, one full forward of the base run with the receiver's input (alone) changed by
    the sender's output difference (``alignment``: the source position of each base position, -1 = none);
    [edge, batch] metric changes."""
    tw = getattr(model, tower)
    base_in, src_in = tw.as_input(base_texts), tw.as_input(source_texts)
    with torch.no_grad(), tw.options(use_split_qkv_input=True):
        base_out, base_cache = tw.run_with_cache(base_in, return_type=return_type)
        _, src_cache = tw.run_with_cache(src_in, return_type=return_type)
        base_m = metric(base_out)
        out = []
        for edge in edges:
            sender, receiver = edge.split("->")
            src_full, base = sender_output(tw, src_cache, sender), sender_output(tw, base_cache, sender)
            if alignment is None:
                delta = src_full - base
            else:  # base position p takes source position alignment[b, p]; -1: no change
                gathered = src_full[torch.arange(base.shape[0])[:, None], alignment.clamp(min=0)]
                delta = torch.where((alignment >= 0)[..., None], gathered - base, torch.zeros_like(base))
            if receiver == "pooled":
                hooks = [(f"blocks.{tw.cfg.n_layers - 1}.hook_resid_post", lambda a, hook: a + delta)]
            elif receiver.endswith("_mlp"):
                l = int(receiver[1:-4])
                hooks = [(f"blocks.{l}.hook_resid_mid", lambda a, hook: a + delta),
                         (f"blocks.{l}.hook_resid_post", lambda a, hook: a - delta)]
            else:
                head, x = receiver.split(".")
                l, h = map(int, head[1:].split("H"))

                def add(a, hook, h=h):
                    a = a.clone()
                    a[:, :, h] += delta
                    return a

                hooks = [(f"blocks.{l}.hook_{x}_input", add)]
            out.append(metric(tw.run_with_hooks(base_in, return_type=return_type, fwd_hooks=hooks)) - base_m)
    return torch.stack(out)


def test_the_graph_has_every_edge_and_only_forward_ones(model):
    g = EdgeGraph.of(model.text)
    L, H = model.text.cfg.n_layers, model.text.cfg.n_heads
    assert len(g.senders) == 1 + L * (H + 1) and len(g.receivers) == L * (3 * H + 1) + 1
    names = set(g.names)
    assert {"embed->pooled", "L0H0->L0_mlp", "L0_mlp->L1H1.k", f"L{L - 1}_mlp->pooled"} <= names
    assert not {"L0H0->L0H1.q", "L1_mlp->L1_mlp", "L1H0->L0_mlp"} & names
    # embed feeds every receiver; a head of the last layer only its MLP and the read-out
    assert sum(n.startswith("embed->") for n in names) == len(g.receivers)
    assert sorted(n for n in names if n.startswith(f"L{L - 1}H0->")) == [f"L{L - 1}H0->L{L - 1}_mlp", f"L{L - 1}H0->pooled"]


def pixel_pair(fresh):
    randomize_tower_(fresh.vision, seed=4)
    return [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]


@pytest.mark.parametrize("direction,tower", [("denoise", "text"), ("noise", "text"), ("denoise", "vision")])
def test_exact_edge_patching_equals_a_plain_loop(fresh, direction, tower):
    clean, corrupt = (NEG, AFF) if tower == "text" else pixel_pair(fresh)
    metric = similarity_metric(fresh, images(fresh, len(clean)))
    exact = edge_patch(fresh, clean, corrupt, metric, direction=direction, progress=False, tower=tower)
    base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    ref = plain_edge_loop(fresh, base, src, metric, exact.names, tower=tower)
    assert exact.values.shape == ref.shape and (exact.values - ref).abs().max() <= 1e-5
    assert ref.abs().max() > 1e-2  # the edges do something
    if tower == "vision":  # EAP-IG on the image tower against the same exact effects (measured r: EAP 0.83, EAP-IG 0.99)
        est = edge_attribution(fresh, clean, corrupt, metric, ig_steps=4, tower="vision")
        assert float(torch.corrcoef(torch.stack([est.values.flatten(), ref.flatten()]))[0, 1]) >= 0.9


def make_linear(model):
    """Every LayerNorm with a constant scale ((x - mean) / 0.05 * w + b), the MLPs' activation the identity, and W_Q = W_K = 0
    (a fixed attention pattern): the tower is affine in its embeddings, so a linear metric of the unnormalised
    embedding is linear in every receiver input."""
    from hooked_clip.components import LayerNorm

    for mod in model.text.modules():
        if isinstance(mod, LayerNorm):
            mod.forward = lambda x, ln=mod: (x - x.mean(-1, keepdim=True)) / 0.05 * ln.w + ln.b
    with torch.no_grad():
        for block in model.text.blocks:
            block.mlp.act = lambda x: x
            for p in (block.attn.W_Q, block.attn.W_K, block.attn.b_Q, block.attn.b_K):
                p.zero_()
    return model


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_eap_equals_exact_edge_patching_on_a_linear_model(fresh, method):
    make_linear(fresh.to(torch.float64))  # exact in float64: m(patched) - m(base) cancels digits in float32
    v = torch.randn(fresh.cfg.d_proj, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    metric = lambda e: e @ v  # noqa: E731
    est = edge_attribution(fresh, NEG, AFF, metric, method=method, ig_steps=3, return_type="embed")
    exact = edge_patch(fresh, NEG, AFF, metric, return_type="embed", progress=False)
    assert est.names == exact.names
    scale = exact.values.abs().max()
    err = (est.values - exact.values).abs().max()
    assert scale > 1e-2 and err <= 1e-9 * max(1.0, float(scale)), (float(scale), float(err))


def test_eap_ig_tracks_exact_edge_patching_on_a_random_model(fresh):
    """Measured on this model (3 pairs, 46 edges, per edge and pair): EAP r = 0.90, EAP-IG (4 steps) r = 1.000;
    the top 10 edges by mean |effect| agree entirely. Thresholds leave room for other BLAS builds only."""
    metric = similarity_metric(fresh, images(fresh, 3))
    exact = edge_patch(fresh, NEG, AFF, metric, progress=False)
    y = exact.values.flatten()
    r = {}
    for method in ("eap", "eap-ig"):
        est = edge_attribution(fresh, NEG, AFF, metric, method=method, ig_steps=4)
        r[method] = float(torch.corrcoef(torch.stack([est.values.flatten(), y]))[0, 1])
        overlap = len(set(est.top(10).tolist()) & set(exact.top(10).tolist())) / 10
    assert r["eap-ig"] >= 0.98 and r["eap-ig"] > r["eap"] and overlap >= 0.8, (r, overlap)
    assert torch.allclose(est.clean, exact.clean) and torch.allclose(est.corrupt, exact.corrupt)


SHORT = ["There is no dog.", "There are no cats."]
LONG = ["There is a big brown dog.", "There are many cats."]  # one and zero extra tokens after "There is/are"


def test_unequal_lengths_are_refused_without_an_alignment_and_patched_with_one(fresh):
    metric = cosine_to_target(images(fresh, 2))
    with pytest.raises(ValueError, match="differ in token length.*alignment="):
        edge_attribution(fresh, SHORT, LONG, metric)
    with pytest.raises(ValueError, match="differ in token length.*alignment="):
        edge_patch(fresh, SHORT, LONG, metric, progress=False)
    base = fresh.text.as_tokens(LONG)  # denoise: the base run is corrupt = LONG; sources from SHORT
    n_pos = int(fresh.text.pool_positions(base).max()) + 1
    align = torch.full((2, n_pos), -1, dtype=torch.long)
    align[0, :4] = torch.arange(4)  # <start> There is a -> <start> There is no; "big brown" have none
    align[0, 6:8] = torch.tensor([4, 5])  # dog . -> dog .
    align[0, 8] = 6  # <end>
    align[1, :7] = torch.arange(7)
    exact = edge_patch(fresh, SHORT, LONG, metric, alignment=align, progress=False)
    ref = plain_edge_loop(fresh, LONG, SHORT, metric, exact.names, alignment=align)
    assert (exact.values - ref).abs().max() <= 1e-5 and ref.abs().max() > 1e-3
    est = edge_attribution(fresh, SHORT, LONG, metric, alignment=align, ig_steps=4)
    assert float(torch.corrcoef(torch.stack([est.values.flatten(), exact.values.flatten()]))[0, 1]) >= 0.9
    with pytest.raises(ValueError, match="alignment must have shape"):
        edge_attribution(fresh, SHORT, LONG, metric, alignment=align[:, :3])


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_circuits_end_at_the_two_runs_and_dropping_one_edge_is_exact_edge_patching(fresh, tower):
    """Every edge kept: the clean run; none (patched): the corrupt run; every edge but one: the clean run with
    that edge noised, which the plain loop computes independently."""
    if tower == "vision":
        clean, corrupt = pixel_pair(fresh)
        metric = similarity_metric(fresh, images(fresh, 2))
    else:
        clean, corrupt, metric = NEG, AFF, similarity_metric(fresh, images(fresh, 3))
    graph = EdgeGraph.of(getattr(fresh, tower))
    n = len(graph)
    out_of = [i for i, name in enumerate(graph.names) if name.startswith("L0H1->")]  # every edge out of L0H1
    vals = run_circuit(fresh, clean, corrupt, metric, [torch.arange(n), torch.zeros(0, dtype=torch.long)]
                       + [torch.tensor([i for i in range(n) if i != e]) for e in range(n)]
                       + [torch.tensor([i for i in range(n) if i not in out_of])], tower=tower)
    ref = plain_edge_loop(fresh, clean, corrupt, metric, graph.names, tower=tower)
    tw = getattr(fresh, tower)
    with torch.no_grad():
        m_clean, m_corrupt = metric(tw(tw.as_input(clean))), metric(tw(tw.as_input(corrupt)))
        _, cc = tw.run_with_cache(tw.as_input(corrupt), names_filter=["blocks.0.attn.hook_z"])

        def noise_head(z, hook):  # every edge out of L0H1 dropped = L0H1's output from the corrupt run
            z = z.clone()
            z[:, :, 1] = cc["blocks.0.attn.hook_z"][:, :, 1]
            return z

        m_head = metric(tw.run_with_hooks(tw.as_input(clean), fwd_hooks=[("blocks.0.attn.hook_z", noise_head)]))
    assert (vals[0] - m_clean).abs().max() <= 1e-5 and (vals[1] - m_corrupt).abs().max() <= 1e-5
    assert (vals[2: 2 + n] - m_clean - ref).abs().max() <= 1e-5 and ref.abs().max() > 1e-3
    assert (vals[-1] - m_head).abs().max() <= 1e-5 and (m_head - m_clean).abs().max() > 1e-3


def test_top_edges_keep_more_of_the_metric_than_random_ones(fresh):
    """Measured (patched ablation): the top 4 of 46 edges keep 0.51 of the metric, 4 random ones 0.00; the
    top 16 keep 1.02, 16 random ones 0.10 (mean of 5 seeds)."""
    metric = similarity_metric(fresh, images(fresh, 3))
    scores = edge_attribution(fresh, NEG, AFF, metric, direction="noise", ig_steps=4)
    curve = faithfulness_curve(fresh, NEG, AFF, metric, scores, [4, 16, len(scores.names)], n_random=5)
    assert curve.faithfulness[-1] == pytest.approx(1.0) and curve.random[:, -1] == pytest.approx(1.0)
    assert (curve.faithfulness[:2] - curve.random[:, :2].mean(0) >= 0.4).all(), curve
    df = curve.to_dataframe()
    assert set(df.circuit) == {"top", "random"} and len(df) == 3 * 6
    with pytest.raises(ValueError, match="n_edges goes up to"):
        faithfulness_curve(fresh, NEG, AFF, metric, scores, [10_000])
    with pytest.raises(ValueError, match="ablation must be one of"):
        run_circuit(fresh, NEG, AFF, metric, [0, 1], ablation="zero")


def test_the_circuit_graph_is_data_and_a_picture(model, tmp_path):
    import matplotlib
    import networkx as nx

    matplotlib.use("Agg")
    scores = edge_attribution(model, NEG, AFF, similarity_metric(model, images(model, 3)), method="eap")
    g = circuit_graph(scores, 7)
    table = nx.to_pandas_edgelist(g)
    top = scores.top(7).tolist()
    assert sorted(table["name"]) == sorted(scores.names[i] for i in top)
    assert dict(zip(table["name"], table["weight"])) == pytest.approx({scores.names[i]: float(scores.mean()[i]) for i in top})
    _, ax = draw_circuit(scores, 7)
    ax.figure.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def joint_patching(model, text, image, p, q, text_ref, image_ref):
    """The reference: S with token p and/or patch q set to the references' embeddings, four runs."""
    def s(patch_token, patch_image):
        def tok(a, hook):
            a = a.clone()
            a[:, p] = text_ref[:, p]
            return a

        def pat(a, hook):
            a = a.clone()
            a[:, q] = image_ref[:, q]
            return a

        t = model.text.run_with_hooks(model.text.as_tokens(text), fwd_hooks=[("hook_embed", tok)] if patch_token else [])
        i = model.vision.run_with_hooks(image, fwd_hooks=[("hook_patch_embed", pat)] if patch_image else [])
        return model.paired_similarity(t, i)[0]

    with torch.no_grad():
        return s(True, True) - s(True, False) - s(False, True) + s(False, False)


def test_token_patch_interactions_against_exact_joint_patching(fresh):
    """Measured: exact equals the four-run loop to 1e-6; the integrated second-order estimate (32 steps) has
    r = 0.999 with it, and its terms sum to the whole-pair interaction within 3%."""
    randomize_tower_(fresh.vision, seed=4)
    img = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref_img = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    text, ref_text = "There is no dog.", "There is a cat."
    exact = token_patch_interactions(fresh, text, img, text_reference=ref_text, image_reference=ref_img, method="exact")
    est = token_patch_interactions(fresh, text, img, text_reference=ref_text, image_reference=ref_img, steps=32)
    assert exact.values.shape == (7, 16) and exact.tokens[3] == "no" and exact.map(3).shape == (4, 4)
    with torch.no_grad():
        _, tc = fresh.text.run_with_cache(fresh.text.as_tokens(ref_text), names_filter=["hook_embed"])
        _, ic = fresh.vision.run_with_cache(ref_img, names_filter=["hook_patch_embed"])
    for p, q in [(3, 0), (3, 5), (4, 15), (1, 7), (6, 2)]:
        ref = joint_patching(fresh, text, img, p, q, tc["hook_embed"], ic["hook_patch_embed"])
        assert abs(float(exact.values[p, q] - ref)) <= 1e-5 * max(1.0, abs(float(ref)))
    y = exact.values[[1, 3, 4]].flatten()  # tokens that differ from the reference (the others are 0)
    r = float(torch.corrcoef(torch.stack([est.values[[1, 3, 4]].flatten(), y]))[0, 1])
    assert r >= 0.95, r
    assert abs(float(est.values.sum()) - est.total) <= 0.05 * abs(est.total) and abs(est.total) > 1e-3
    assert est.values[[0, 2, 5, 6]].abs().max() <= 1e-6  # tokens equal to the reference's interact with nothing
    with pytest.raises(ValueError, match="text_reference must have the input's shape"):
        token_patch_interactions(fresh, text, img, text_reference="There is a big cat.")
    with pytest.raises(ValueError, match="give one text and one image"):
        token_patch_interactions(fresh, [text, text], img)


def test_edge_analyses_refuse_bad_input_naming_the_fix(model):
    metric = cosine_to_target(images(model, 3))
    with pytest.raises(ValueError, match="unknown edges \\['L1H0->L0_mlp'\\]"):
        edge_patch(model, NEG, AFF, metric, ["embed->pooled", "L1H0->L0_mlp"], progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        edge_attribution(model, NEG, AFF, metric, method="atp")
    with pytest.raises(ValueError, match="ig_steps .* must be a positive integer"):
        edge_attribution(model, NEG, AFF, metric, ig_steps=0)
    with pytest.raises(ValueError, match="no gradient"):
        edge_attribution(model, NEG, AFF, lambda e: metric(e).detach())
    with pytest.raises(ValueError, match="a keep mask must have one entry per edge"):
        run_circuit(model, NEG, AFF, metric, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep must hold edge indices"):
        run_circuit(model, NEG, AFF, metric, [0, 10_000])
    some = edge_patch(model, NEG, AFF, metric, ["embed->pooled", "L0H1->L1_mlp"], progress=False)
    assert some.names == ["embed->pooled", "L0H1->L1_mlp"] and some.values.shape == (2, 3)
    with pytest.raises(ValueError, match="different set of edges"):
        faithfulness_curve(model, NEG, AFF, metric, some, [1])
    with pytest.raises(ValueError, match="alignment is for texts"):
        edge_attribution(model, *pixel_pair_of(model), metric, alignment=torch.zeros(2, 17, dtype=torch.long),
                         tower="vision")


def pixel_pair_of(model):
    return [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]


def test_mean_ablating_every_edge_reads_out_the_mean_corrupt_residual(model):
    """With no edge kept and ablation="mean", the read-out's input is the sum of every sender's mean over the
    corrupt examples (plus the constant biases): the corrupt run's final residual averaged over examples."""
    metric = cosine_to_target(images(model, 3))
    got = run_circuit(model, NEG, AFF, metric, torch.zeros(0, dtype=torch.long), ablation="mean")[0]
    tw = model.text
    last = f"blocks.{tw.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        clean_t = tw.as_tokens(NEG)
        corrupt_t = tw.as_tokens(AFF)[:, : clean_t.shape[1]]
        _, cache = tw.run_with_cache(corrupt_t, names_filter=[last])
        mean = cache[last].mean(0, keepdim=True)
        ref = metric(tw.run_with_hooks(clean_t, fwd_hooks=[(last, lambda a, hook: mean[:, : a.shape[1]].expand_as(a))]))
    assert (got - ref).abs().max() <= 1e-5
