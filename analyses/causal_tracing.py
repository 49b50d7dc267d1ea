"""Causal tracing: the minimal-pair method of Quantmeyer, Mosteiro & Gatt (2024), and ROME's noise-based
method (Meng et al. 2022). Both are compositions of the batched patching engine.

Hidden-state numbering follows the paper: l = 0 is the embeddings output (``blocks.0.hook_resid_pre``),
l >= 1 the output of block l (``blocks.{l-1}.hook_resid_post``); maps are [n_layers + 1, pos].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.metrics import Metric, check_metric, similarity_metric
from hooked_clip.analyses.patching import Tokens, _text, activation_patch

NegationIn = Literal["caption", "foil"]


def hidden_state_hook(layer: int) -> str:
    """Hook name of the paper's hidden state l (0 = embeddings output, l = output of block l)."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def _pair_tokens(text, negated: Tokens, affirmative: Tokens) -> tuple[Tensor, Tensor]:
    neg = text.as_tokens(negated)
    aff = text.as_tokens(affirmative)
    if neg.shape[0] != aff.shape[0]:
        raise ValueError(f"{neg.shape[0]} negated sentences but {aff.shape[0]} affirmative ones.")
    n_neg, n_aff = text.pool_positions(neg), text.pool_positions(aff)
    bad = (n_neg != n_aff).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"pairs {bad[:10]} have different token lengths (negated {n_neg[bad[0]].item() + 1} vs affirmative "
            f"{n_aff[bad[0]].item() + 1} tokens for pair {bad[0]}); the minimal-pair trace patches position p into "
            "position p, so align the sentences first (e.g. 'There are some X' for 'There are no X')."
        )
    width = int(n_neg.max()) + 1
    return neg[:, :width], aff[:, :width]


def _negation_flags(negation_in: Union[NegationIn, Sequence[NegationIn]], n: int) -> Tensor:
    values = [negation_in] * n if isinstance(negation_in, str) else list(negation_in)
    if len(values) != n:
        raise ValueError(f"negation_in has {len(values)} entries for {n} pairs; give one per pair (or one string).")
    bad = sorted({v for v in values if v not in ("caption", "foil")})
    if bad:
        raise ValueError(f"negation_in entries must be 'caption' or 'foil', got {bad}.")
    return torch.tensor([v == "caption" for v in values])


def minimal_pair_trace(
    model,
    negated: Tokens,
    affirmative: Tokens,
    image_embeds: Float[Tensor, "pairs d_proj"],
    negation_in: Union[NegationIn, Sequence[NegationIn]],
    *,
    batch_size: int = 1024,
    progress: bool = True,
) -> Float[Tensor, "pairs n_layers_plus_1 pos"]:
    """The paper's causal-tracing effect CTE(l, p) = d*/d for every hidden state (l, p) of each pair.

    For every l in 0..n_layers and position p, the negated sentence's hidden state (l, p) replaces the
    affirmative sentence's, downstream states are recomputed, and the score is read again. With
    d = S(caption, image) - S(foil, image) (logits):

    - negation in the caption (the foil, affirmative, is patched): d* = S*(foil) - S(foil);
    - negation in the foil (the caption, affirmative, is patched): d* = S(caption) - S*(caption).

    Returns CTE [pairs, n_layers + 1, pos] (dimensionless; 1 = the single state carries the whole
    caption-foil gap). Positions after a pair's EOT, and pairs with d = 0, are NaN.
    """
    text = _text(model)
    neg, aff = _pair_tokens(text, negated, affirmative)
    is_caption = _negation_flags(negation_in, neg.shape[0])
    if image_embeds.ndim != 2 or image_embeds.shape[0] != neg.shape[0]:
        raise ValueError(f"image_embeds must be [pairs={neg.shape[0]}, d_proj], got {tuple(image_embeds.shape)}.")
    metric = similarity_metric(model, image_embeds)
    kw = dict(index="layer_pos", direction="denoise", batch_size=batch_size, progress=progress)
    pre = activation_patch(model, neg, aff, metric, "resid_pre", **kw)  # hidden states 0..L-1
    last = activation_patch(model, neg, aff, metric, "resid_post", layers=[text.cfg.n_layers - 1], **kw)
    s_patched = torch.cat([pre.values, last.values], dim=0).permute(2, 0, 1)  # [pairs, L+1, pos]
    s_neg, s_aff = pre.clean[:, None, None], pre.corrupt[:, None, None]
    caption = is_caption[:, None, None]
    d = torch.where(caption, s_neg - s_aff, s_aff - s_neg)
    d_star = torch.where(caption, s_patched - s_aff, s_aff - s_patched)
    cte = d_star / torch.where(d == 0, torch.ones_like(d), d)
    cte = torch.where(d == 0, torch.full_like(cte, float("nan")), cte)
    after_eot = torch.arange(cte.shape[-1])[None, :] > text.pool_positions(neg).cpu()[:, None]  # [pairs, pos]
    return cte.masked_fill(after_eot[:, None, :], float("nan"))


