"""`HookedTower`: what every hooked tower adds to TransformerLens's ``HookedRootModule``, and `Tower`: the
contract the analyses state.

- Every hook point is a :class:`~hooked_clip.hook_points.CheckedHookPoint` (a hook returning another shape,
  dtype or device raises :class:`~hooked_clip.errors.HookReturnError` naming the hook): ``setup()`` refuses a
  tower that declares a plain ``HookPoint``, so a new tower cannot forget.
- Hook names are checked: an unknown name is an error that suggests the closest ones, an opt-in hook whose
  config flag is off is an error naming the flag, a listed name that did not fire is an error — never a
  silent no-op. ``run_with_cache`` returns an ``ActivationCache``.
"""

from __future__ import annotations

from hooked_clip.errors import ArchitectureMismatchError, UnknownHookError

import contextlib
import operator
import difflib
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooked_clip.devices import sync_config
from hooked_clip.hook_points import CheckedHookPoint
from hooked_clip.names import opt_in_flag
from hooked_clip.weights import WeightAccessors


@runtime_checkable
class Tower(Protocol):
    """What an analysis may use of a tower (what nnsight's ``Batchable`` is for its interleaver): both hooked
    towers implement it, and so must a family's own tower. The patching engine
    (:mod:`hooked_clip.analyses.engine`) and every analysis use nothing else, and never branch on the tower's
    class.

    - ``name``: ``"text"`` or ``"vision"``, the prefix of its hooks in a run over both towers;
    - ``input_embed_hook``: the hook of the input's own embedding (``hook_embed``, ``hook_patch_embed``);
    - ``cfg``: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``causal`` and ``trims`` (whether positions
      after the last pooling position may be dropped: causal towers pooled at EOT only);
    - ``blocks``: the residual blocks, each ``block(resid, prefix=None, key_mask=None)``;
    - ``as_input(x)``: validated input on the tower's device (token ids from texts; pixels from images);
    - ``pool_positions(input)`` [batch] (the one position each row's output reads) or None (it reads all);
    - ``key_mask(input)`` [batch, pos] True at keys attention must not read (padding), or None;
    - ``input_lengths(input)`` [batch]: positions of each row that hold its input (text up to EOT, the
      unpadded tokens, or every position of a tower that reads its padding), or None for input with no length
      (an image's patches);
    - ``embed_input(input)``: the residual stream entering block 0;
    - ``run_blocks(resid, start, stop, prefix, key_mask)`` and ``read_out(resid, pool, return_type, key_mask)``;
    - TransformerLens's ``run_with_cache``, ``run_with_hooks``, ``hooks`` and ``hook_dict``.
    """

    name: str
    input_embed_hook: str
    cfg: Any
    blocks: Any
    hook_dict: dict

    def as_input(self, x: Any) -> Tensor: ...
    def pool_positions(self, input: Tensor) -> Optional[Tensor]: ...
    def key_mask(self, input: Tensor) -> Optional[Tensor]: ...
    def input_lengths(self, input: Tensor) -> Optional[Tensor]: ...
    def embed_input(self, input: Tensor) -> Tensor: ...
    def run_blocks(self, resid: Tensor, start: int = 0, stop: Optional[int] = None, prefix: Any = None,
                   key_mask: Optional[Tensor] = None) -> Tensor: ...
    def read_out(self, resid: Tensor, pool: Optional[Tensor], return_type: Any = "embed",
                 key_mask: Optional[Tensor] = None) -> Optional[Tensor]: ...
    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...
    def hooks(self, fwd_hooks: Any = (), bwd_hooks: Any = (), reset_hooks_end: bool = True,
              clear_contexts: bool = False) -> Any: ...


TOWER_NAMES = ("text", "vision")
# config fields that change what the forward computes, not the weights (HookedTower.options, HookedCLIP.set_options,
# load_model's keywords); trim_after_pool is the text tower's only
FORWARD_OPTIONS = ("use_attn_result", "use_split_qkv_input", "use_fused_attn")


# TransformerLens options whose hooks hold what an existing hook already holds here: asking for one says which
NOT_NEEDED_OPTIONS = {
    "use_hook_mlp_in": "the MLP's input is blocks.{l}.hook_resid_mid (ln2 reads it in a pre-LN block)",
    "use_attn_in": "every head reads blocks.{l}.hook_resid_pre; per-head inputs are hook_q/k/v_input "
                   "(use_split_qkv_input=True)",
}


def pop_forward_options(kwargs: dict) -> dict:
    """The forward options among a loader's keywords, taken out of them: a loader sets them on both towers
    (``HookedCLIP.set_options``), not on the text config alone. A TransformerLens option hooked_clip has no
    need for (:data:`NOT_NEEDED_OPTIONS`) is an error naming the hook to use instead."""
    for name, instead in NOT_NEEDED_OPTIONS.items():
        if name in kwargs:
            raise ValueError(f"{name} is a TransformerLens option hooked_clip does not have: {instead}.")
    return {k: kwargs.pop(k) for k in FORWARD_OPTIONS if k in kwargs}


