"""The text tower: its config, the hooked transformer, pooling rules and the read-outs at the pooling position.

Exports are lazy (``from hooked_clip.text import HookedCLIPText`` imports the tower only then), so the loaders
can read :mod:`hooked_clip.text.config` without importing a tower class."""

from importlib import import_module

_EXPORTS = {"CLIPTextConfig": "config", "HookedCLIPText": "tower"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
