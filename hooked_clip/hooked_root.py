"""`HookedTower`: what both hooked towers add to TransformerLens's ``HookedRootModule`` — hook names are
checked (an unknown name is an error that suggests the closest ones, never a silent no-op) and
``run_with_cache`` returns an ``ActivationCache``."""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint


class UnknownHookError(KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0])


class HookedTower(HookedRootModule):
    """Base class of :class:`~hooked_clip.text.HookedCLIPText` and
    :class:`~hooked_clip.vision_tower.HookedCLIPVision`."""

    def init_weights(self) -> None:
        """Random init (normal, std ``cfg.init_range``; LN to identity, biases zero), seeded by ``cfg.seed`` if set."""
        gen = torch.Generator().manual_seed(self.cfg.seed) if self.cfg.seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith(".w"):
                    p.fill_(1.0)
                elif name.endswith(".b") or name.split(".")[-1].startswith("b_"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * self.cfg.init_range)

    def _hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownHookError(
                f"{self.__class__.__name__} has no hook {name!r}.{hint} List them with model.hook_dict.keys()."
            )
        return self.hook_dict[name]

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        if isinstance(name, str):
            self._hook_point(name)
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir) -> None:
        self._hook_point(name)
        super()._enable_hook_with_name(name, hook, dir)

    def run_with_cache(self, *model_args, names_filter=None, return_cache_object: bool = True, **kwargs):
        """As TransformerLens: returns (output, cache). The cache is an ``ActivationCache``, so
        ``cache["resid_pre", 3]`` works; unknown names in ``names_filter`` are an error."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            for name in names:
                self._hook_point(name)
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    # ------------------------------------------------------------------------ TL weight accessors
    def _stack(self, sub: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(b, sub), name) for b in self.blocks], dim=0)

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("attn", "W_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return self._stack("mlp", "W_in")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self._stack("mlp", "W_out")
