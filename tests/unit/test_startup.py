"""Startup: a fresh ``import hooked_clip; load_model("tiny-negation")`` (tokenizing included) imports none of the
heavy libraries only some paths need (behaviour, not timing: benchmarks/startup.py times it), and
transformer_lens, whose package __init__ is deferred (hooked_clip.lazy), still behaves as a plain import of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

from hooked_clip.lazy import complete_package, defer_package_init

HEAVY = ("open_clip", "transformers", "torchvision", "matplotlib", "pandas", "datasets", "timm")


def test_fresh_import_and_demo_model_load_no_heavy_library():
    code = textwrap.dedent(f"""
        import sys
        import hooked_clip
        model = hooked_clip.load_model("tiny-negation")
        model.to_tokens(["There is no cat."]); model.tokenizer.to_str_tokens([320])
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        import transformer_lens as tl
        from transformer_lens.ActivationCache import ActivationCache
        from transformer_lens.HookedRootModule import HookedRootModule
        assert tl.ActivationCache is ActivationCache and tl.HookedRootModule is HookedRootModule
        assert tl.utilities.get_act_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        assert "TransformerBridge" in tl.__all__ and type(tl) is type(sys)  # the real __init__ ran
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package whose __init__ re-exports a class under its submodule's name, imports a submodule, counts its
    runs and has a module __getattr__ (as transformer_lens's does)."""
    pkg = tmp_path / "deferme"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import builtins
        builtins.deferme_runs = getattr(builtins, "deferme_runs", 0) + 1
        from . import other
        from .Thing import Thing
        from .other import helper as renamed
        __all__ = ["Thing", "other", "renamed"]
        VERSION = 3
        def __getattr__(name):
            if name == "late":
                return "from the module __getattr__"
            raise AttributeError(name)
        """))
    (pkg / "Thing.py").write_text("class Thing:\n    pass\n")
    (pkg / "other.py").write_text("def helper():\n    return 'helped'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    monkeypatch.setattr(builtins, "deferme_runs", 0, raising=False)
    yield "deferme"
    for name in [m for m in sys.modules if m == "deferme" or m.startswith("deferme.")]:
        del sys.modules[name]


def test_deferred_package_runs_its_init_only_when_needed(fake_package):
    import builtins

    module = defer_package_init(fake_package)
    from deferme.Thing import Thing  # a submodule: imports without the __init__
    import deferme

    assert deferme is module and builtins.deferme_runs == 0
    assert deferme.Thing is Thing  # the re-exported class, not the submodule of the same name
    assert deferme.renamed() == "helped" and isinstance(deferme.other, ModuleType)
    with pytest.raises(AttributeError):
        deferme.__wrapped__  # a probe does not run the __init__
    assert builtins.deferme_runs == 0
    assert deferme.VERSION == 3 and builtins.deferme_runs == 1  # a name only the __init__ binds runs it, once
    assert type(deferme) is ModuleType and deferme.__all__ == ["Thing", "other", "renamed"]
    assert deferme.late == "from the module __getattr__" and deferme.Thing is Thing
    complete_package(deferme)
    assert builtins.deferme_runs == 1
    assert defer_package_init(fake_package) is None  # already imported: left alone


def test_dunder_all_runs_the_init(fake_package):
    import builtins

    defer_package_init(fake_package)
    import deferme

    assert deferme.__all__ == ["Thing", "other", "renamed"] and builtins.deferme_runs == 1


def test_failing_init_leaves_the_package_deferred(fake_package, tmp_path):
    init = tmp_path / "deferme" / "__init__.py"
    init.write_text(init.read_text() + "\nraise ImportError('a dependency is broken')\n")
    defer_package_init(fake_package)
    import deferme

    for _ in range(2):  # the same error each time, not a half-initialised module
        with pytest.raises(ImportError, match="a dependency is broken"):
            deferme.VERSION
    assert deferme.renamed() == "helped"
