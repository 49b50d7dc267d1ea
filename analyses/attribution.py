"""Direct similarity attribution and attribution patching.

**Direct similarity attribution** splits S(text, image) = logit_scale * cos(t, i) exactly into the
contributions of the embeddings, every head (z @ W_O), each layer's attention bias, every MLP and one
``bias`` row (ln_final's bias through the projection, plus the projection bias), holding two things at
their values in the run: the ``ln_final`` scale at the pooling position and the text-embedding norm |t|.
Given those, t is a sum of per-component terms and S is linear in t, so the rows sum to S (tested ≤1e-5).

**Attribution patching** (Nanda 2023) estimates every activation patch at once from one forward and one
backward of the run being patched plus one forward of the run the activations come from: the effect of
patching activation a is ≈ (a_source - a_base) · ∂metric/∂a at the base run. For queries and keys the
linear estimate through the softmax is poor, so (AtP*, Kramár et al. 2024) the attention pattern row(s)
a patched query or key changes are recomputed exactly and only the step after the pattern is linearised:
effect ≈ Σ ∂metric/∂pattern · (pattern_patched - pattern_base). Results are a :class:`PatchingResult`
with the same axes and meaning as :func:`hooked_clip.analyses.patching.activation_patch` (estimated metric of each
patched run), so the two compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hooked_clip.analyses.metrics import Metric, check_metric
from hooked_clip.analyses.pairs import Direction, RunPair, Tokens
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.validation import check_act_index, check_count
from hooked_clip.analyses.patching import INDEX_AXES, PATCHABLE, Index, PatchingResult, canonical_layout
from hooked_clip.names import HEAD_ACTS, act_name as hook_name
from hooked_clip.tower import get_tower
from hooked_clip.similarity import logit_parameters
from hooked_clip.text.readout import apply_ln_to_stack, decompose_resid, embedding_bias, ln_final_scale, to_embedding_space


@dataclass(repr=False)
class Attribution(CompactRepr):
    """``values`` [component, batch] (similarity logits), ``labels`` one per component, ``total`` [batch]
    the quantity split (``values.sum(0) == total``)."""

    values: Tensor
    labels: list[str]
    total: Tensor

    def to_dataframe(self):
        import pandas as pd

        comp, ex = torch.meshgrid(torch.arange(len(self.labels)), torch.arange(self.values.shape[1]), indexing="ij")
        return pd.DataFrame({"component": [self.labels[i] for i in comp.flatten().tolist()],
                             "example": ex.flatten().numpy(), "value": self.values.flatten().cpu().numpy()})


_DSA_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale")


@torch.no_grad()
def direct_attribution(model, texts: Tokens, directions: Float[Tensor, "batch d_proj"], *,
                       heads: bool = True) -> Attribution:
    """Split t · direction (t: the unnormalised text embedding) into components, ln_final scale frozen."""
    text = get_tower(model, "text")
    tokens = text.as_tokens(texts)
    keep = lambda name: name in _DSA_HOOKS or name.endswith(("hook_z", "hook_mlp_out", "hook_attn_out"))  # noqa: E731
    embeds, cache = text.run_with_cache(tokens, names_filter=keep)
    if directions.shape != embeds.shape:
        raise ValueError(f"directions must be [batch, d_proj] = {tuple(embeds.shape)}, got {tuple(directions.shape)}.")
    pool = text.pool_positions(tokens)
    stack, labels = decompose_resid(text, cache, pool, heads=heads)
    proj = to_embedding_space(text, apply_ln_to_stack(text, stack, ln_final_scale(cache, pool)))
    values = torch.cat([(proj * directions).sum(-1), (embedding_bias(text) * directions).sum(-1)[None]])
    return Attribution(values, labels + ["bias"], (embeds * directions).sum(-1))


def direct_similarity_attribution(model, texts: Tokens, image_embeds: Float[Tensor, "batch d_proj"], *,
                                  heads: bool = True) -> Attribution:
    """S(text_b, image_b) (logit_scale x cosine, + logit_bias) split exactly into per-component
    contributions, for each (text, image) pair; the ln_final scale and |t| are those of the run. A model
    with a ``logit_bias`` (SigLIP) gets a last ``"logit_bias"`` row."""
    text = get_tower(model, "text")
    with torch.no_grad():
        t = text(text.as_tokens(texts))
    if image_embeds.shape != t.shape:
        raise ValueError(f"image_embeds must be [batch, d_proj] = {tuple(t.shape)} (one image per text), got "
                         f"{tuple(image_embeds.shape)}.")
    scale, bias = logit_parameters(model)
    directions = scale * F.normalize(image_embeds.to(t), dim=-1) / t.norm(dim=-1, keepdim=True)
    out = direct_attribution(model, texts, directions, heads=heads)
    if bias is None:
        return out
    bias_row = bias.to(out.values).expand(1, out.values.shape[1])  # the model's logit_bias: its own row
    return Attribution(torch.cat([out.values, bias_row]), out.labels + ["logit_bias"], out.total + bias.to(out.total))


def direct_difference_attribution(model, captions: Tokens, foils: Tokens, image_embeds: Float[Tensor, "batch d_proj"], *,
                                  heads: bool = True) -> Attribution:
    """d = S(caption, image) - S(foil, image) split into per-component differences (each sentence with its
    own frozen ln scale and norm); rows sum to d."""
    c = direct_similarity_attribution(model, captions, image_embeds, heads=heads)
    f = direct_similarity_attribution(model, foils, image_embeds, heads=heads)
    return Attribution(c.values - f.values, c.labels, c.total - f.total)


# ------------------------------------------------------------------------------- attribution patching
def _differentiable(values: Tensor) -> Tensor:
    """The metric's values, if gradients can flow back through them to the activations."""
    if not values.requires_grad:
        raise ValueError(
            "the metric's output has no gradient (it detaches, goes through .item()/numpy/float(), or runs under "
            "torch.no_grad), so attribution patching cannot differentiate it; write it with torch operations on "
            "the embeddings, or use activation_patch, which needs no gradient."
        )
    return values


