"""The package's shape, checked: no import cycle among hooked_clip's modules (imports inside functions count),
no module imports another module's private names, the loaders never import a tower class, and no source file
grows past ~400 lines. Imports are read from the source (ast), so an import hidden in a function is seen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hooked_clip"
TOWER_MODULES = {"hooked_clip.model", "hooked_clip.text.tower", "hooked_clip.vision.tower",
                 "hooked_clip.vision.reference", "hooked_clip.text.readout"}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every import statement anywhere in the file; ``from a
    import b`` names module ``a.b`` where that is a module."""
    out = []
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "") if sub in MODULES else (base, a.name))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {imp for imp, _ in _imports(p) if imp in MODULES and imp != m} for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_hooked_clip_modules():
    assert _cycles(_graph()) == []


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{m}: {imp}.{name}" for m, p in MODULES.items() for imp, name in _imports(p)
                 if imp.startswith("hooked_clip") and name.startswith("_") and imp != m]
    assert offenders == []


def test_the_analyses_import_no_private_names_of_the_model_package():
    offenders = [f"{p.relative_to(ROOT)}: {imp}.{name}" for p in sorted((ROOT / "analyses").rglob("*.py"))
                 for imp, name in _imports(p) if imp.startswith("hooked_clip.") and not imp.startswith(
                     "hooked_clip.analyses") and name.startswith("_")]
    assert offenders == []


def test_loaders_never_import_a_tower_class():
    loaders = {m: p for m, p in MODULES.items() if m.startswith("hooked_clip.loaders")}
    assert len(loaders) >= 8
    offenders = {m: sorted(imp for imp, _ in _imports(p) if imp in TOWER_MODULES) for m, p in loaders.items()}
    assert {m: bad for m, bad in offenders.items() if bad} == {}


def test_one_family_table():
    """Every family, refusals included, is a row of loaders/families.py; no other module holds a map from a
    reference class name to a family."""
    from hooked_clip.loaders.families import FAMILIES, find_family

    names = [row.name for row in FAMILIES]
    assert len(names) == len(set(names))
    assert find_family("transformers", "SiglipModel").name == "siglip"
    assert find_family("transformers", "BlipModel").refused
    for m, p in MODULES.items():
        if m != "hooked_clip.loaders.families":
            assert '"SiglipModel"' not in p.read_text(), m


@pytest.mark.parametrize("folder", ["hooked_clip", "analyses"])
def test_no_source_file_is_longer_than_the_limit(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
