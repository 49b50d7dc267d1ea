"""mkdocs hook: lay out the installed package tree for the API reference.

``hooked_clip.analyses`` is installed from the top-level ``analyses/`` folder (a setuptools package_dir
mapping), which griffe's static analysis cannot follow. Before each build this copies ``hooked_clip/`` and
``analyses/`` into ``.cache/api_source/hooked_clip/{,analyses/}`` (git-ignored), where mkdocstrings reads
them (``paths`` in mkdocs.yml)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".cache" / "api_source"


def on_startup(**kwargs):
    shutil.rmtree(TARGET, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.safetensors")
    shutil.copytree(ROOT / "hooked_clip", TARGET / "hooked_clip", ignore=ignore)
    shutil.copytree(ROOT / "analyses", TARGET / "hooked_clip" / "analyses", ignore=ignore)