def attribution_patch(
    model,
    clean: Tokens,
    corrupt: Tokens,
    metric: Metric,
    act_name: str = "z",
    index: Index = "layer_head",
    *,
    direction: Direction = "denoise",
    atp_star: bool = True,
    ig_steps: int = 0,
    return_type: Literal["normalized", "embed", "pooled"] = "normalized",
    tower: Optional[Literal["text", "vision"]] = None,
) -> PatchingResult:
    """Estimated metric of every patch ``activation_patch`` would run, from two forwards and one backward
    (or, with ``ig_steps``, one batched forward and backward over the interpolation steps), on either tower.

    Args:
        clean / corrupt: texts or token ids, with the same pooling positions per example.
        metric: embeddings [batch, d_proj] -> [batch] (see ``hooked_clip.analyses.metrics``); must be differentiable.
        act_name / index: as in ``activation_patch`` (``pattern`` is estimated per query row).
        direction: ``denoise`` (run corrupt, patch clean) or ``noise`` (run clean, patch corrupt).
        atp_star: for ``q``/``k``, recompute the attention pattern exactly (AtP*); False gives plain AtP.
        ig_steps: 0 for AtP (the gradient at the base run). k > 0: the gradient averaged over k points on
            the straight path from the base run's token embeddings to the source run's (midpoint rule,
            α = (i + ½) / k), as in EAP-IG (Hanna et al., 2024). Plain AtP reads a gradient that is flat
            where a component acts through a threshold (a unit that fires only once the negation signal is
            strong): the estimate can then have the wrong sign. Not combined with AtP* (q/k need
            ``atp_star=False``).
        return_type: the output the metric reads, as in ``activation_patch``.
        tower: ``"text"`` (default) or ``"vision"`` (clean/corrupt are then images: PIL or pixels; the
            integrated gradients interpolate the patch embeddings), as in ``activation_patch``.

    Returns:
        :class:`PatchingResult`, ``values`` [*axes, batch] = base metric + estimated effect;
        ``extra["method"] == "attribution"``.
    """
    text = get_tower(model, tower)  # either tower: the name stays for the text-tower reader
    check_act_index(act_name, index, PATCHABLE, INDEX_AXES, HEAD_ACTS)
    check_count("ig_steps", ig_steps, minimum=0, what="0 = plain AtP")
    pair = RunPair.build(text, clean, corrupt, direction)
    embed_hook = text.input_embed_hook
    base_t, src_t = pair.base, pair.source
    L = text.cfg.n_layers
    star = atp_star and act_name in ("q", "k")
    if star and ig_steps:
        raise ValueError("ig_steps is not combined with AtP* (q/k); pass atp_star=False to integrate q/k gradients.")
    names = [hook_name(act_name, l) for l in range(L)]
    grad_names = [hook_name("pattern", l) for l in range(L)] if star else names
    extra_names = ([hook_name("q", l) for l in range(L)] + [hook_name("k", l) for l in range(L)]) if star else []

    cached = set(names) | {embed_hook}
    with torch.no_grad():
        src_embeds, src_cache = text.run_with_cache(src_t, return_type=return_type, names_filter=cached.__contains__)
        if ig_steps:
            base_embeds, base_cache = text.run_with_cache(base_t, return_type=return_type, names_filter=cached.__contains__)
            base_metric = check_metric(metric, base_embeds)
    acts: dict[str, Tensor] = {}

    def keep(act, hook):
        if hook.name in grad_names:
            act.retain_grad()
        acts[hook.name] = act
        return act

    def leaf(act, hook):  # makes every activation part of the graph, whatever the parameters' requires_grad
        if ig_steps:  # the k interpolation points, stacked on the batch axis
            alpha = (torch.arange(ig_steps, dtype=act.dtype, device=act.device) + 0.5) / ig_steps
            base_e, src_e = base_cache[embed_hook], src_cache[embed_hook]
            act = (base_e + alpha[:, None, None, None] * (src_e - base_e)).flatten(0, 1)
        return act.detach().requires_grad_(True)

    hooks = [(embed_hook, leaf)] + [(n, keep) for n in dict.fromkeys(grad_names + extra_names + names)]
    with torch.enable_grad():
        run_t = base_t.repeat(ig_steps, *[1] * (base_t.ndim - 1)) if ig_steps else base_t
        embeds = text.run_with_hooks(run_t, return_type=return_type, fwd_hooks=hooks)
        if ig_steps:
            check_metric(metric, embeds.view(ig_steps, -1, embeds.shape[-1])[0])  # shape check on one batch
            _differentiable(torch.cat([metric(e) for e in embeds.view(ig_steps, -1, embeds.shape[-1])])).sum().backward()
        else:
            base_metric = check_metric(metric, embeds)
            _differentiable(base_metric).sum().backward()
    base_metric = base_metric.detach()
    with torch.no_grad():
        src_metric = check_metric(metric, src_embeds)
        per_layer = []
        for l in range(L):
            if star:
                per_layer.append(_atp_star_qk(text, l, act_name, acts, src_cache[names[l]], text.key_mask(base_t)))
            else:
                name = names[l]
                if ig_steps:
                    base_act = base_cache[name]
                    grad = acts[name].grad.view(ig_steps, *base_act.shape).mean(0)
                else:
                    base_act, grad = acts[name].detach(), acts[name].grad
                delta = canonical_layout(src_cache[name] - base_act, act_name) * canonical_layout(grad, act_name)
                per_layer.append(delta.sum(-1))  # [b, pos] or [b, pos, head]
        effect = torch.stack(per_layer)  # [L, b, pos(, head)]
        if effect.ndim == 3:
            effect = effect.unsqueeze(-1)  # positional act: a single "head" axis to sum away
        axes = INDEX_AXES[index]
        if "pos" not in axes:
            effect = effect.sum(2, keepdim=True)
        if "head" not in axes:
            effect = effect.sum(3, keepdim=True)
        # [L, b, pos', head'] -> [L, (pos,) (head,), b]
        effect = effect.permute(0, 2, 3, 1)
        if "head" not in axes:
            effect = effect.squeeze(2)
        if "pos" not in axes:
            effect = effect.squeeze(1)
    width = canonical_layout(src_cache[names[0]], act_name).shape[1]  # positions the runs computed
    labels = {"layer": list(range(L)), "pos": list(range(width)), "head": list(range(text.cfg.n_heads))}
    clean_m, corrupt_m = (m.detach().float().cpu() for m in pair.clean_and_corrupt(base_metric, src_metric))
    values = (base_metric + effect).detach().float().cpu()  # on the CPU, as activation_patch's
    return PatchingResult(values, axes, {a: labels[a] for a in axes}, act_name, direction,
                          clean_m, corrupt_m, extra={"method": "attribution", "atp_star": star, "ig_steps": ig_steps},
                          tokens=pair.str_tokens(text) if "pos" in axes else None)


