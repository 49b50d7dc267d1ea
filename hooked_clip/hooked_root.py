"""`HookedTower`: what both hooked towers add to TransformerLens's ``HookedRootModule`` — hook names are
checked (an unknown name is an error that suggests the closest ones, never a silent no-op) and
``run_with_cache`` returns an ``ActivationCache``."""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooked_clip.devices import sync_config


_OPT_IN_HOOKS = {  # hook name suffix -> the config flag without which it never fires
    "attn.hook_result": "use_attn_result",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
}


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

    def _apply(self, fn, *args, **kwargs):
        """Every move or cast (``.to``, ``.cuda()``, ``.cpu()``, ``.half()``, also through a parent module such
        as ``HookedCLIP``) ends here: ``cfg.device`` and ``cfg.dtype`` then follow the weights."""
        out = super()._apply(fn, *args, **kwargs)
        sync_config(self)
        return out

    def _hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownHookError(
                f"{self.__class__.__name__} has no hook {name!r}.{hint} List them with model.hook_dict.keys()."
            )
        return self.hook_dict[name]

    def _missing_flag(self, name: str) -> Optional[str]:
        """The config flag an opt-in hook needs and that is off (None: the hook can fire)."""
        flag = next((f for suffix, f in _OPT_IN_HOOKS.items() if name.endswith(suffix)), None)
        return flag if flag is not None and not getattr(self.cfg, flag) else None

    def _check_can_fire(self, names: Sequence) -> None:
        """Named hooks must exist, and opt-in ones need their config flag: a hook that can never fire
        would leave a cache empty or a patch unapplied without a word."""
        for name in names:
            if not isinstance(name, str):
                continue
            self._hook_point(name)
            flag = self._missing_flag(name)
            if flag is not None:
                raise ValueError(
                    f"hook {name!r} never fires in this model: it needs {flag}=True. Load the model with "
                    f"{flag}=True (e.g. HookedCLIP.from_hf(..., {flag}=True)) or set model.cfg.{flag} = True."
                )

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        self._check_can_fire([name])
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """As TransformerLens (``run_with_hooks`` uses it); every hook named by a string must exist and be
        able to fire in this configuration."""
        self._check_can_fire([name for name, _ in [*fwd_hooks, *bwd_hooks]])
        return super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts)

    def get_caching_hooks(self, *args, **kwargs):
        """As TransformerLens, without caching hooks on points that cannot fire in this configuration
        (``run_with_cache()`` with no filter caches every hook that fires)."""
        cache, fwd, bwd = super().get_caching_hooks(*args, **kwargs)

        def can_fire(hooks: list) -> list:
            return [(name, h) for name, h in hooks if not isinstance(name, str) or self._missing_flag(name) is None]

        return cache, can_fire(fwd), can_fire(bwd)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir) -> None:
        self._hook_point(name)
        super()._enable_hook_with_name(name, hook, dir)

    def run_with_cache(self, *model_args, names_filter=None, return_cache_object: bool = True, **kwargs):
        """As TransformerLens: returns (output, cache). The cache is an ``ActivationCache``, so
        ``cache["resid_pre", 3]`` works. Names in ``names_filter`` must exist, be able to fire in this
        configuration, and fire in this run (not e.g. after ``stop_at_layer``)."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            self._check_can_fire(names)
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if isinstance(names, (list, tuple)):
            self._check_fired(names, cache, kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    @contextlib.contextmanager
    def options(self, **fields):
        """Temporarily set config fields that change what the forward computes but not the weights
        (``use_split_qkv_input``, ``use_attn_result``, ``use_fused_attn``, ``trim_after_pool``)::

            with text.options(use_split_qkv_input=True):
                ...  # per-head query/key/value inputs exist here
        """
        allowed = ("use_split_qkv_input", "use_attn_result", "use_fused_attn", "trim_after_pool")
        bad = sorted(set(fields) - set(allowed))
        if bad:
            raise ValueError(f"options() sets only {allowed}, not {bad}.")
        old = {k: getattr(self.cfg, k) for k in fields}
        for k, v in fields.items():
            setattr(self.cfg, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                setattr(self.cfg, k, v)

    def _check_fired(self, names: Sequence[str], cache: dict, run_kwargs: dict) -> None:
        silent = [n for n in names if n not in cache]
        if silent:
            settings = {k: run_kwargs[k] for k in ("return_type", "start_at_layer", "stop_at_layer") if k in run_kwargs}
            raise ValueError(
                f"hooks {silent[:6]} did not fire in this run ({settings or 'default settings'}): hooks before "
                "start_at_layer, from stop_at_layer on, or past the requested return_type are not computed. "
                "Drop them from names_filter or change the run's settings."
            )

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
