"""What a loader returns: a checkpoint read into configs, state dicts and preprocessing. Loaders never build a
tower; :class:`~hooked_clip.HookedCLIP` builds its towers from these (``HookedCLIP.from_checkpoint``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from torch import Tensor, nn

from hooked_clip.text.config import CLIPTextConfig
from hooked_clip.vision.config import CLIPVisionConfig


@dataclass
class TextCheckpoint:
    """A text tower: its config, our state dict (every key of the tower), and its tokenizer."""

    cfg: CLIPTextConfig
    state_dict: dict[str, Tensor]
    tokenizer: Any = None


@dataclass
class VisionCheckpoint:
    """A ViT image tower hooked_clip reimplements: config, our state dict, the checkpoint's own pixel pipeline
    (``preprocess``: PIL images -> pixels) and its name in words (``preprocessing``)."""

    cfg: CLIPVisionConfig
    state_dict: dict[str, Tensor]
    preprocess: Optional[Callable[[list], Tensor]]
    preprocessing: str


@dataclass
class ReferenceVision:
    """An image tower hooked_clip does not reimplement: the reference ``encoder`` (pixels -> embeddings), its
    preprocessing, and ``reason`` (why it is not hooked, shown when a user tries to hook it)."""

    encoder: nn.Module
    preprocess: Callable[[list], Tensor]
    image_size: Optional[int]
    reason: str
    preprocessing: str


@dataclass
class Checkpoint:
    """A whole checkpoint: text tower, image tower (or None for a text-only one), logit scale (log space, or
    None) and logit bias (or None), and the family it was read as."""

    text: TextCheckpoint
    vision: Union[VisionCheckpoint, ReferenceVision, None]
    logit_scale: Optional[float]
    logit_bias: Optional[float]
    family: str
