"""The image tower: its config, the hooked ViT, the unhooked reference tower, and the pixel input rule.

Exports are lazy (``from hooked_clip.vision import HookedCLIPVision`` imports the tower only then), so the
loaders can read :mod:`hooked_clip.vision.config` without importing a tower class."""

from hooked_clip.lazy import lazy_exports

_EXPORTS = {"CLIPVisionConfig": "config", "HookedCLIPVision": "tower",
            "ReferenceVisionTower": "reference", "as_pixels": "pixels"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
