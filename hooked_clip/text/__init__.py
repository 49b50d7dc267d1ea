"""The text tower: its config, the hooked transformer, pooling rules and the read-outs at the pooling position.

Exports are lazy (``from hooked_clip.text import HookedCLIPText`` imports the tower only then), so the loaders
can read :mod:`hooked_clip.text.config` without importing a tower class."""

from hooked_clip.lazy import lazy_exports

_EXPORTS = {"CLIPTextConfig": "config", "HookedCLIPText": "tower"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
