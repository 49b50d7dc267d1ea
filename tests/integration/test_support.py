"""The support table's claims, in CI: one open_clip name per text-tower architecture (reduced to 2 blocks of
width 64) and every CLIP-family transformers class (tiny) is exact to 1e-5 per block and at the output, or
refused with its documented reason; the generated docs/models/support.md lists every open_clip name and
no failure. The full table: ``python benchmarks/support.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import support  # noqa: E402

from hooked_clip.loaders.families import find_family, refused_classes, supported_classes  # noqa: E402

HF_CLASSES = supported_classes("transformers")
REFUSED_HF_CLASSES = refused_classes("transformers")


def _architectures() -> dict[str, str]:
    """Architecture key -> the name with the narrowest text tower (quickest to build)."""
    import open_clip

    groups: dict[str, list[str]] = {}
    for name in support.shipped_open_clip_names():
        groups.setdefault(support.open_clip_architecture(name), []).append(name)
    return {k: min(v, key=lambda n: open_clip.get_model_config(n)["text_cfg"].get("width", 512)) for k, v in groups.items()}


ARCHITECTURES = _architectures()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES.values()))
def test_open_clip_architecture_is_exact_or_refused(name):
    row = support.open_clip_row(name, layers=2, width=64)
    assert row.status in ("exact", "refused"), row
    if row.status == "refused":  # by the loader itself: its message, naming what it cannot express
        assert row.family == "hf-text" and "cannot be loaded" in row.note and "Nothing was downloaded" in row.note, row
    else:
        assert row.max_error <= 1e-5


@pytest.mark.parametrize("class_name", [*HF_CLASSES, *REFUSED_HF_CLASSES])
def test_transformers_class_is_exact_or_refused(class_name):
    row = support.hf_row(class_name)
    assert row.status == ("refused" if class_name in REFUSED_HF_CLASSES else "exact"), row


def test_generated_table_covers_every_name():
    import open_clip

    assert len(support.shipped_open_clip_names()) == len(list((Path(open_clip.__file__).parent / "model_configs").glob("*.json")))
    table = (ROOT / "docs" / "models" / "support.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and " | open_clip | " in line]
    assert {r[0][2:] for r in rows} == set(support.shipped_open_clip_names())
    assert all(r[3] in ("exact", "refused") for r in rows)
    for name in (*HF_CLASSES, *REFUSED_HF_CLASSES):
        assert f"| {name} | transformers |" in table, name