def _atp_star_qk(text, layer: int, act_name: str, acts: dict, src: Tensor,
                 key_mask: Optional[Tensor]) -> Float[Tensor, "batch pos head"]:
    """AtP* for queries/keys of one layer: exact pattern change of each patched query row / key column,
    times ∂metric/∂pattern. ``src``: the source run's q or k [batch, pos, head, d_head]; ``key_mask``: the
    base run's padding (its keys stay unread)."""
    attn = text.blocks[layer].attn
    q = acts[hook_name("q", layer)].detach()
    k = acts[hook_name("k", layer)].detach()
    pattern_name = hook_name("pattern", layer)
    pattern, grad = acts[pattern_name].detach(), acts[pattern_name].grad  # [b, head, q, k]

    def pattern_of(scores):  # the tower's own masks and softmax
        scores = attn.apply_causal_mask(scores)
        return attn.calculate_pattern(scores if key_mask is None else attn.apply_key_mask(scores, key_mask))

    if act_name == "q":  # each query row depends only on its own query: all positions at once
        new = pattern_of(attn.calculate_attention_scores(src, k))
        return ((new - pattern) * grad).sum(-1).permute(0, 2, 1)  # [b, pos, head]
    scores = attn.calculate_attention_scores(q, k)
    column = attn.calculate_attention_scores(q, src)  # scores if key k were patched
    n = q.shape[1]
    out = torch.empty(q.shape[0], n, q.shape[2], device=q.device, dtype=q.dtype)
    for p in range(n):
        patched = scores.clone()
        patched[..., p] = column[..., p]
        out[:, p] = ((pattern_of(patched) - pattern) * grad).sum((-1, -2))
    return out


__all__ = ["Attribution", "attribution_patch", "direct_attribution", "direct_difference_attribution",
           "direct_similarity_attribution"]
