"""Causal tracing: the minimal-pair method of Quantmeyer, Mosteiro & Gatt (2024), and ROME's noise-based
method (Meng et al. 2022). Both are compositions of the batched patching engine.

Hidden-state numbering follows the paper: l = 0 is the embeddings output (``blocks.0.hook_resid_pre``),
l >= 1 the output of block l (``blocks.{l-1}.hook_resid_post``); maps are [n_layers + 1, pos].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooked_clip.analyses.validation import check_count
from hooked_clip.analyses.engine import BaseRun, Chunk, Hooks, Plan, execute
from hooked_clip.analyses.metrics import Metric, check_metric, similarity_metric
from hooked_clip.analyses.pairs import RunPair, Tokens, source_tower, str_tokens
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.patching import hidden_state_patch
from hooked_clip.names import act_name, hidden_state_name, layer_of
from hooked_clip.tower import get_tower

def hidden_state_hook(layer: int, n_layers: Optional[int] = None) -> str:
    """Hook name of the paper's hidden state l (0 = embeddings output, l = output of block l); see
    :func:`hooked_clip.names.hidden_state_name`."""
    return hidden_state_name(layer, layer if n_layers is None else n_layers)


def minimal_pair_trace(
    model,
    negated: Tokens,
    affirmative: Tokens,
    image_embeds: Float[Tensor, "pairs d_proj"],
    *,
    batch_size: int = 1024,
    progress: bool = True,
    source_model=None,
) -> Float[Tensor, "pairs n_layers_plus_1 pos"]:
    """The causal-tracing effect CTE(l, p) = d*/d of Quantmeyer et al. (2024) for every hidden state (l, p)
    of each minimal pair: an application of :func:`~hooked_clip.analyses.patching.hidden_state_patch` and the
    normalised patching metric.

    For every hidden state l in 0..n_layers (0 = embeddings output, l = output of block l) and position p,
    the negated sentence's state replaces the affirmative sentence's (denoising, with the negated sentence
    as the clean run), downstream states are recomputed and S(affirmative, image) is read again. The paper
    defines d = S(caption, image) - S(foil, image) and d* by where the negation sits, but both of its cases
    reduce to the same ratio, the normalised patching metric::

        CTE = (S*(affirmative) - S(affirmative)) / (S(negated) - S(affirmative))

    (negation in the caption: d* = S*(foil) - S(foil), d = S(neg) - S(aff); in the foil: d* = S(caption) -
    S*(caption), d = S(aff) - S(neg)), so where the negation sits is not an argument.

    Returns CTE [pairs, n_layers + 1, pos] (dimensionless; 1 = the single state carries the whole
    caption-foil gap). ``source_model``: another checkpoint of the same architecture whose negated-sentence
    states are patched in (S(negated) is then read on it). Positions that hold no token of the pair (after a causal tower's EOT, or padding a
    bidirectional tower masks: pairs of different lengths run in one padded batch), and pairs with
    S(negated) = S(affirmative), are NaN.
    """
    text = get_tower(model, "text")
    pair = RunPair.build(text, negated, affirmative, "denoise", names=("negated", "affirmative"),
                         hint="The minimal-pair trace patches position p into position p, so align the sentences first "
                              "(e.g. 'There are some X' for 'There are no X').")
    n_pairs = pair.base.shape[0]
    if not isinstance(image_embeds, Tensor) or image_embeds.ndim != 2 or image_embeds.shape[0] != n_pairs:
        raise ValueError(f"image_embeds must be [pairs={n_pairs}, d_proj], got {tuple(getattr(image_embeds, 'shape', ()))}.")
    metric = similarity_metric(model, image_embeds)
    states = hidden_state_patch(model, pair.source, pair.base, metric, direction="denoise", batch_size=batch_size,
                                progress=progress, source_model=source_model)
    cte = states.normalized().permute(2, 0, 1)  # [pairs, L+1, pos]
    return cte.masked_fill(_not_text(text, pair.base, cte.shape[-1])[:, None, :], float("nan"))


def _not_text(text, tokens: Tensor, n_pos: int) -> Tensor:
    """[batch, pos] True at positions that hold no token of the row's text (padding the tower masks, or a
    causal tower's positions after its EOT); see ``input_lengths``."""
    return torch.arange(n_pos)[None, :] >= text.input_lengths(tokens).cpu()[:, None]


