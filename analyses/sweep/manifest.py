"""A sweep manifest (TOML): the models, the datasets and the analyses with their settings.

```toml
[sweep]                        # optional
device = "cpu"                 # where units run (default: CUDA when available, else the CPU)
threads = 1                    # CPU threads per unit (default 1; Ray gives each task as many CPUs)

[[models]]
name = "clip-b32"              # the label in tables (unique)
path = "openai/clip-vit-base-patch32"   # an HF hub id, a save_pretrained directory or a shipped model name
[[models]]
name = "negclip"
open_clip = "ViT-B-32-quickgelu"        # an open_clip model name ...
pretrained = "ckpt/negclip.pt"          # ... with a pretrained tag or a local weights file
tokenizer = "tok/"                      # optional: a tokenizer directory (else the checkpoint's own)

[[datasets]]
name = "existence"
path = "valse/existence.json"  # a VALSE existence-format file of caption/foil pairs
images = "v7w/"                # optional: the images folder (v7w_<id>.jpg), "scenes" for the shipped demo
                               # models' synthesized scenes; left out: the text-only parts

[analyses.valse-negation]      # each analysis by name, with its settings
limit = 40
```

Relative paths are read from the manifest's folder. Every bad field is one :class:`ManifestError` naming the
field, what it holds and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from hooked_clip.analyses.sweep.analyses import ANALYSES
from hooked_clip.models.registry import SHIPPED_MODELS


class ManifestError(ValueError):
    """A manifest field that cannot be used."""


SCENES = "scenes"  # the dataset images of the shipped demo models (synthesized scenes)


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint: ``path`` (hub id / directory / shipped name) or ``open_clip`` (+ ``pretrained``)."""

    name: str
    path: Optional[str] = None
    open_clip: Optional[str] = None
    pretrained: Optional[str] = None
    tokenizer: Optional[str] = None

    def load(self, device: Optional[str] = None):
        from hooked_clip import HookedCLIP, load_model

        extra = {} if self.tokenizer is None else {"tokenizer": self.tokenizer}
        if self.open_clip is not None:
            return HookedCLIP.from_open_clip(self.open_clip, pretrained=self.pretrained, device=device, **extra)
        return load_model(self.path, device=device, **extra)

    def describe(self) -> str:
        if self.open_clip is not None:
            return f"open_clip:{self.open_clip}:{self.pretrained}"
        return str(self.path)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: a VALSE existence-format file, and optionally its images."""

    name: str
    path: str
    images: Optional[str] = None

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the data file's bytes and of the images: a folder's by the names and bytes of the valid
        items' image files (the study's ``FolderImages.identity``), so new files under the same folder are a new
        dataset version; ``"scenes"`` by name (the demo models' scenes are rendered from the items)."""
        h = hashlib.sha256(Path(self.path).read_bytes())
        h.update(f"\0images={self.images}".encode())
        if self.images is not None and self.images != SCENES:
            from hooked_clip.analyses.valse_negation.data import load_items
            from hooked_clip.analyses.valse_negation.images import FolderImages

            h.update(FolderImages(self.images).identity(load_items(self.path)).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    analyses: dict = field(default_factory=dict)  # analysis name -> its settings object
    device: Optional[str] = None
    threads: int = 1

    def settings_hash(self, analysis: str) -> str:
        """sha256 of the analysis name and the settings that change its results."""
        settings = ANALYSES[analysis].key_settings(self.analyses[analysis])
        return hashlib.sha256(json.dumps({"analysis": analysis, **settings}, sort_keys=True).encode()).hexdigest()


_MODEL_KEYS = {"name", "path", "open_clip", "pretrained", "tokenizer"}
_DATASET_KEYS = {"name", "path", "images"}
_SWEEP_KEYS = {"device", "threads"}
_TOP_KEYS = {"sweep", "models", "datasets", "analyses"}


def load_manifest(path) -> Manifest:
    """Read and check a manifest file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep manifest at {str(path)!r}; pass the path of a TOML file "
                                "(see docs/tutorials/11-sweeps.md for the format).")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{path} is not valid TOML ({err}); fix the line it names.") from None
    return parse_manifest(data, path)


def parse_manifest(data: dict, path: Path) -> Manifest:
    where = str(path)
    _unknown(data, _TOP_KEYS, where, "a manifest holds [sweep], [[models]], [[datasets]] and [analyses.NAME]")
    sweep = data.get("sweep", {})
    _table(sweep, "[sweep]", where)
    _unknown(sweep, _SWEEP_KEYS, f"{where} [sweep]", "")
    device = sweep.get("device")
    if device is not None and not isinstance(device, str):
        raise ManifestError(f"{where}: [sweep] device must be a string such as \"cpu\" or \"cuda\", got {device!r}.")
    threads = sweep.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ManifestError(f"{where}: [sweep] threads must be a positive integer (CPU threads per unit), got {threads!r}.")
    base = path.resolve().parent
    models = tuple(_model(m, i, base, where) for i, m in enumerate(_entries(data, "models", where)))
    datasets = tuple(_dataset(d, i, base, where) for i, d in enumerate(_entries(data, "datasets", where)))
    for kind, specs in (("models", models), ("datasets", datasets)):
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ManifestError(f"{where}: [[{kind}]] names {twice} more than once; give each entry its own name.")
    analyses = data.get("analyses")
    if not analyses:
        raise ManifestError(f"{where}: no [analyses.NAME] table; add one of {sorted(ANALYSES)}, e.g. "
                            f"[analyses.{next(iter(ANALYSES))}].")
    _table(analyses, "[analyses]", where)
    settings = {}
    for name, values in analyses.items():
        if name not in ANALYSES:
            raise ManifestError(f"{where}: unknown analysis [analyses.{name}]; the sweep runs {sorted(ANALYSES)}.")
        _table(values, f"[analyses.{name}]", where)
        try:
            settings[name] = ANALYSES[name].settings(values, f"{where} [analyses.{name}]")
        except (TypeError, ValueError) as err:
            raise ManifestError(str(err)) from None
    return Manifest(path.resolve(), models, datasets, settings, device, threads)


def _entries(data: dict, kind: str, where: str) -> list[dict]:
    entries = data.get(kind)
    if not entries:
        raise ManifestError(f"{where}: no [[{kind}]] entry; a sweep needs at least one.")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ManifestError(f"{where}: {kind} must be an array of tables, written [[{kind}]] (one per entry).")
    return entries


def _table(value: Any, what: str, where: str) -> None:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {what} must be a table, got {value!r}.")


def _unknown(entry: dict, known: set, where: str, hint: str) -> None:
    extra = sorted(set(entry) - known)
    if extra:
        raise ManifestError(f"{where}: unknown field(s) {extra}; known: {sorted(known)}" + (f" ({hint})." if hint else "."))


def _string(entry: dict, key: str, where: str, required: bool = False) -> Optional[str]:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: {key} must be a non-empty string, got {value!r}.")
    return value


def _local(value: Optional[str], base: Path, must_exist: bool, where: str, key: str) -> Optional[str]:
    """A path relative to the manifest's folder, made absolute (a hub id or tag that is no local path is kept)."""
    if value is None:
        return None
    candidate = (base / value).expanduser()
    if candidate.exists():
        return str(candidate.resolve())
    if must_exist:
        raise ManifestError(f"{where}: {key} = {value!r} does not exist (relative paths are read from "
                            f"{base}); fix the path.")
    return value


def _model(entry: dict, i: int, base: Path, where: str) -> ModelSpec:
    at = f"{where} [[models]] #{i + 1}"
    _unknown(entry, _MODEL_KEYS, at, "")
    name = _string(entry, "name", at, required=True)
    at = f"{where} model {name!r}"
    path, oc = _string(entry, "path", at), _string(entry, "open_clip", at)
    pretrained, tokenizer = _string(entry, "pretrained", at), _string(entry, "tokenizer", at)
    if (path is None) == (oc is None):
        raise ManifestError(f"{at}: give exactly one of path (an HF hub id, directory or shipped name) and "
                            f"open_clip (an open_clip model name, with pretrained = a tag or a file).")
    if path is not None and pretrained is not None:
        raise ManifestError(f"{at}: pretrained belongs to open_clip models; drop it or write open_clip = NAME.")
    if oc is not None and pretrained is None:
        raise ManifestError(f"{at}: open_clip = {oc!r} needs pretrained = a tag (e.g. 'openai') or a weights file; "
                            "without it open_clip draws new random weights at every load.")
    if path in SHIPPED_MODELS and tokenizer is not None:
        raise ManifestError(f"{at}: the shipped model {path!r} carries its own tokenizer; drop tokenizer.")
    if oc is not None:
        import open_clip

        if oc not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(oc, open_clip.list_models(), n=3)
            raise ManifestError(f"{at}: open_clip has no model {oc!r}" + (f"; did you mean {close}?" if close else "."))
        if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(oc):
            pretrained = _local(pretrained, base, True, at, "pretrained")
    if path is not None:
        looks_local = path.startswith((".", "/", "~")) or (base / path).exists()
        path = _local(path, base, looks_local, at, "path")
    return ModelSpec(name, path, oc, pretrained, _local(tokenizer, base, True, at, "tokenizer"))


def _dataset(entry: dict, i: int, base: Path, where: str) -> DatasetSpec:
    at = f"{where} [[datasets]] #{i + 1}"
    _unknown(entry, _DATASET_KEYS, at, "")
    name = _string(entry, "name", at, required=True)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ManifestError(f"{at}: name {name!r} names the dataset's folders; use letters, digits, '.', '_' and '-'.")
    at = f"{where} dataset {name!r}"
    path = _local(_string(entry, "path", at, required=True), base, True, at, "path")
    if not Path(path).is_file():
        raise ManifestError(f"{at}: path {path!r} is a folder; give the data file (a VALSE existence-format JSON).")
    images = _string(entry, "images", at)
    if images is not None and images != SCENES:
        images = _local(images, base, True, at, "images")
        if not Path(images).is_dir():
            raise ManifestError(f"{at}: images {images!r} is not a folder; give the folder of the images.")
    from hooked_clip.analyses.valse_negation.data import load_items

    load_items(path)  # the file's format, checked before any work
    return DatasetSpec(name, path, images)
