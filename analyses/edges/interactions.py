"""Which words interact with which image regions: text-token x image-patch interactions of one
(text, image) pair, in one call.

The *exact* interaction of token p and patch q is joint patching: replace token p's embedding by the
reference's and patch q's by the reference image's, together, minus each alone,

    I(p, q) = S(t^{p}, i^{q}) - S(t^{p}, i) - S(t, i^{q}) + S(t, i),

(``t^{p}``: the text with token p replaced). ``method="exact"`` computes it for every (p, q): S = scale x
cos(t, i) (+ bias) is bilinear in the two *normalised* embeddings, so I(p, q) = scale x (F_t(t^p) - F_t(t)) ·
(F_i(i^q) - F_i(i)) exactly, and P + Q patched forwards give every pair.

``method="integrated"`` is the second-order attribution of Möller et al. (TMLR 2025): integrated Jacobians of
each tower (the Jacobian of the normalised embedding, averaged over ``steps`` points on the straight path from
the reference embeddings to the input's, midpoint rule), contracted with each position's change:
c_t[p] = ∫ J_t[:, p] (x_p - r_p) dα, and A(p, q) = scale x c_t[p] · c_i[q]. Its terms add up to the interaction
of the whole text with the whole image, S(t, i) - S(r_t, i) - S(t, r_i) + S(r_t, r_i) (up to the midpoint
rule's error), which the exact per-pair values do not; each A(p, q) is an *estimate* of I(p, q) (to first
order in each position's change).

References: ``text_reference`` a text of the same token length (None: a zero token embedding at every
position), ``image_reference`` an image (None: a zero patch embedding, the class and position embeddings
kept). Positions: every text position up to the pooled one (start and end tokens included); every patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import Tensor

from hooked_clip.analyses.results import CompactRepr
from hooked_clip.analyses.validation import check_count
from hooked_clip.similarity import logit_parameters
from hooked_clip.tower import get_tower


@dataclass(repr=False)
class Interactions(CompactRepr):
    """``values`` [text_pos, patch] in logits; ``tokens`` the text's token strings; ``grid`` the patch grid
    (rows, cols); ``total`` the whole text x whole image interaction; ``method`` ``"exact"`` / ``"integrated"``."""

    values: Tensor
    tokens: Optional[list]
    grid: tuple
    total: float
    method: str
    extra: dict = field(default_factory=dict)

    def map(self, pos: int) -> Tensor:
        """Token ``pos``'s interactions laid out as the image [rows, cols]."""
        return self.values[pos].view(*self.grid)

    def to_dataframe(self):
        import pandas as pd

        n_pos, n_patch = self.values.shape
        cols = self.grid[1]
        return pd.DataFrame({"pos": [p for p in range(n_pos) for _ in range(n_patch)],
                             "token": [self.tokens[p] if self.tokens else "" for p in range(n_pos) for _ in range(n_patch)],
                             "patch": list(range(n_patch)) * n_pos,
                             "row": [q // cols for q in range(n_patch)] * n_pos,
                             "col": [q % cols for q in range(n_patch)] * n_pos,
                             "interaction": self.values.flatten().numpy(), "method": self.method})


def token_patch_interactions(model, text, image, *, text_reference=None, image_reference=None,
                             method: Literal["integrated", "exact"] = "integrated",
                             steps: int = 16) -> Interactions:
    """Interactions of every text token with every image patch for ONE (text, image) pair (see the module
    docstring): ``values`` [text position, patch] in logits."""
    if method not in ("integrated", "exact"):
        raise ValueError(f"method must be 'integrated' or 'exact', got {method!r}.")
    check_count("steps", steps, what="integration points")
    text_tw, image_tw = get_tower(model, "text"), get_tower(model, "vision")
    ids = text_tw.as_input(text)
    pixels = image_tw.as_input(image)
    if ids.shape[0] != 1 or pixels.shape[0] != 1:
        raise ValueError(f"give one text and one image (got {ids.shape[0]} texts and {pixels.shape[0]} images); "
                         "the interactions of a pair are a [token, patch] map.")
    pool = text_tw.pool_positions(ids)
    n_pos = ids.shape[1] if pool is None else int(pool[0]) + 1
    ids = ids[:, :n_pos] if getattr(text_tw.cfg, "trims", False) else ids
    x_t, r_t = _embeds(text_tw, ids, text_reference, "text_reference")
    x_i, r_i = _embeds(image_tw, pixels, image_reference, "image_reference")
    scale, _ = logit_parameters(model)
    with torch.no_grad():
        f_t, f_i = _encode(text_tw, ids, x_t), _encode(image_tw, pixels, x_i)
        g_t, g_i = _encode(text_tw, ids, r_t), _encode(image_tw, pixels, r_i)
    total = float(scale * ((f_t - g_t) @ (f_i - g_i)))
    if method == "exact":
        c_t = _patched(text_tw, ids, x_t, r_t, n_pos) - f_t  # [P, d_proj]
        c_i = _patched(image_tw, pixels, x_i, r_i, x_i.shape[1]) - f_i
    else:
        c_t = _integrated(text_tw, ids, x_t, r_t, n_pos, steps)
        c_i = _integrated(image_tw, pixels, x_i, r_i, x_i.shape[1], steps)
    values = (scale.to(c_t) * c_t @ c_i.T).detach().float().cpu()
    g = image_tw.cfg.grid_size
    tokens = text_tw.to_str_tokens(ids[0])[:n_pos] if hasattr(text_tw, "to_str_tokens") else None
    return Interactions(values, tokens, (g, g), total, method, extra={"steps": steps if method == "integrated" else 0})


def _embeds(tw, inputs: Tensor, reference, what: str) -> tuple[Tensor, Tensor]:
    """The input's own embedding [1, pos, d] and the reference's (zeros when None)."""
    with torch.no_grad():
        _, cache = tw.run_with_cache(inputs, names_filter=[tw.input_embed_hook])
        x = cache[tw.input_embed_hook]
        if reference is None:
            return x, torch.zeros_like(x)
        ref = tw.as_input(reference)
        pool, ref_pool = tw.pool_positions(inputs), tw.pool_positions(ref)
        if pool is not None and (ref_pool.shape != pool.shape or not torch.equal(ref_pool, pool)):
            raise ValueError(f"{what} must have the input's shape (positions correspond one to one): it is pooled at "
                             f"position {ref_pool.tolist()}, the input at {pool.tolist()}; give a reference of the same "
                             "token length.")
        ref = ref[:, : inputs.shape[1]] if ref.ndim == 2 else ref
        _, ref_cache = tw.run_with_cache(ref, names_filter=[tw.input_embed_hook])
        r = ref_cache[tw.input_embed_hook]
    if r.shape != x.shape:
        raise ValueError(f"{what} must have the input's shape (positions correspond one to one): its embedding is "
                         f"{tuple(r.shape)}, the input's {tuple(x.shape)}.")
    return x, r


def _encode(tw, inputs: Tensor, embeds: Tensor) -> Tensor:
    """Normalised embeddings [n, d_proj] of the input with its own embedding replaced by ``embeds`` [n, pos, d]."""
    run = inputs.expand(embeds.shape[0], *inputs.shape[1:])
    out = tw.run_with_hooks(run, return_type="normalized", fwd_hooks=[(tw.input_embed_hook, lambda act, hook: embeds)])
    return out if embeds.shape[0] > 1 else out[0]


@torch.no_grad()
def _patched(tw, inputs: Tensor, x: Tensor, r: Tensor, n: int) -> Tensor:
    """[n, d_proj]: the normalised embedding with position p (row p) set to the reference's."""
    eye = torch.eye(n, x.shape[1], dtype=torch.bool, device=x.device)[..., None]  # [n, pos, 1]
    return _encode(tw, inputs, torch.where(eye, r, x))


def _integrated(tw, inputs: Tensor, x: Tensor, r: Tensor, n: int, steps: int) -> Tensor:
    """[n, d_proj]: c[p] = mean over the path of J[:, p] (x_p - r_p), by Jacobian-vector products (the
    double-backward trick: J v = ∂/∂u (u^T J) v), all positions and steps as one batch."""
    alpha = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    points = (r + alpha[:, None, None] * (x - r)).repeat_interleave(n, 0)  # [steps * n, pos, d]: step-major
    mask = torch.eye(n, x.shape[1], dtype=x.dtype, device=x.device)[..., None]  # [n, pos, 1]
    tangent = (mask * (x - r)).repeat(steps, 1, 1)
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        out = _encode(tw, inputs, points)
        u = torch.zeros_like(out, requires_grad=True)
        (vjp,) = torch.autograd.grad(out, points, grad_outputs=u, create_graph=True)
        (jvp,) = torch.autograd.grad(vjp, u, grad_outputs=tangent)
    return jvp.view(steps, n, -1).mean(0).detach()


__all__ = ["Interactions", "token_patch_interactions"]
