"""Image-side analyses that need no patching engine: the image embedding decomposed exactly (Gandelsman et
al. 2024, "Interpreting CLIP's Image Representation via Text-Based Decomposition"), direct similarity
attribution over layer x head x patch position, its mean-ablation-of-earlier-layers variant, the
mean-image layer ablation as hooks, and circuitsvis attention over patches.

**Decomposition.** With the ``ln_post`` scale frozen at its value in the run, the (unnormalised) image
embedding is a sum of per-component vectors in embedding space: the residual entering block 0
(``embed``), every head's write through every source position (pattern[q, p] * v[p] @ W_O, read at the
pooled positions q), each layer's attention bias b_O and MLP, and one ``bias`` (``ln_post``'s bias through
the projection, plus the projection bias). :func:`decompose_image` returns them and they sum to
``hook_image_embed`` (tested ≤1e-5). Pooling ``"cls"`` reads position 0; ``"avg"`` averages the patch
positions (each with its own frozen scale when ``ln_post`` comes before the pooling). SigLIP's
attention-pooling head is not linear in the residual, so towers with ``pooling="attn"`` are refused.

**Similarity.** :func:`image_similarity_attribution` dots every component with
``exp(logit_scale) * t / |t| / |i|`` (``|i|`` frozen too), so the rows sum to S(text, image) =
``model.similarity`` (the ``bias`` row also carries ``logit_bias`` where the model has one).

**Mean ablation of earlier layers.** :meth:`ImageDecomposition.mean_ablate_before` replaces the direct
contributions of the embeddings and of every layer before ``layer`` by their mean over a reference set of
images, as Gandelsman et al. do to show that the late layers carry the direct effect; the ablated
embedding is the new sum, and similarity attribution of it sums to S(text, ablated embedding).

Layers are 0-indexed (``blocks.3`` is the 4th block).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hooked_clip.analyses.attribution import Attribution
from hooked_clip.analyses.engine import Hooks
from hooked_clip.analyses.results import CompactRepr
from hooked_clip.names import act_name, attn_bias_label, head_label, mlp_label
from hooked_clip.similarity import logit_parameters
from hooked_clip.tower import Tower, get_tower



@dataclass(repr=False)
class ImageDecomposition(CompactRepr):
    """The unnormalised image embedding [batch, d_proj] split into components (embedding space).

    ``embed`` [batch, d_proj]; ``heads`` [batch, layer, head, pos, d_proj] (pos = the source position
    the head reads); ``attn_bias`` and ``mlp`` [batch, layer, d_proj]; ``bias`` [d_proj] (no component
    writes it); ``image_embed`` [batch, d_proj] the tower's output in the run. :meth:`total` sums them.
    """

    embed: Tensor
    heads: Tensor
    attn_bias: Tensor
    mlp: Tensor
    bias: Tensor
    image_embed: Tensor

    def total(self) -> Float[Tensor, "batch d_proj"]:
        """The sum of every component (equals ``image_embed`` up to float rounding, unless ablated)."""
        return self.embed + self.heads.sum((1, 2, 3)) + self.attn_bias.sum(1) + self.mlp.sum(1) + self.bias

    def per_layer(self) -> Float[Tensor, "batch layer d_proj"]:
        """Each layer's direct contribution (its heads, attention bias and MLP)."""
        return self.heads.sum((2, 3)) + self.attn_bias + self.mlp

    def mean_ablate_before(self, layer: int, reference: "ImageDecomposition") -> "ImageDecomposition":
        """The embeddings' and layers ``< layer``'s contributions replaced by their mean over the reference
        images (Gandelsman et al.'s mean ablation of the early layers' direct effect)."""
        n_layers = self.mlp.shape[1]
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer must lie in 0..{n_layers} (0 ablates only the embeddings), got {layer}.")
        if reference.heads.shape[1:] != self.heads.shape[1:]:
            raise ValueError("the reference decomposition comes from a different tower (shapes differ).")
        def ablate(own: Tensor, ref: Tensor, per_layer: bool) -> Tensor:
            mean = ref.mean(0, keepdim=True).expand_as(own)
            if not per_layer:
                return mean.clone()
            out = own.clone()
            out[:, :layer] = mean[:, :layer]
            return out

        new = replace(self, embed=ablate(self.embed, reference.embed, False),
                      heads=ablate(self.heads, reference.heads, True),
                      attn_bias=ablate(self.attn_bias, reference.attn_bias, True),
                      mlp=ablate(self.mlp, reference.mlp, True))
        new.image_embed = new.total()
        return new