# --------------------------------------------------------------------------------------- ROME tracing
@dataclass(repr=False)
class RomeTraceResult(CompactRepr):
    """``scores`` [batch, n_rows, pos]: the metric (mean over noise samples) with state (row, pos)
    restored into the corrupted runs. Rows are the paper's hidden states 0..n_layers for ``kind="resid"``
    and blocks 0..n_layers-1 (centre of the window) for ``"mlp"``/``"attn"``. ``clean`` [batch]: the
    uncorrupted metric; ``corrupted`` [batch]: mean over samples with nothing restored.
    ``indirect_effect`` = scores - corrupted. ``tokens``: each example's token strings [example][pos] (None
    where the tokenizer cannot be built here)."""

    scores: Tensor
    clean: Tensor
    corrupted: Tensor
    kind: str
    noise_std: float
    tokens: Optional[list[list[str]]] = None

    def to_dataframe(self):
        """One row per (example, row, position): ``example``, ``state`` (``kind="resid"``) or ``layer``, ``pos``,
        ``token`` (the example's token there), ``score`` and ``indirect_effect``."""
        import pandas as pd

        ex, row, pos = (g.flatten() for g in torch.meshgrid(*[torch.arange(n) for n in self.scores.shape], indexing="ij"))
        data = {"example": ex.numpy(), "state" if self.kind == "resid" else "layer": row.numpy(), "pos": pos.numpy()}
        if self.tokens is not None:
            data["token"] = [self.tokens[e][p] for e, p in zip(ex.tolist(), pos.tolist())]
        data["score"] = self.scores.flatten().numpy()
        data["indirect_effect"] = self.indirect_effect.flatten().numpy()
        return pd.DataFrame(data)

    @property
    def indirect_effect(self) -> Tensor:
        return self.scores - self.corrupted[:, None, None]


def embedding_std(model, reference: Tokens) -> float:
    """Std of token embeddings (``hook_embed``) over the positions that hold text (up to EOT, padding left out)
    of a reference set."""
    text = get_tower(model, "text")
    tokens = text.as_tokens(reference)
    with torch.inference_mode():
        emb = text.embed(tokens)
    return float(emb[~_not_text(text, tokens, tokens.shape[1]).to(emb.device)].std())