# --------------------------------------------------------------------------------------- ROME tracing
@dataclass
class RomeTraceResult:
    """``scores`` [batch, n_rows, pos]: the metric (mean over noise samples) with state (row, pos)
    restored into the corrupted runs. Rows are the paper's hidden states 0..n_layers for ``kind="resid"``
    and blocks 0..n_layers-1 (centre of the window) for ``"mlp"``/``"attn"``. ``clean`` [batch]: the
    uncorrupted metric; ``corrupted`` [batch]: mean over samples with nothing restored.
    ``indirect_effect`` = scores - corrupted."""

    scores: Tensor
    clean: Tensor
    corrupted: Tensor
    kind: str
    noise_std: float

    @property
    def indirect_effect(self) -> Tensor:
        return self.scores - self.corrupted[:, None, None]


def embedding_std(model, reference: Tokens) -> float:
    """Std of token embeddings (``hook_embed``) over the valid positions (up to EOT) of a reference set."""
    text = _text(model)
    tokens = text.as_tokens(reference)
    with torch.no_grad():
        emb = text.embed(tokens)
    valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= text.pool_positions(tokens)[:, None]
    return float(emb[valid].std())


def rome_trace(
    model,
    tokens: Tokens,
    metric: Metric,
    noise_positions: Union[Sequence[int], Int[Tensor, "batch pos"]],
    *,
    kind: Literal["resid", "mlp", "attn"] = "resid",
    window: int = 10,
    noise_scale: float = 3.0,
    n_samples: int = 10,
    noise_std: Optional[float] = None,
    reference: Optional[Tokens] = None,
    seed: int = 0,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    batch_size: int = 1024,
    progress: bool = True,
) -> RomeTraceResult:
    """ROME causal tracing: corrupt ``noise_positions`` of the token embeddings with Gaussian noise of std
    ``noise_scale * sigma`` (sigma = ``noise_std``, else the embedding std over ``reference``, else over
    ``tokens``), ``n_samples`` noise draws per example (seeded), and restore one clean state at a time.

    ``kind="resid"`` restores the hidden state (l, p); ``"mlp"``/``"attn"`` restore the MLP/attention
    output at position p of the ``window`` blocks centred on block l (clipped at the ends), as in ROME.
    """
    text = _text(model)
    if kind not in ("resid", "mlp", "attn"):
        raise ValueError(f"kind must be 'resid', 'mlp' or 'attn', got {kind!r}.")
    for name, v in (("n_samples", n_samples), ("batch_size", batch_size), ("window", window)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    toks = text.as_tokens(tokens)
    pool = text.pool_positions(toks)
    toks = toks[:, : int(pool.max()) + 1] if text.cfg.trims else toks
    n_ex, n_pos, n_layers = toks.shape[0], toks.shape[1], text.cfg.n_layers
    noise_mask = _noise_mask(noise_positions, n_ex, n_pos, pool).to(toks.device)
    sigma = noise_std if noise_std is not None else embedding_std(text, reference if reference is not None else toks)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(n_samples, n_ex, n_pos, text.cfg.d_model, generator=gen) * (noise_scale * sigma)
    noise = (noise.to(toks.device, text.W_E.dtype) * noise_mask[None, :, :, None]).flatten(0, 1)  # [S*B, pos, d]

    def add_noise(embed, hook):
        return embed + noise

    rows_tok = toks.repeat(n_samples, 1)  # noisy row r = sample r // B of example r % B
    rows_pool = pool.repeat(n_samples)
    state_names = _state_names(kind, n_layers, window)
    restored = sorted({n for ns in state_names for n in ns})
    starts = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    with torch.no_grad():
        clean_out, clean_cache = text.run_with_cache(toks, return_type=return_type, names_filter=restored)
        with text.hooks(fwd_hooks=[("hook_embed", add_noise)]):
            corrupt_out, corrupt_cache = text.run_with_cache(
                rows_tok, return_type=return_type, names_filter=sorted(set(starts) | set(restored)))
    clean_m = check_metric(metric, clean_out)
    corrupt_m = check_metric(metric, corrupt_out.view(n_samples, n_ex, -1)).mean(0)

    scores = torch.empty(n_ex, len(state_names), n_pos)
    n_rows = n_samples * n_ex
    for row, names in enumerate(tqdm(state_names, disable=not progress, desc=f"ROME tracing ({kind})")):
        start = _first_layer(names)
        resid = corrupt_cache[f"blocks.{start}.hook_resid_pre"]
        # [pos, noisy row]: restoring changes something only where a restored state differs from the noisy
        # one (never before the first noised position) at or before the pooling position
        differs = torch.zeros(n_rows, n_pos, dtype=torch.bool, device=toks.device)
        for name in names:
            differs |= (clean_cache[name].repeat(n_samples, 1, 1) != corrupt_cache[name]).any(-1)
        if text.cfg.trims:
            differs &= torch.arange(n_pos, device=toks.device)[None, :] <= rows_pool[:, None]
        pos_idx, row_idx = differs.T.nonzero(as_tuple=True)
        order = torch.argsort(rows_pool[row_idx], stable=True)  # similar lengths share a chunk
        pos_idx, row_idx = pos_idx[order], row_idx[order]
        outputs = corrupt_out.unsqueeze(0).repeat(n_pos, 1, 1)  # [pos, noisy row, d]
        for s in range(0, len(pos_idx), batch_size):
            p, r = pos_idx[s : s + batch_size], row_idx[s : s + batch_size]
            hooks = [(name, _restore_hook(clean_cache[name], r % n_ex, p)) for name in names]
            with torch.no_grad(), text.hooks(fwd_hooks=hooks):
                outputs[p, r] = text(resid[r], start_at_layer=start, pool_positions=rows_pool[r],
                                     return_type=return_type)
        metric_out = check_metric(metric, outputs.view(n_pos, n_samples, n_ex, -1))  # [pos, sample, ex]
        scores[:, row, :] = metric_out.mean(1).T.float().cpu()
    return RomeTraceResult(scores, clean_m.float().cpu(), corrupt_m.float().cpu(), kind, float(sigma))


def _noise_mask(noise_positions, n_ex: int, n_pos: int, pool: Tensor) -> Tensor:
    if isinstance(noise_positions, Tensor) and noise_positions.dtype == torch.bool:
        if noise_positions.shape != (n_ex, n_pos):
            raise ValueError(f"a boolean noise mask must be [batch, pos] = {(n_ex, n_pos)}, got {tuple(noise_positions.shape)}.")
        return noise_positions.cpu()
    positions = [int(p) for p in noise_positions]
    if not positions:
        raise ValueError("noise_positions is empty: nothing would be corrupted.")
    bad = [p for p in positions if not 0 <= p < n_pos]
    if bad:
        raise ValueError(f"noise_positions {bad} are outside the sequence (0..{n_pos - 1}).")
    mask = torch.zeros(n_ex, n_pos, dtype=torch.bool)
    mask[:, positions] = True
    return mask


def _state_names(kind: str, n_layers: int, window: int) -> list[list[str]]:
    """Hook names restored together, one list per row of the map: the hidden state l for "resid"; the
    MLP/attention outputs of the ``window`` blocks centred on block l (clipped) for "mlp"/"attn"."""
    if kind == "resid":
        return [[hidden_state_hook(l)] for l in range(n_layers + 1)]
    hook = "blocks.{}.hook_mlp_out" if kind == "mlp" else "blocks.{}.hook_attn_out"
    rows = []
    for layer in range(n_layers):  # ROME's clipping: range(max(0, l - w//2), min(L, l - (-w // 2)))
        rows.append([hook.format(j) for j in range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))])
    return rows


def _first_layer(names: list[str]) -> int:
    return min(int(n.split(".")[1]) for n in names)


def _restore_hook(clean: Tensor, examples: Tensor, positions: Tensor):
    n = torch.arange(len(examples), device=examples.device)

    def hook(act, hook):
        act[n, positions] = clean[examples, positions]
        return act

    return hook


