"""The reference image tower: a wrapped HF or open_clip vision model with its preprocessing (not hooked)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn


class VisionTower(nn.Module):
    """Images -> image embeddings [batch, d_proj] (unnormalised).

    ``encoder`` maps a preprocessed batch to embeddings; ``preprocess`` maps what a user passes (PIL images
    for real CLIP models) to that batch. Tensors passed to :meth:`encode` are taken as already preprocessed.
    """

    def __init__(self, encoder: nn.Module, preprocess: Callable[[Any], Tensor], image_size: Optional[int] = None):
        super().__init__()
        self.encoder = encoder
        self._preprocess = preprocess
        self.image_size = image_size

    def preprocess(self, images: Any) -> Tensor:
        """What the encoder eats, built from user input (a PIL image or a list of them)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("encode_image got an empty list of images.")
        return self._preprocess(list(images))

    def encode(self, images: Any) -> Float[Tensor, "batch d_proj"]:
        if isinstance(images, Tensor):
            pixels = images
            if pixels.ndim != 4 or not pixels.dtype.is_floating_point:
                raise ValueError(
                    f"pixel tensors must be float [batch, channels, height, width], got {tuple(pixels.shape)} "
                    f"{pixels.dtype}; pass PIL images to have them preprocessed."
                )
            if self.image_size is not None and tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
                raise ValueError(
                    f"pixel tensors must be {self.image_size}x{self.image_size}, got {tuple(pixels.shape[-2:])}; "
                    "pass PIL images to have them resized and normalised."
                )
        else:
            pixels = self.preprocess(images)
        param = next(self.encoder.parameters(), None)
        if param is not None:
            pixels = pixels.to(device=param.device, dtype=param.dtype)
        return self.encoder(pixels)


class HFVisionEncoder(nn.Module):
    """HF ``CLIPVisionModel`` + ``visual_projection``: pixel_values -> image_embeds."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


def stack_transform(transform: Callable[[Any], Tensor]) -> Callable[[list], Tensor]:
    """Turn a per-image transform (open_clip's) into a batch preprocessor."""

    def preprocess(images: list) -> Tensor:
        return torch.stack([transform(img) for img in images])

    return preprocess
