"""`Family`: one row of the family table (:mod:`hooked_clip.loaders.families`): how a loader reads one
architecture, or why it refuses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from hooked_clip.tokenizers.rules import resolve_tokenizer

SOURCES = ("transformers", "open_clip")


@dataclass(frozen=True)
class Family:
    """One row of the family table.

    - ``name``: the family (``cfg.family`` of the text tower it reads);
    - ``source``: ``"transformers"`` (``classes`` are transformers class names) or ``"open_clip"`` (``classes``
      are the class of the model's text tower: ``CLIP`` for open_clip's built-in one, else ``type(model.text)``);
    - ``model_types``: ``(config.model_type, class)`` pairs: the class a directory's config is read as when it
      lists no ``architectures``;
    - ``text``: ``text(model, family, **cfg_overrides) -> (CLIPTextConfig, state dict)``;
    - ``vision``: ``vision(model, preprocessing, **cfg_overrides) -> VisionCheckpoint | ReferenceVision``, or
      None (text-only: the family's image tower is not read);
    - ``tokenizer``: ``tokenizer(given, cfg) -> TextTokenizer`` (``given``: what the user passed, a directory,
      or None);
    - ``causal``, ``pooling``: how its text tower differs from CLIP (``pooling="clip"``: argmax where
      ``eos_token_id == 2``, else the first EOT);
    - ``refused``: why hooked_clip cannot load it exactly (then it is never read, and loading names the reason);
    - ``reference``: the class whose ``from_pretrained`` reads a saved directory of this family (default: the
      transformers class named by the directory's config), so a user's own subclass loads by path too.
    """

    name: str
    source: str
    classes: tuple[str, ...]
    text: Optional[Callable[..., Any]] = None
    vision: Optional[Callable[..., Any]] = None
    tokenizer: Callable[..., Any] = resolve_tokenizer
    model_types: tuple[tuple[str, str], ...] = ()
    causal: bool = True
    pooling: str = "clip"
    refused: Optional[str] = None
    reference: Optional[type] = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"Family {self.name!r}: source must be one of {SOURCES}, got {self.source!r}.")
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            raise ValueError(f"Family {self.name!r}: classes must be a non-empty tuple of class names.")
        if self.refused is None and self.text is None:
            raise ValueError(f"Family {self.name!r}: give a text reader, or refused='the reason'.")
