"""Lazy package exports: ``from hooked_clip.vision import HookedCLIPVision`` imports the tower module only when
the name is first asked for, so reading a config or a tokenizer's contract imports no tower (and no open_clip)."""

from __future__ import annotations

import ast
import sys
from importlib import import_module
from importlib.util import find_spec, module_from_spec
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (a submodule) on first use."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


# -- deferred package __init__ ---------------------------------------------------------------------------------
# transformer_lens 4.x's package __init__ (and that of its ``utilities``) imports transformers, datasets and
# pandas (~3.5 s) though HookPoint, HookedRootModule, ActivationCache and the config need none of them. A
# deferred package is the real package (same __path__, __spec__) whose __init__ has not run yet: a submodule
# imports as usual, a name the __init__ re-exports (``from .x import Name``) imports just ``.x``, and any other
# attribute runs the real __init__ first, after which the module is exactly what ``import package`` gives.


def _reexports(path: str, package: str) -> tuple[dict[str, tuple[str, str | None]], set[str]]:
    """The relative imports of an __init__ as ``{name: (module, attribute or None for the module itself)}``,
    and the other names its top level binds (assignments, functions, classes, absolute imports)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names: dict[str, tuple[str, str | None]] = {}
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                where = f"{package}.{node.module}" if node.module else f"{package}.{alias.name}"
                names[alias.asname or alias.name] = (where, alias.name if node.module else None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            bound |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names, bound - set(names)


class _DeferredPackage(ModuleType):
    """A package whose __init__ runs on the first attribute it does not re-export (see above)."""

    def __getattr__(self, name: str) -> Any:
        where = self.__dict__["_deferred_reexports"].get(name)
        if where is not None:
            module = import_module(where[0])
            value = module if where[1] is None else getattr(module, where[1])
            ModuleType.__setattr__(self, name, value)
            return value
        if name.startswith("__") and name not in self.__dict__["_deferred_bound"]:
            raise AttributeError(name)  # a probe (copy, pickle, inspect), not worth running the __init__
        complete_package(self)
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system sets ``package.sub = <module sub>`` after importing a submodule; where the
        # __init__ re-exports a same-named attribute instead (``from .ActivationCache import ActivationCache``)
        # the attribute, not the module, is what ``package.ActivationCache`` must give.
        where = self.__dict__["_deferred_reexports"].get(name)
        if isinstance(value, ModuleType) and where is not None and where[1] is not None:
            return
        ModuleType.__setattr__(self, name, value)


def defer_package_init(name: str) -> ModuleType | None:
    """Put ``name`` (a package not imported yet, its parent imported or deferred) in ``sys.modules`` with its
    __init__ deferred. Returns the module, or None (nothing done) if it is already imported or not a package."""
    if name in sys.modules:
        return None
    spec = find_spec(name)
    if spec is None or spec.submodule_search_locations is None or not spec.has_location or spec.origin is None:
        return None
    module = module_from_spec(spec)
    module.__dict__["_deferred_reexports"], module.__dict__["_deferred_bound"] = _reexports(spec.origin, name)
    module.__class__ = _DeferredPackage
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def complete_package(module: ModuleType) -> ModuleType:
    """Run a deferred package's real __init__ (once); afterwards it is a plain module. No-op otherwise."""
    if type(module) is not _DeferredPackage:
        return module
    before = dict(module.__dict__)
    del module.__dict__["_deferred_reexports"], module.__dict__["_deferred_bound"]
    object.__setattr__(module, "__class__", ModuleType)
    spec = module.__spec__
    try:
        exec(spec.loader.get_code(spec.name), module.__dict__)  # type: ignore[union-attr]
    except BaseException:  # back to deferred, as before: the next use tries again and shows the same error
        module.__dict__.clear()
        module.__dict__.update(before)
        object.__setattr__(module, "__class__", _DeferredPackage)
        raise
    return module


#: transformer_lens's packages whose __init__ imports transformers/datasets/pandas (parents first).
TRANSFORMER_LENS_HEAVY_INITS = ("transformer_lens", "transformer_lens.utilities", "transformer_lens.conversion_utils")


def complete_transformer_lens() -> None:
    """Run transformer_lens's deferred __init__s (before loading through transformers: TL's __init__ patches
    huggingface_hub to accept an int in a float config field, and a full import must behave the same)."""
    for name in TRANSFORMER_LENS_HEAVY_INITS:
        if name in sys.modules:
            complete_package(sys.modules[name])


def defer_transformer_lens_init() -> None:
    """Defer the heavy __init__s of transformer_lens (no-op if it is already imported): ``HookPoint``,
    ``HookedRootModule``, ``ActivationCache``, ``FactoredMatrix`` and the config then cost no transformers."""
    for name in TRANSFORMER_LENS_HEAVY_INITS:
        defer_package_init(name)
