"""The image tower: its config, the hooked ViT, the unhooked reference tower, and the pixel input rule.

Exports are lazy (``from hooked_clip.vision import HookedCLIPVision`` imports the tower only then), so the
loaders can read :mod:`hooked_clip.vision.config` without importing a tower class."""

from importlib import import_module

_EXPORTS = {"CLIPVisionConfig": "config", "HookedCLIPVision": "tower",
            "ReferenceVisionTower": "reference", "as_pixels": "pixels"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