def get_tower(model: Any, name: Optional[str] = None) -> "HookedTower":
    """The hooked tower an analysis runs on: ``model`` itself when it is one (``name``, if given, must be its
    own), else ``model.text`` / ``model.vision`` (default ``"text"``). A model without that tower, or whose
    image tower is the unhooked reference module, is an error naming why."""
    if name is not None and name not in TOWER_NAMES:
        hint = " (the image tower is called 'vision')" if name == "image" else ""
        raise ValueError(f"tower must be one of {TOWER_NAMES}, got {name!r}{hint}.")
    if isinstance(model, HookedTower):
        if name is not None and name != model.name:
            raise ValueError(f"this is the {model.name} tower; pass the HookedCLIP to run on its {name} tower.")
        return _check_shape(model)
    tower = getattr(model, name or "text", None)
    if isinstance(tower, HookedTower):
        return _check_shape(tower)
    if tower is None and hasattr(model, "text"):
        raise ValueError(f"this model has no {name} tower (a text-only checkpoint); load a checkpoint with one.")
    if hasattr(tower, "not_hooked_error"):
        raise tower.not_hooked_error()
    raise TypeError(f"expected a HookedCLIP or a hooked tower, got {type(model).__name__}.")


# config fields that do not change what a tower computes from its weights: its name, its random init, where it
# lives (checked on its own) and the forward options (exact either way)
NOT_ARCHITECTURE = ("model_name", "seed", "init_range", "device", *FORWARD_OPTIONS, "trim_after_pool")


def architecture_differences(a: "HookedTower", b: "HookedTower") -> dict[str, tuple[Any, Any]]:
    """``{field: (a's value, b's value)}`` for every config field (and the tower and tokenizer classes) in which two towers
    differ beyond their weights (:data:`NOT_ARCHITECTURE` left out); empty for two checkpoints of one
    architecture."""
    out = {} if type(a) is type(b) else {"class": (type(a).__name__, type(b).__name__)}
    ta, tb = (type(getattr(t, "tokenizer", None)).__name__ for t in (a, b))  # texts become ids by the patched tower's
    if ta != tb:
        out["tokenizer"] = (ta, tb)
    fa, fb = vars(a.cfg), vars(b.cfg)
    for key in sorted((set(fa) | set(fb)) - set(NOT_ARCHITECTURE)):
        va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
        if va != vb:
            out[key] = (va, vb)
    return out


def check_same_architecture(a: "HookedTower", b: "HookedTower", names: tuple[str, str] = ("model", "source_model")) -> None:
    """Refuse two towers that differ in anything but their weights (:class:`ArchitectureMismatchError` naming
    each differing config field), or that live on different devices (a ``ValueError`` saying to move one)."""
    diff = architecture_differences(a, b)
    if diff:
        fields = "; ".join(f"{k}: {names[0]} {va!r} vs {names[1]} {vb!r}" for k, (va, vb) in diff.items())
        raise ArchitectureMismatchError(
            f"the {a.name} towers of {names[0]} and {names[1]} differ in more than their weights ({fields}); "
            "activations move between checkpoints of one architecture only, loaded the same way (the same "
            "dtype and weight processing).")
    da, db = next(a.parameters()).device, next(b.parameters()).device  # "cuda" and "cuda:0" are one device
    if da != db:
        raise ValueError(f"{names[0]}'s {a.name} tower is on {da} but {names[1]}'s on {db}; move one with .to(...) first.")


def _check_shape(tower: "HookedTower") -> "HookedTower":
    """A config edited after loading would make an analysis sweep blocks the forward does not run."""
    if len(tower.blocks) != tower.cfg.n_layers:
        raise ValueError(f"the {tower.name} tower has {len(tower.blocks)} blocks but cfg.n_layers = {tower.cfg.n_layers}: "
                         "the config was changed after the model was built. Build a new model instead (to run part "
                         "of the tower, pass stop_at_layer / layers=...).")
    return tower


