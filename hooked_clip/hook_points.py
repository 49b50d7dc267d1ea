"""``CheckedHookPoint``: TransformerLens's ``HookPoint`` whose hooks may not change an activation's shape.

A hook that returns a tensor replaces the activation. If its shape, dtype or device differ from the
input's, broadcasting or indexing downstream would use it anyway and give a silently wrong result
(``x[:1]`` on a batch of 2 copies example 0 into row 1; one attention head broadcasts to all heads).
Every hook point of the hooked towers is a ``CheckedHookPoint``, so such a hook stops the run with a
:class:`HookReturnError` naming the hook. The check costs one comparison per hook call that returns a
tensor (see ``benchmarks/hooks.py``); hooks returning ``None`` or their input are not touched.
"""

from __future__ import annotations

from hooked_clip.errors import HookReturnError

from functools import partial
from typing import Any, Callable, Optional

from torch import Tensor
from transformer_lens.hook_points import HookPoint, LensHandle




def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype} on {t.device}"


class _CheckedHook:
    """Calls the user's hook and checks that a returned tensor can replace the activation."""

    __slots__ = ("fn", "point", "dir")

    def __init__(self, fn: Callable, point: HookPoint, dir: str):
        self.fn, self.point, self.dir = fn, point, dir

    def __call__(self, x: Tensor, *, hook: Any) -> Any:
        out = self.fn(x, hook=hook)
        if out is None or out is x:
            return out
        value = out[0] if self.dir == "bwd" and isinstance(out, tuple) and len(out) == 1 else out
        if not isinstance(value, Tensor):
            raise self._error(x, f"a {type(value).__name__}")
        if value.shape != x.shape or value.dtype != x.dtype or value.device != x.device:
            raise self._error(x, f"a tensor of {_describe(value)}")
        return out

    def _error(self, x: Tensor, got: str) -> HookReturnError:
        what = "gradient" if self.dir == "bwd" else "activation"
        return HookReturnError(
            f"Hook {_name(self.fn)} on {self.point.name!r} ({self.dir}) returned {got}, but the {what} it "
            f"replaces has {_describe(x)}. A hook must return None (keep the value) or a tensor of the same "
            "shape, dtype and device (e.g. edit a copy: y = x.clone(); y[...] = ...; return y)."
        )

    def __repr__(self) -> str:  # TransformerLens names the torch hook after this
        return _name(self.fn)


def _name(fn: Callable) -> str:
    if isinstance(fn, partial):  # repr of a partial can be slow (it may hold tensors)
        return f"partial({_name(fn.func)}, ...)"
    return getattr(fn, "__qualname__", None) or repr(fn)


class CheckedHookPoint(HookPoint):
    """A ``HookPoint`` (identity, TransformerLens semantics) whose hooks are shape/dtype/device checked."""

    def add_hook(self, hook: Callable, dir: str = "fwd", is_permanent: bool = False,
                 level: Optional[int] = None, prepend: bool = False, **kwargs: Any) -> LensHandle:
        handle = super().add_hook(_CheckedHook(hook, self, dir), dir=dir, is_permanent=is_permanent,
                                  level=level, prepend=prepend, **kwargs)
        handle.user_hook = hook
        return handle
