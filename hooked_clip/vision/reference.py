"""`ReferenceVisionTower`: the checkpoint's own image tower (an HF or open_clip vision module with its
preprocessing), not hooked.

It is what :class:`~hooked_clip.HookedCLIP` holds where the checkpoint's image tower is not a ViT that
:class:`~hooked_clip.vision.HookedCLIPVision` reimplements (open_clip ``ModifiedResNet``, timm ConvNeXt, ...):
it encodes images exactly as the reference does and refuses hooking with an error that names the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.vision.pixels import as_pixels


class ReferenceVisionTower(nn.Module):
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
