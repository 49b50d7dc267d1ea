"""The image input rule both image towers share: :func:`as_pixels` (PIL images through the checkpoint's own
preprocessing, or an already preprocessed pixel tensor, checked)."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from jaxtyping import Float
from torch import Tensor


RAW_PIXELS = 50.0  # no normalisation of 0..1 pixels reaches this: larger values are raw 0..255 input


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
        if images.numel() and float(images.abs().max()) > RAW_PIXELS:
            raise ValueError(f"pixel tensors hold values up to {float(images.abs().max()):.0f}: raw 0..255 pixels, not "
                             "the checkpoint's normalised input; pass PIL images to have them preprocessed "
                             "(model.vision.as_pixels(images)).")
        return images
    if preprocess is None:
        raise ValueError("this image tower has no preprocessing; pass preprocessed pixel tensors [batch, 3, H, W].")
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError("encode_image got an empty list of images.")
    names_ok = getattr(preprocess, "reads_names", False)  # a pipeline that reads object names (the demo's)
    for i, image in enumerate(images):
        if image is None or isinstance(image, (bytes, os.PathLike)) or (isinstance(image, str) and not names_ok):
            raise TypeError(f"image {i} is {type(image).__name__} {str(image)[:40]!r}, not an image: open files first "
                            "(PIL.Image.open(path)); texts go to the text tower (model.encode_text).")
        size = getattr(image, "size", None)
        if isinstance(size, tuple) and len(size) == 2 and 0 in size:
            raise ValueError(f"image {i} is {size[0]}x{size[1]} pixels: an empty image cannot be resized.")
    return preprocess(list(images))
