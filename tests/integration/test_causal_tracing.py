"""Minimal-pair causal tracing (the paper's CTE) and ROME tracing: exact invariants and loop parity."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import hf_clip

from hooked_clip.analyses.causal_tracing import hidden_state_hook, minimal_pair_trace, rome_trace
from hooked_clip.analyses.metrics import cosine_to_target
from hooked_clip import HookedCLIP

NEG = ["There are no cats in the picture.", "There is no dog.", "There are no people.", "There are no red buses parked here."]
AFF = ["There are some cats in the picture.", "There is a dog.", "There are some people.", "There are some red buses parked here."]
WHERE = ["caption", "foil", "caption", "foil"]


@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_hf(hf_clip("laion_gelu"), device="cpu")


@pytest.fixture(scope="module")
def images(model):
    return torch.randn(len(NEG), model.cfg.d_proj, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cte(model, images):
    return minimal_pair_trace(model, NEG, AFF, images, progress=False)


def test_cte_invariants(model, cte):
    n_layers = model.cfg.n_layers
    eot = model.pool_positions(model.to_tokens(NEG))
    assert cte.shape == (len(NEG), n_layers + 1, int(eot.max()) + 1)
    for i in range(len(NEG)):
        e = int(eot[i])
        assert (cte[i, 0, 3] - 1).abs() <= 1e-4  # the embeddings differ only at the negator
        assert (cte[i, 0, [p for p in range(e + 1) if p != 3]] == 0).all()
        assert (cte[i, :, :3] == 0).all()  # causal mask: the shared prefix carries nothing
        assert (cte[i, n_layers, e] - 1).abs() <= 1e-4  # pooling reads only EOT
        assert (cte[i, n_layers, :e] == 0).all()
        assert torch.isnan(cte[i, :, e + 1 :]).all()  # after EOT: no such state


@torch.no_grad()
def test_cte_equals_paper_loop(model, images, cte):
    """The authors' algorithm written out: one forward per (pair, l, p), signs per negation location."""
    for i in range(len(NEG)):
        neg_t, aff_t = model.to_tokens(NEG[i]), model.to_tokens(AFF[i])
        _, cache = model.run_with_cache(neg_t)
        scale, img = model.logit_scale.exp(), torch.nn.functional.normalize(images[i], dim=0)
        s = lambda e: float(scale * torch.nn.functional.normalize(e[0], dim=0) @ img)  # noqa: E731
        s_neg, s_aff = s(model.encode_text(neg_t)), s(model.encode_text(aff_t))
        d = s_neg - s_aff if WHERE[i] == "caption" else s_aff - s_neg
        for l in range(model.cfg.n_layers + 1):
            for p in range(neg_t.shape[1]):
                def hook(x, hook, p=p):
                    x = x.clone()
                    x[:, p] = cache[hook.name][:, p]
                    return x
                s_star = s(model.run_with_hooks(aff_t, return_type="normalized", fwd_hooks=[(hidden_state_hook(l), hook)]))
                d_star = s_star - s_aff if WHERE[i] == "caption" else s_aff - s_star
                assert abs(cte[i, l, p].item() - d_star / d) <= 1e-4 / min(1.0, abs(d)), (i, l, p)


def test_minimal_pair_bad_input(model, images):
    with pytest.raises(ValueError, match=r"negated and affirmative differ in token length at examples \[0\].*align the sentences"):
        minimal_pair_trace(model, ["There are no cats."], ["There are cats."], images[:1], progress=False)
    with pytest.raises(TypeError):  # where the negation sits is not an argument (both cases give the same CTE)
        minimal_pair_trace(model, NEG, AFF, images, "caption", progress=False)
    with pytest.raises(ValueError, match=r"image_embeds must be \[pairs=4, d_proj\]"):
        minimal_pair_trace(model, NEG, AFF, images[:2], progress=False)


