"""Hook names of a run over both towers: ``text.<name>`` and ``vision.<name>`` (each tower's own,
TransformerLens-style name after the prefix), plus ``hook_text_embed``, ``hook_text_embed_normalized``,
``hook_image_embed`` and ``hook_image_embed_normalized`` at the top (the same activations as
``text.hook_text_embed`` etc.). Names without a prefix keep their old meaning: the text tower.

This module routes such names to the tower that owns them (for hooks) and builds the per-tower filters and
the merged cache (for caching)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

from torch import Tensor

from hooked_clip.hooked_root import UnknownHookError

TOWERS = ("text", "vision")
ALIASES = {
    "hook_text_embed": ("text", "hook_text_embed"),
    "hook_text_embed_normalized": ("text", "hook_text_embed_normalized"),
    "hook_image_embed": ("vision", "hook_image_embed"),
    "hook_image_embed_normalized": ("vision", "hook_image_embed_normalized"),
}
_ALIAS_OF = {v: k for k, v in ALIASES.items()}
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def route(name: str) -> Optional[tuple[str, str]]:
    """(tower, the tower's own name) of a two-tower name; ``None`` for an unprefixed name."""
    if name in ALIASES:
        return ALIASES[name]
    tower, _, rest = name.partition(".")
    return (tower, rest) if tower in TOWERS and rest else None


def tower_of(name: str) -> str:
    """The tower a hook name acts on (``"text"`` for an unprefixed name)."""
    return (route(name) or ("text", name))[0]


def names_both_towers(hooks: Iterable[tuple]) -> bool:
    """Whether a hook list uses two-tower names (a prefix or a top-level alias)."""
    return any(isinstance(name, str) and route(name) is not None for name, _ in hooks)


def split_hooks(hooks: Iterable[tuple]) -> dict[str, list[tuple]]:
    """A two-tower hook list -> {tower: [(own name or filter, hook)]}. Unprefixed names go to the text
    tower; a filter function is applied to both towers, seeing the prefixed names."""
    out: dict[str, list[tuple]] = {t: [] for t in TOWERS}
    for name, hook in hooks:
        if callable(name):
            for tower in TOWERS:
                out[tower].append((_prefixed_filter(name, tower), hook))
        else:
            tower, own = route(name) or ("text", name)
            out[tower].append((own, hook))
    return out


def _prefixed_filter(keep: Callable[[str], bool], tower: str) -> Callable[[str], bool]:
    return lambda own: keep(f"{tower}.{own}") or (((tower, own) in _ALIAS_OF) and keep(_ALIAS_OF[(tower, own)]))


def cache_filters(names_filter: NamesFilter, towers: dict) -> tuple[Callable[[str], bool], dict[str, Callable[[str], bool]]]:
    """(keep(two-tower name), {tower: filter on its own names}); listed names are checked (an unknown
    name is an :class:`UnknownHookError` naming the fix)."""
    if names_filter is None:
        keep = lambda name: True  # noqa: E731
    elif callable(names_filter):
        keep = names_filter
    else:
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        for name in names:
            where = route(name)
            if where is None:
                raise UnknownHookError(
                    f"{name!r} names no tower; in a run over both towers prefix hook names with 'text.' or "
                    "'vision.' (e.g. 'vision.blocks.0.hook_resid_post'), or use hook_text_embed(_normalized) / "
                    "hook_image_embed(_normalized)."
                )
            towers[where[0]]._hook_point(where[1])
        wanted = set(names)
        keep = wanted.__contains__
    return keep, {tower: _prefixed_filter(keep, tower) for tower in TOWERS}


def merge_caches(keep: Callable[[str], bool], caches: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """One dict of two-tower names from each tower's cache dict."""
    out: dict[str, Tensor] = {}
    for tower, cache in caches.items():
        for own, act in cache.items():
            if keep(f"{tower}.{own}"):
                out[f"{tower}.{own}"] = act
            alias = _ALIAS_OF.get((tower, own))
            if alias is not None and keep(alias):
                out[alias] = act
    return out