class HookedTower(WeightAccessors, HookedRootModule):
    """Base class of :class:`~hooked_clip.text.HookedCLIPText` and :class:`~hooked_clip.vision.HookedCLIPVision`
    (and of a family's own tower): checked hook points and hook names, TL weight accessors, device sync."""

    name: str = "tower"

    def setup(self) -> None:
        """TransformerLens's ``setup`` (names every hook point), then refuses any hook point that is not a
        ``CheckedHookPoint``: an unchecked one would let a hook drop a row or change a dtype silently."""
        super().setup()
        plain = [name for name, hp in self.hook_dict.items() if not isinstance(hp, CheckedHookPoint)]
        if plain:
            raise TypeError(
                f"{type(self).__name__} declares plain HookPoints {plain[:5]}; every hook point of a hooked tower "
                "must be a hooked_clip.hook_points.CheckedHookPoint (same semantics, return values checked)."
            )

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

    def hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownHookError(
                f"{self.__class__.__name__} has no hook {name!r}.{hint} List them with model.hook_dict.keys()."
            )
        return self.hook_dict[name]

    def _missing_flag(self, name: str) -> Optional[str]:
        """The config flag an opt-in hook needs and that is off (None: the hook can fire)."""
        flag = opt_in_flag(name)
        return flag if flag is not None and not getattr(self.cfg, flag) else None

    def check_hook_names(self, names: Sequence) -> None:
        """Named hooks must exist, and opt-in ones need their config flag: a hook that can never fire
        would leave a cache empty or a patch unapplied without a word."""
        for name in names:
            if not isinstance(name, str):
                continue
            self.hook_point(name)
            flag = self._missing_flag(name)
            if flag is not None:
                raise ValueError(
                    f"hook {name!r} never fires in this model: it needs {flag}=True. Load the model with "
                    f"{flag}=True (e.g. HookedCLIP.from_hf(..., {flag}=True)) or set model.cfg.{flag} = True."
                )

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        self.check_hook_names([name])
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """As TransformerLens (``run_with_hooks`` uses it); every hook named by a string must exist and be
        able to fire in this configuration."""
        self.check_hook_names([name for name, _ in [*fwd_hooks, *bwd_hooks]])
        return super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts)

    def get_caching_hooks(self, *args, **kwargs):
        """As TransformerLens, without caching hooks on points that cannot fire in this configuration
        (``run_with_cache()`` with no filter caches every hook that fires)."""
        cache, fwd, bwd = super().get_caching_hooks(*args, **kwargs)

        def can_fire(hooks: list) -> list:
            return [(name, h) for name, h in hooks if not isinstance(name, str) or self._missing_flag(name) is None]

        return cache, can_fire(fwd), can_fire(bwd)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir) -> None:
        self.hook_point(name)
        super()._enable_hook_with_name(name, hook, dir)

    def run_with_cache(self, *model_args, names_filter=None, return_cache_object: bool = True, **kwargs):
        """As TransformerLens: returns (output, cache). The cache is an ``ActivationCache``, so
        ``cache["resid_pre", 3]`` works. Names in ``names_filter`` must exist, be able to fire in this
        configuration, and fire in this run (not e.g. after ``stop_at_layer``)."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            self.check_hook_names(names)
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if isinstance(names, (list, tuple)):
            self.check_fired(names, cache, kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    def check_layer_range(self, start_at_layer: Optional[int], stop_at_layer: Optional[int]) -> None:
        """Layers as in TransformerLens (Python slice semantics, negatives count from the end), within
        [-n_layers, n_layers]; a start after the stop would run no block and return its input."""
        n = self.cfg.n_layers
        layers = {}
        for name, value in (("start_at_layer", start_at_layer), ("stop_at_layer", stop_at_layer)):
            if value is None:
                continue
            try:
                layers[name] = operator.index(value)  # ints (numpy's too), not floats or bools
            except TypeError:
                raise TypeError(f"{name} must be an int (a block index), got {type(value).__name__}.") from None
            if isinstance(value, bool) or not -n <= layers[name] <= n:
                raise ValueError(f"{name}={value} is out of range for a tower of {n} blocks; use -{n}..{n}.")
        if len(layers) == 2:
            start, stop = (v + n if v < 0 else v for v in layers.values())
            if start > stop:
                raise ValueError(
                    f"start_at_layer={start_at_layer} comes after stop_at_layer={stop_at_layer}: no block would run."
                )

    @contextlib.contextmanager
    def options(self, **fields):
        """Temporarily set config fields that change what the forward computes but not the weights
        (``use_split_qkv_input``, ``use_attn_result``, ``use_fused_attn``, ``trim_after_pool``)::

            with text.options(use_split_qkv_input=True):
                ...  # per-head query/key/value inputs exist here
        """
        allowed = (*FORWARD_OPTIONS, "trim_after_pool")
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

    def check_fired(self, names: Sequence[str], cache: dict, run_kwargs: dict) -> None:
        silent = [n for n in names if n not in cache]
        if silent:
            settings = {k: run_kwargs[k] for k in ("return_type", "start_at_layer", "stop_at_layer") if k in run_kwargs}
            raise ValueError(
                f"hooks {silent[:6]} did not fire in this run ({settings or 'default settings'}): hooks before "
                "start_at_layer, from stop_at_layer on, or past the requested return_type are not computed. "
                "Drop them from names_filter or change the run's settings."
            )