@dataclass(repr=False)
class ImageSimilarityAttribution(CompactRepr):
    """S(text_b, image_b) split exactly: ``embed`` [batch], ``heads`` [batch, layer, head, pos],
    ``attn_bias`` and ``mlp`` [batch, layer], ``bias`` [batch] (incl. ``logit_bias``); ``total`` [batch] is the
    similarity these sum to."""

    embed: Tensor
    heads: Tensor
    attn_bias: Tensor
    mlp: Tensor
    bias: Tensor
    total: Tensor

    def sum(self) -> Float[Tensor, "batch"]:
        return self.embed + self.heads.sum((1, 2, 3)) + self.attn_bias.sum(1) + self.mlp.sum(1) + self.bias

    def per_layer(self) -> Float[Tensor, "batch layer"]:
        """Each layer's direct contribution to the similarity."""
        return self.heads.sum((2, 3)) + self.attn_bias + self.mlp

    def as_attribution(self) -> Attribution:
        """The same numbers as the text side's :class:`Attribution` (one row per component, labels
        ``embed``, ``L{l}H{h}P{p}``, ``L{l}_attn_bias``, ``L{l}_mlp``, ``bias``)."""
        _, n_layers, n_heads, n_pos = self.heads.shape
        rows, labels = [self.embed[None]], ["embed"]
        for l in range(n_layers):
            rows.append(self.heads[:, l].reshape(self.heads.shape[0], -1).T)
            labels += [f"{head_label(l, h)}P{p}" for h in range(n_heads) for p in range(n_pos)]
            rows += [self.attn_bias[None, :, l], self.mlp[None, :, l]]
            labels += [attn_bias_label(l), mlp_label(l)]
        rows.append(self.bias[None])
        return Attribution(torch.cat(rows), labels + ["bias"], self.total)


def _pool_weights(vision: Tower, cache) -> Float[Tensor, "batch pos"]:
    """a[b, q]: how much the residual at position q enters the pooled vector, divided by the frozen
    ``ln_post`` scale that applies to it (zero for positions that are not pooled)."""
    cfg = vision.cfg
    scale = cache["ln_post.hook_scale"][..., 0]  # [batch, pos] or [batch]
    batch = scale.shape[0]
    a = torch.zeros(batch, cfg.n_ctx, dtype=scale.dtype, device=scale.device)
    if cfg.pooling == "cls":
        a[:, 0] = 1.0
    else:
        a[:, cfg.first_patch:] = 1.0 / cfg.n_patches
    return a / (scale[:, None] if cfg.final_ln_after_pool else scale)


@torch.no_grad()
def decompose_image(model, images: Any) -> ImageDecomposition:
    """The image embedding of each image split exactly into components (see the module docstring)."""
    vision = get_tower(model, "vision")
    cfg = vision.cfg
    if cfg.pooling == "attn":
        raise ValueError("this tower pools with an attention head (SigLIP), which is not linear in the residual "
                         "stream, so the embedding has no exact per-component split; use activation patching.")
    if cfg.d_proj is None:
        raise ValueError("this tower has no projection; decompose the pooled vector (hook_pooled) instead.")
    pixels = vision.as_pixels(images)
    keep = lambda n: n in (act_name("resid_pre", 0), "ln_post.hook_scale", "hook_image_embed") or n.endswith(  # noqa: E731
        ("attn.hook_pattern", "attn.hook_v", "hook_mlp_out"))
    image_embed, cache = vision.run_with_cache(pixels, names_filter=lambda n: keep(n) and not n.startswith("head."))
    a = _pool_weights(vision, cache)  # [batch, pos]
    write = vision.ln_post.w[:, None] * vision.W_proj  # [d_model, d_proj]: centre, scale by a, then this

    def to_embed(x: Tensor) -> Tensor:  # [..., d_model] already weighted by a -> embedding space
        return (x - x.mean(-1, keepdim=True)) @ write

    def pooled(act: Tensor) -> Tensor:  # [batch, pos, d_model] -> [batch, d_model] (weighted by a)
        return torch.einsum("bq,bqm->bm", a, act)

    heads, mlps = [], []
    for l, block in enumerate(vision.blocks):
        pattern, v = cache[act_name("pattern", l)], cache[act_name("v", l)]
        weighted = torch.einsum("bq,bhqp,bphd->bhpd", a, pattern, v)  # [batch, head, src pos, d_head]
        heads.append(to_embed(torch.einsum("bhpd,hdm->bhpm", weighted, block.attn.W_O)))
        mlps.append(to_embed(pooled(cache[act_name("mlp_out", l)])))
    a_sum = a.sum(-1, keepdim=True)  # [batch, 1]
    attn_bias = torch.stack([to_embed(a_sum * b.attn.b_O) for b in vision.blocks], dim=1)
    bias = vision.ln_post.b @ vision.W_proj
    if vision.b_proj is not None:
        bias = bias + vision.b_proj
    return ImageDecomposition(embed=to_embed(pooled(cache[act_name("resid_pre", 0)])), heads=torch.stack(heads, 1),
                              attn_bias=attn_bias, mlp=torch.stack(mlps, 1), bias=bias, image_embed=image_embed)


