"""Standard metrics. Every metric maps text embeddings [..., batch, d_proj] to one number per example
[..., batch], broadcasting over leading dimensions so that sweeps evaluate many patched variants in one
call; none calls ``.item()``.

Units: similarities are in logits (``logit_scale.exp() * cosine``; 100 x cosine for OpenAI CLIP).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

Metric = Callable[[Float[Tensor, "... batch d_proj"]], Float[Tensor, "... batch"]]


def _scale(model_or_scale) -> Tensor:
    if isinstance(model_or_scale, (int, float)):
        return torch.tensor(float(model_or_scale))
    if isinstance(model_or_scale, Tensor):
        return model_or_scale
    scale = getattr(model_or_scale, "logit_scale", None)
    if scale is None:
        raise ValueError("this model has no logit_scale; pass the scale (e.g. 100.0) instead of the model.")
    return scale.detach().exp()


def paired_similarity(
    text_embeds: Float[Tensor, "... batch d_proj"],
    image_embeds: Float[Tensor, "batch d_proj"],
    scale: Union[float, Tensor] = 1.0,
) -> Float[Tensor, "... batch"]:
    """``scale * cos(text_b, image_b)`` for each example b (row-wise, not all-pairs)."""
    if text_embeds.shape[-2:] != image_embeds.shape:
        raise ValueError(
            f"text embeddings [..., batch, d] = {tuple(text_embeds.shape)} do not pair row by row with image "
            f"embeddings {tuple(image_embeds.shape)}; pass one image embedding per example."
        )
    cos = (F.normalize(text_embeds, dim=-1) * F.normalize(image_embeds, dim=-1)).sum(-1)
    return scale * cos


def similarity_metric(model_or_scale, image_embeds: Float[Tensor, "batch d_proj"]) -> Metric:
    """Metric: S(text_b, image_b) in logits, one image per example. ``model_or_scale`` is a ``HookedCLIP``
    (its ``logit_scale.exp()`` is used) or a number."""
    scale = _scale(model_or_scale)
    image_embeds = image_embeds.detach()

    def metric(text_embeds: Tensor) -> Tensor:
        return paired_similarity(text_embeds, image_embeds.to(text_embeds.device), scale.to(text_embeds.device))

    return metric


def similarity_difference(
    caption_embeds: Float[Tensor, "... batch d_proj"],
    foil_embeds: Float[Tensor, "... batch d_proj"],
    image_embeds: Float[Tensor, "batch d_proj"],
    scale: Union[float, Tensor] = 1.0,
) -> Float[Tensor, "... batch"]:
    """The VALSE score d = S(caption, image) - S(foil, image), per example (positive = correct)."""
    return paired_similarity(caption_embeds, image_embeds, scale) - paired_similarity(foil_embeds, image_embeds, scale)


def cosine_to_target(target_embeds: Float[Tensor, "batch d_proj"]) -> Metric:
    """Metric: cosine of each output embedding with a fixed target embedding per example."""
    target = target_embeds.detach()

    def metric(text_embeds: Tensor) -> Tensor:
        return paired_similarity(text_embeds, target.to(text_embeds.device))

    return metric


def normalized_patching_metric(
    patched: Float[Tensor, "... batch"], clean: Float[Tensor, "batch"], corrupt: Float[Tensor, "batch"]
) -> Float[Tensor, "... batch"]:
    """(patched - corrupt) / (clean - corrupt): 0 = no effect of the patch, 1 = the patch alone restores the
    clean value. Examples with clean == corrupt give NaN (the ratio is undefined), never a silent 0 or inf."""
    gap = clean - corrupt
    safe = torch.where(gap == 0, torch.ones_like(gap), gap)
    return torch.where(gap == 0, torch.full_like(gap, float("nan")), (patched - corrupt) / safe)


def check_metric(metric: Metric, embeds: Tensor, what: str = "metric") -> Tensor:
    """Call ``metric`` and insist on one value per example: [..., batch, d] -> [..., batch]."""
    out = metric(embeds)
    expected = tuple(embeds.shape[:-1])
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{what} must map embeddings {tuple(embeds.shape)} to one value per example, shape {expected}; "
            f"got {got}. Write it to broadcast over leading dimensions and not to reduce over the batch "
            "(e.g. use hooked_clip.analyses.metrics.similarity_metric)."
        )
    return out
