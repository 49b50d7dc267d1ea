"""The reference image tower (a wrapped HF or open_clip vision model with its preprocessing, not hooked),
and the image input rules both image towers share (:func:`as_pixels`).

:class:`VisionTower` is what :class:`~hooked_clip.HookedCLIP` holds where the checkpoint's image tower is not
a ViT that :class:`~hooked_clip.vision_tower.HookedCLIPVision` reimplements (open_clip ``ModifiedResNet``,
timm ConvNeXt, ...): it encodes images exactly as the reference does and refuses hooking with an error that
names the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn


def as_pixels(images: Any, preprocess: Optional[Callable[[list], Tensor]], image_size: Optional[int],
              n_channels: Optional[int] = None) -> Float[Tensor, "batch channel height width"]:
    """A checked pixel batch from PIL images (run through ``preprocess``, the checkpoint's own) or an
    already preprocessed float tensor [batch, channel, image_size, image_size]."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or not images.dtype.is_floating_point:
            raise ValueError(
                f"pixel tensors must be float [batch, channels, height, width], got {tuple(images.shape)} "
                f"{images.dtype}; pass PIL images to have them preprocessed"
                + (", or add a batch dimension with pixels[None]." if images.ndim == 3 else ".")
            )
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            raise ValueError(
                f"pixel tensors must be {image_size}x{image_size}, got {tuple(images.shape[-2:])}; "
                "pass PIL images to have them resized and normalised."
            )
        if n_channels is not None and images.shape[1] != n_channels:
            raise ValueError(f"pixel tensors must have {n_channels} channels, got {images.shape[1]}.")
        return images
    if preprocess is None:
        raise ValueError("this image tower has no preprocessing; pass preprocessed pixel tensors [batch, 3, H, W].")
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError("encode_image got an empty list of images.")
    return preprocess(list(images))


class VisionTower(nn.Module):
    """Images -> image embeddings [batch, d_proj] (unnormalised).

    ``encoder`` maps a preprocessed batch to embeddings; ``preprocess`` maps what a user passes (PIL images
    for real CLIP models) to that batch. Tensors passed to :meth:`encode` are taken as already preprocessed.
    ``not_hooked_because`` says why this tower is the reference module rather than a hooked one; the hook
    methods raise it. ``preprocessing`` names the pixel pipeline (as :class:`HookedCLIPVision` does).
    """

    def __init__(self, encoder: nn.Module, preprocess: Callable[[Any], Tensor], image_size: Optional[int] = None,
                 not_hooked_because: str = "it is not a ViT", preprocessing: Optional[str] = None):
        super().__init__()
        self.encoder = encoder
        self._preprocess = preprocess
        self.image_size = image_size
        self.not_hooked_because = not_hooked_because
        # which pixel pipeline ``preprocess`` is, in words (reports name it)
        self.preprocessing = preprocessing or f"the {type(self).__name__}'s own input (no photo preprocessing)"

    def preprocess(self, images: Any) -> Tensor:
        """What the encoder eats, built from user input (a PIL image or a list of them)."""
        return as_pixels(list(images) if isinstance(images, (list, tuple)) else [images], self._preprocess, None)

    def encode(self, images: Any) -> Float[Tensor, "batch d_proj"]:
        pixels = as_pixels(images, self._preprocess, self.image_size)
        param = next(self.encoder.parameters(), None)
        if param is not None:
            pixels = pixels.to(device=param.device, dtype=param.dtype)
        return self.encoder(pixels)

    def not_hooked_error(self) -> TypeError:
        return TypeError(
            f"this image tower ({type(self.encoder).__name__}) is the reference module, not hooked: "
            f"{self.not_hooked_because}. hooked_clip hooks ViT image towers (transformers CLIP/SigLIP, "
            "open_clip VisionTransformer); encode_image still works, and the text tower is hooked."
        )

    def _refuse(self, *args, **kwargs):
        raise self.not_hooked_error()

    run_with_cache = run_with_hooks = hooks = add_hook = _refuse


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
