"""The one owner of similarity: ``logit_scale.exp() * cos(text, image) (+ logit_bias)``, in logit units
(100 x cosine for OpenAI CLIP; SigLIP-family models add their ``logit_bias``). ``HookedCLIP.similarity``,
the metrics, the lens, attribution and the study all call these two functions."""

from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

Scalar = Union[float, Tensor]


def similarity(
    text_embeds: Float[Tensor, "... n_text d_proj"],
    image_embeds: Float[Tensor, "n_image d_proj"],
    logit_scale: Scalar = 1.0,
    logit_bias: Optional[Scalar] = None,
) -> Float[Tensor, "... n_text n_image"]:
    """Every text with every image: ``logit_scale * cos + logit_bias``. ``logit_scale`` is the factor
    itself (``exp`` of the stored log-scale), not its log. Inputs need not be normalised."""
    _check_widths(text_embeds, image_embeds)
    logits = logit_scale * F.normalize(text_embeds, dim=-1) @ F.normalize(image_embeds.to(text_embeds), dim=-1).T
    return logits if logit_bias is None else logits + logit_bias


def paired_similarity(
    text_embeds: Float[Tensor, "... batch d_proj"],
    image_embeds: Float[Tensor, "batch d_proj"],
    logit_scale: Scalar = 1.0,
    logit_bias: Optional[Scalar] = None,
) -> Float[Tensor, "... batch"]:
    """Row by row: text b with image b (broadcast over leading dimensions of ``text_embeds``)."""
    if image_embeds.ndim != 2 or text_embeds.shape[-2:] != image_embeds.shape:
        raise ValueError(
            f"text embeddings [..., batch, d] = {tuple(text_embeds.shape)} do not pair row by row with image "
            f"embeddings {tuple(image_embeds.shape)}; pass one image embedding per example."
        )
    cos = (F.normalize(text_embeds, dim=-1) * F.normalize(image_embeds.to(text_embeds), dim=-1)).sum(-1)
    logits = logit_scale * cos
    return logits if logit_bias is None else logits + logit_bias


def _check_widths(text_embeds: Tensor, image_embeds: Tensor) -> None:
    for name, t in (("text_embeds", text_embeds), ("image_embeds", image_embeds)):
        if not isinstance(t, Tensor) or t.ndim < 2:
            raise ValueError(f"{name} must be a [n, d_proj] tensor, got {getattr(t, 'shape', type(t))}.")
    if image_embeds.ndim != 2:
        raise ValueError(f"image_embeds must be [n_image, d_proj], got {tuple(image_embeds.shape)}.")
    if text_embeds.shape[-1] != image_embeds.shape[-1]:
        raise ValueError(f"text_embeds have width {text_embeds.shape[-1]} but image_embeds {image_embeds.shape[-1]}.")


def logit_parameters(model) -> tuple[Tensor, Optional[Tensor]]:
    """(scale factor, bias or None) of a ``HookedCLIP``, detached: what similarities are computed with."""
    if getattr(model, "logit_scale", None) is None:
        raise ValueError("this model has no logit_scale (text-only checkpoint); pass the scale (e.g. 100.0) "
                         "instead of the model, or compare embeddings by cosine.")
    bias = getattr(model, "logit_bias", None)
    return model.logit_scale.detach().exp(), None if bias is None else bias.detach()


__all__ = ["logit_parameters", "paired_similarity", "similarity"]