# ------------------------------------------------------------------------------------------------ ROME
def documented_noise(model, tokens, n_samples, seed):
    """The noise rule rome_trace documents, written out: per item, a generator seeded with the first 8 bytes
    (little-endian, 63 bits) of sha256("rome-noise:{seed}:{token ids up to the EOT}"), n_samples x
    (EOT + 1) x d_model standard normals; zeros after the EOT."""
    eot = model.pool_positions(tokens)
    out = torch.zeros(n_samples, tokens.shape[0], tokens.shape[1], model.cfg.d_model)
    for b in range(tokens.shape[0]):
        ids = tokens[b, : int(eot[b]) + 1].tolist()
        digest = hashlib.sha256(f"rome-noise:{seed}:{ids}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        out[:, b, : int(eot[b]) + 1] = torch.randn(n_samples, int(eot[b]) + 1, model.cfg.d_model, generator=gen)
    return out


def rome_loop(model, tokens, metric, noise, names, pos):
    """Plain loop: per sample, a forward with the noise and the clean state restored at ``pos``."""
    _, clean = model.run_with_cache(tokens)
    outs = []
    for s in range(noise.shape[0]):
        hooks = [("hook_embed", lambda e, hook, s=s: e + noise[s])]
        for name in names:
            def restore(x, hook):
                x = x.clone()
                x[:, pos] = clean[hook.name][:, pos]
                return x
            hooks.append((name, restore))
        outs.append(metric(model.run_with_hooks(tokens, return_type="normalized", fwd_hooks=hooks)))
    return torch.stack(outs).mean(0)


@pytest.mark.parametrize("kind", ["resid", "mlp", "attn"])
def test_rome_trace_equals_loop(model, kind):
    tokens = model.to_tokens(NEG)
    metric = cosine_to_target(model.encode_text(tokens).detach())
    res = rome_trace(model, tokens, metric, [3, 4], kind=kind, window=2, n_samples=3, noise_std=0.1, seed=5, progress=False)
    n_rows = model.cfg.n_layers + (kind == "resid")
    assert res.scores.shape == (len(NEG), n_rows, tokens.shape[1])
    noise = documented_noise(model, tokens, 3, seed=5) * 0.3
    noise[:, :, [0, 1, 2] + list(range(5, tokens.shape[1]))] = 0
    ref_corrupt = rome_loop(model, tokens, metric, noise, [], 0)
    assert (res.corrupted - ref_corrupt).abs().max() <= 1e-5
    assert (res.clean - 1).abs().max() <= 1e-5
    hook = {"mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}.get(kind)
    for row, pos in [(0, 3), (1, 4), (n_rows - 1, 6), (1, 1)]:
        names = [hidden_state_hook(row)] if kind == "resid" else [hook.format(j) for j in range(max(0, row - 1), min(model.cfg.n_layers, row + 1))]
        ref = rome_loop(model, tokens, metric, noise, names, pos)
        assert (res.scores[:, row, pos] - ref).abs().max() <= 1e-5, (row, pos)
    # restoring a state before the noise changes nothing; the last hidden state at EOT restores everything
    assert torch.equal(res.scores[:, :, :3], res.corrupted[:, None, None].expand(-1, n_rows, 3))
    if kind == "resid":
        eot = model.pool_positions(tokens)
        assert (res.scores[torch.arange(len(NEG)), -1, eot] - res.clean).abs().max() <= 1e-5


def test_rome_zero_noise_is_clean_and_seed_is_reproducible(model):
    tokens = model.to_tokens(NEG[:2])
    metric = cosine_to_target(model.encode_text(tokens).detach())
    res = rome_trace(model, tokens, metric, [4], noise_scale=0.0, n_samples=2, progress=False)
    assert (res.scores - 1).abs().max() <= 1e-5 and (res.corrupted - 1).abs().max() <= 1e-5
    a = rome_trace(model, tokens, metric, [4], n_samples=2, seed=3, progress=False)
    b = rome_trace(model, tokens, metric, [4], n_samples=2, seed=3, progress=False)
    assert torch.equal(a.scores, b.scores) and a.noise_std > 0


def test_rome_noise_depends_only_on_seed_and_item(model):
    """Chunk size, batch composition and padding cannot change an item's numbers (resume-safe)."""
    tokens = model.to_tokens(NEG)
    metric = cosine_to_target(model.encode_text(tokens).detach())
    kw = dict(noise_std=0.1, n_samples=2, seed=7, progress=False)
    results = [rome_trace(model, tokens, metric, [3, 4], batch_size=bs, **kw).scores for bs in (1, 5, 64)]
    # identical draws; the numbers agree to float rounding (batch shapes change BLAS summation order)
    assert (results[0] - results[1]).abs().max() <= 1e-6
    assert (results[1] - results[2]).abs().max() <= 1e-6
    # item 1 alone (shorter padded length, no batch-mates) gets the numbers it had in the batch
    alone_tokens = model.to_tokens(NEG[1:2])
    alone = rome_trace(model, alone_tokens, cosine_to_target(model.encode_text(alone_tokens).detach()), [3, 4], **kw)
    width = alone.scores.shape[-1]
    assert (alone.scores[0] - results[0][1, :, :width]).abs().max() <= 1e-6


def test_rome_bad_input(model):
    tokens = model.to_tokens(NEG)
    metric = cosine_to_target(model.encode_text(tokens).detach())
    with pytest.raises(ValueError, match=r"noise_positions \[40\] are outside"):
        rome_trace(model, tokens, metric, [40], progress=False)
    with pytest.raises(ValueError, match="kind must be"):
        rome_trace(model, tokens, metric, [3], kind="heads", progress=False)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        rome_trace(model, tokens, metric, [3], n_samples=0, progress=False)
    with pytest.raises(ValueError, match="noise_positions is empty"):
        rome_trace(model, tokens, metric, [], progress=False)