@torch.no_grad()
def image_similarity_attribution(model, decomposition: ImageDecomposition,
                                 text_embeds: Float[Tensor, "batch d_proj"]) -> ImageSimilarityAttribution:
    """S(text_b, image_b) = ``model.similarity`` split into the components of ``decomposition`` (one text
    per image; ``|t|`` and the image-embedding norm frozen at their values)."""
    d = decomposition
    if text_embeds.shape != d.image_embed.shape:
        raise ValueError(f"text_embeds must be [batch, d_proj] = {tuple(d.image_embed.shape)} (one text per image), "
                         f"got {tuple(text_embeds.shape)}.")
    if getattr(model, "logit_scale", None) is None:
        raise ValueError("similarity attribution needs the model (HookedCLIP) for its logit_scale, not the tower alone.")
    scale, logit_bias = logit_parameters(model)  # the similarity's own parameters (hooked_clip.similarity)
    direction = scale * F.normalize(text_embeds.to(d.image_embed), dim=-1)
    direction = direction / d.image_embed.norm(dim=-1, keepdim=True)  # [batch, d_proj]
    dot = lambda x, extra="": torch.einsum(f"b{extra}e,be->b{extra}", x, direction)  # noqa: E731
    bias = (d.bias * direction).sum(-1)
    if logit_bias is not None:
        bias = bias + logit_bias
    total = model.similarity(text_embeds, d.image_embed).diagonal()
    return ImageSimilarityAttribution(embed=dot(d.embed), heads=dot(d.heads, "lhp"), attn_bias=dot(d.attn_bias, "l"),
                                      mlp=dot(d.mlp, "l"), bias=bias, total=total)


# ----------------------------------------------------------------------------------------------- ablation
_LAYER_PARTS = {"out": ("attn_out", "mlp_out"), "attn": ("attn_out",), "mlp": ("mlp_out",),
                "resid_post": ("resid_post",)}


@torch.no_grad()
def mean_image_ablation(model, reference_images: Any, layers: Sequence[int],
                        part: Literal["out", "attn", "mlp", "resid_post"] = "out") -> Hooks:
    """Hooks replacing each layer's output by its mean (per position) over ``reference_images``, for
    ``model.vision.hooks(fwd_hooks=...)`` / ``run_with_hooks``: the image-tower layer ablation with a mean
    image. ``part``: ``"out"`` = the block's writes to the residual (attention and MLP output), ``"attn"`` /
    ``"mlp"`` one of them, ``"resid_post"`` the whole residual after the block. Layers are 0-indexed."""
    vision = get_tower(model, "vision")
    if part not in _LAYER_PARTS:
        raise ValueError(f"part must be one of {tuple(_LAYER_PARTS)}, got {part!r}.")
    layers = [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < vision.cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or '[]'} invalid: blocks are 0..{vision.cfg.n_layers - 1}.")
    names = [act_name(kind, l) for l in layers for kind in _LAYER_PARTS[part]]
    _, cache = vision.run_with_cache(vision.as_pixels(reference_images), names_filter=names)
    means = {name: cache[name].mean(0, keepdim=True) for name in names}

    def hook(act: Tensor, hook) -> Tensor:
        return means[hook.name].to(act).expand_as(act)

    return [(name, hook) for name in names]


# -------------------------------------------------------------------------------------------- attention
def patch_attention_html(model, image: Any, layer: int) -> str:
    """Self-contained HTML (circuitsvis ``local_src``, no CDN) of every head's attention in ``layer`` over
    the positions of one image (labels ``CLS``, ``r{row}c{col}``)."""
    import circuitsvis.attention as cv

    vision = get_tower(model, "vision")
    if not 0 <= layer < vision.cfg.n_layers:
        raise ValueError(f"layer must lie in 0..{vision.cfg.n_layers - 1}, got {layer}.")
    pixels = vision.as_pixels(image)
    if pixels.shape[0] != 1:
        raise ValueError(f"patch_attention_html shows one image; got a batch of {pixels.shape[0]}.")
    name = act_name("pattern", layer)
    with torch.no_grad():
        _, cache = vision.run_with_cache(pixels, names_filter=name)
    return cv.attention_patterns(tokens=vision.position_labels(), attention=cache[name][0]).local_src