def item_noise(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, "batch"], n_samples: int, d_model: int,
               seed: int) -> Float[Tensor, "samples batch pos d_model"]:
    """Standard normal noise per item, a function of (seed, the item's first ``lengths[b]`` token ids: its text
    up to EOT, padding left out) only: chunking, batch composition, padding and resuming cannot change an
    item's draws (identical sentences get identical noise). Positions after the text get zeros."""
    out = torch.zeros(n_samples, tokens.shape[0], tokens.shape[1], d_model)
    for b, (ids, n) in enumerate(zip(tokens.tolist(), lengths.tolist())):
        key = hashlib.sha256(f"rome-noise:{seed}:{ids[:n]}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))
        out[:, b, :n] = torch.randn(n_samples, n, d_model, generator=gen)
    return out


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
    source_model=None,
) -> RomeTraceResult:
    """ROME causal tracing: corrupt ``noise_positions`` of the token embeddings with Gaussian noise of std
    ``noise_scale * sigma`` (sigma = ``noise_std``, else the embedding std over ``reference``, else over
    ``tokens``), ``n_samples`` noise draws per example (a function of ``seed`` and the example's tokens only,
    see :func:`item_noise`), and restore one clean state at a time.

    ``kind="resid"`` restores the hidden state (l, p); ``"mlp"``/``"attn"`` restore the MLP/attention
    output at position p of the ``window`` blocks centred on block l (clipped at the ends), as in ROME.
    Runs on the batched engine: each restored (state, position) is a row started at its first restored
    block, with the noisy run's keys/values reused before position p in a causal tower.

    ``source_model``: another checkpoint of the same architecture whose clean states are restored into
    ``model``'s noisy runs (``clean`` is then its metric), e.g. a fine-tune's states into its base model.
    """
    text = get_tower(model, "text")
    clean_tower = source_tower(text, source_model)
    if kind not in ("resid", "mlp", "attn"):
        raise ValueError(f"kind must be 'resid', 'mlp' or 'attn', got {kind!r}.")
    for name, v in (("n_samples", n_samples), ("batch_size", batch_size), ("window", window)):
        check_count(name, v)
    toks = text.as_tokens(tokens)
    pool = text.pool_positions(toks)
    toks = toks[:, : int(pool.max()) + 1] if text.cfg.trims else toks
    n_ex, n_pos, n_layers = toks.shape[0], toks.shape[1], text.cfg.n_layers
    noise_mask = _noise_mask(noise_positions, n_ex, n_pos, pool).to(toks.device)
    sigma = noise_std if noise_std is not None else embedding_std(text, reference if reference is not None else toks)

    noise = item_noise(toks, text.input_lengths(toks), n_samples, text.cfg.d_model, seed) * (noise_scale * sigma)
    noise = (noise.to(toks.device, text.W_E.dtype) * noise_mask[None, :, :, None]).flatten(0, 1)  # [S*B, pos, d]

    def add_noise(embed, hook):
        return embed + noise

    rows_tok = toks.repeat(n_samples, 1)  # noisy row r = sample r // B of example r % B
    state_names = _state_names(kind, n_layers, window)
    restored = sorted({n for ns in state_names for n in ns})
    with torch.inference_mode():
        clean_out, clean_cache = clean_tower.run_with_cache(toks, return_type=return_type, names_filter=restored)
    noisy = BaseRun.record(text, rows_tok, return_type=return_type, prefix_reuse=text.cfg.trims,
                           extra_names=restored, hooks=[("hook_embed", add_noise)])
    clean_m = check_metric(metric, clean_out)
    corrupt_m = check_metric(metric, noisy.output.view(n_samples, n_ex, -1)).mean(0)

    n_rows = n_samples * n_ex
    scores = torch.empty(n_ex, len(state_names), n_pos)
    positions = torch.arange(n_pos, device=toks.device)
    for row, names in enumerate(tqdm(state_names, disable=not progress, desc=f"ROME tracing ({kind})")):
        # restoring changes something only where a restored state differs from the noisy one (never before
        # the first noised position) at or before the pooling position
        differs = torch.zeros(n_rows, n_pos, dtype=torch.bool, device=toks.device)
        for name in names:
            differs |= (clean_cache[name].repeat(n_samples, 1, 1) != noisy[name]).any(-1)
        if text.cfg.trims:
            differs &= positions[None, :] <= noisy.pool[:, None]
        row_idx, pos_idx = differs.nonzero(as_tuple=True)
        offset = pos_idx if text.cfg.trims else torch.zeros_like(pos_idx)
        plan = Plan(row_idx, torch.full_like(row_idx, _first_layer(names)), offset, pos_idx * n_rows + row_idx)
        hooks = _restore_hooks(names, clean_cache, n_ex, pos_idx)
        outputs = noisy.output.expand(n_pos, *noisy.output.shape).clone()  # [pos, noisy row, d]
        execute(text, noisy, plan, hooks, outputs, batch_size=batch_size, progress=False)
        metric_out = check_metric(metric, outputs.view(n_pos, n_samples, n_ex, -1))  # [pos, sample, ex]
        scores[:, row, :] = metric_out.mean(1).T.float().cpu()
    return RomeTraceResult(scores, clean_m.float().cpu(), corrupt_m.float().cpu(), kind, float(sigma),
                           tokens=str_tokens(text, toks))


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
        return [[hidden_state_name(l, n_layers)] for l in range(n_layers + 1)]
    out = "mlp_out" if kind == "mlp" else "attn_out"
    rows = []
    for layer in range(n_layers):  # ROME's clipping: range(max(0, l - w//2), min(L, l - (-w // 2)))
        rows.append([act_name(out, j) for j in range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))])
    return rows


def _first_layer(names: list[str]) -> int:
    return min(layer_of(n) for n in names)


def _restore_hooks(names: list[str], clean_cache, n_ex: int, row_pos: Tensor):
    """Hook factory: every row of a chunk restores, at each of ``names``, the clean state of its example at
    its position (``row_pos`` per plan row); all rows of a ROME map row start at the first restored block."""

    def hooks(chunk: Chunk) -> Hooks:
        idx = torch.arange(len(chunk.rows), device=chunk.rows.device)
        examples, pos = chunk.example % n_ex, row_pos[chunk.rows]
        return [(name, _restore_hook(clean_cache[name], idx, examples, pos, chunk.offset)) for name in names]

    return hooks


def _restore_hook(clean: Tensor, idx: Tensor, examples: Tensor, positions: Tensor, offset: Tensor):
    def hook(act, hook):
        act[idx, positions - offset] = clean[examples, positions]
        return act

    return hook
