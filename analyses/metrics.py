"""Standard metrics. Every metric maps text embeddings [..., batch, d_proj] to one number per example
[..., batch], broadcasting over leading dimensions so that sweeps evaluate many patched variants in one
call; none calls ``.item()``.

Units: similarities are in logits (``logit_scale.exp() * cosine``; 100 x cosine for OpenAI CLIP).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from hooked_clip.similarity import logit_parameters, paired_similarity

Metric = Callable[[Float[Tensor, "... batch d_proj"]], Float[Tensor, "... batch"]]


def _logit_parameters(model_or_scale) -> tuple[Tensor, Optional[Tensor]]:
    """(scale, bias): a model's own (``hooked_clip.similarity.logit_parameters``), or a bare scale number."""
    if isinstance(model_or_scale, (int, float)) and not isinstance(model_or_scale, bool):
        return torch.tensor(float(model_or_scale)), None
    if isinstance(model_or_scale, Tensor):
        return model_or_scale.detach(), None
    return logit_parameters(model_or_scale)


def similarity_metric(model_or_scale, image_embeds: Float[Tensor, "batch d_proj"]) -> Metric:
    """Metric: S(text_b, image_b) in logits, one image per example. ``model_or_scale`` is a ``HookedCLIP``
    (its own similarity: ``logit_scale.exp() * cos`` + ``logit_bias`` where it has one) or a scale number.
    S is symmetric, so for image-side patching pass the fixed *text* embeddings here: the metric then maps
    patched image embeddings to S(text_b, image_b)."""
    scale, bias = _logit_parameters(model_or_scale)
    image_embeds = image_embeds.detach()

    def metric(text_embeds: Tensor) -> Tensor:
        dev = text_embeds.device
        return paired_similarity(text_embeds, image_embeds.to(dev), scale.to(dev), None if bias is None else bias.to(dev))

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
