"""Compact reprs for result objects: printing a result (as TransformerLens users do at a prompt) shows what it
holds — each tensor's shape and dtype, a list's length, a short label list — never every number."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import Tensor

_SHOWN_ITEMS = 3  # labels shown of a longer list


def describe(value: Any) -> str:
    """One short line for a field's value: ``Tensor[4, 12] float32`` for a tensor, ``list[97]: ['embed',
    'L0H0', ...]`` for a long list, the value itself for a number, string or None."""
    if isinstance(value, Tensor):
        return f"Tensor[{', '.join(map(str, value.shape))}] {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(describe(v) if isinstance(v, (Tensor, list, tuple, dict)) else repr(v)
                          for v in value[:_SHOWN_ITEMS])
        more = ", ..." if len(value) > _SHOWN_ITEMS else ""
        return f"{type(value).__name__}[{len(value)}]: [{shown}{more}]" if value else f"{type(value).__name__}[0]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in list(value.items())[:_SHOWN_ITEMS]) \
            + (", ..." if len(value) > _SHOWN_ITEMS else "") + "}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


class CompactRepr:
    """Mixin for a result dataclass (declared with ``@dataclass(repr=False)``, which would otherwise write its
    own repr): ``ClassName(field=<describe(value)>, ...)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{f.name}={describe(getattr(self, f.name))}"
                                                     for f in fields(self)) + ")"
