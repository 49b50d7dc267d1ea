"""The three layers import only downwards: the model package (hooked_clip/, the folder) imports nothing
from the analyses (installed as hooked_clip.analyses) or from any study; every package is installed."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_PACKAGE = ROOT / "hooked_clip"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_model_package_source_never_imports_the_analyses():
    offenders = {}
    for path in sorted(MODEL_PACKAGE.rglob("*.py")):
        bad = {m for m in _imports(path) if m == "analyses" or m.startswith(("analyses.", "hooked_clip.analyses"))}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_importing_every_model_module_loads_no_analysis():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in MODEL_PACKAGE.rglob("*.py")
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('hooked_clip.analyses') or m == 'analyses'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_analyses_install_under_hooked_clip_not_as_a_top_level_package():
    import hooked_clip.analyses.patching as patching

    assert Path(patching.__file__).resolve() == ROOT / "analyses" / "patching.py"
    out = subprocess.run([sys.executable, "-c", "import analyses"], capture_output=True, text=True, cwd="/")
    assert out.returncode != 0  # a researcher's own analyses/ folder is not shadowed


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in MODEL_PACKAGE.rglob("__init__.py")}
    found |= {".".join(("hooked_clip",) + p.parent.relative_to(ROOT).parts)
              for p in (ROOT / "analyses").rglob("__init__.py")}
    assert found == listed
