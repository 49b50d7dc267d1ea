"""Run directories of the long commands (``valse-negation``, ``localize``, ``checkpoint-diff``, ``sweep``): what
they are called, how a file gets into one, and what a rerun may reuse. One owner for all four.

Names. A default run directory is named by the model's name (human-readable, first) and its checkpoint
fingerprint (:func:`hooked_clip.fingerprint.fingerprint`): ``runs/valse-negation-tiny-negation-pixels-fp-…``.
Two different weights under one name never share a directory; one model under two names has one fingerprint
(the runs' configs record it and comparisons refuse to count it twice). An explicit ``--out`` is used as given.

Writes. Every file is written to a temporary name beside its place and renamed into it (``os.replace``), so a
crash leaves the old file or the new one, never half of one; temporary names start with a dot.

Reuse. A run directory's ``config.json`` records what the run measures (models' fingerprints, settings):
:func:`claim` writes it on the first run and refuses a directory whose record differs, naming the fields (and,
for the weights, both models). Long runs keep their per-item results in :class:`ChunkStore` files, each saved
with the key of what it was computed from; a rerun loads a chunk whose key matches (the same numbers, bit for
bit) and computes the others again, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from hooked_clip.fingerprint import Fingerprint
from hooked_clip.loaders.files import read_json

RUNS = Path("runs")  # the default parent of every run directory, relative to the working directory


class RunDirMismatchError(ValueError):
    """The run directory belongs to another model or configuration."""


# ----------------------------------------------------------------------------------------------------- names
def safe_name(model_id: str) -> str:
    """A file-system-safe directory name for a model id (HF id, ``open_clip:NAME:TAG``, path)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id.strip("/")) or "model"


def _short(fp: Union[Fingerprint, str]) -> str:
    return fp.short if isinstance(fp, Fingerprint) else str(fp)


def model_dir_name(model_id: str, fp: Union[Fingerprint, str]) -> str:
    """``<name>-<fingerprint>``: the directory of one model's run (a comparison's sub-directories too)."""
    return f"{safe_name(model_id)}-{_short(fp)}"


def default_run_dir(kind: str, *models: tuple[str, Union[Fingerprint, str]]) -> Path:
    """``runs/<kind>-<name>-<fingerprint>`` for one model, ``...-<name A>-<fp A>-vs-<name B>-<fp B>`` for a pair."""
    if not models:
        raise ValueError("a default run directory is named by at least one (model id, fingerprint).")
    return RUNS / (f"{kind}-" + "-vs-".join(model_dir_name(m, fp) for m, fp in models))


# ---------------------------------------------------------------------------------------------------- writes
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (single-threaded), not while a run may be writing


def atomic_save(path: Path, save: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """``save(tmp)`` writes a temporary file beside ``path`` (a dot name ending in ``suffix``: keep the
    extension a writer looks at, e.g. ``.png`` for ``savefig``), then it is renamed into place. The file gets
    the mode a plain ``open`` would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        save(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def final_name(path) -> str:
    """The name of the file that ``path`` becomes: itself, or for one of :func:`atomic_save`'s temporary files
    (``.NAME.<random>.tmp<suffix>``) ``NAME`` (for code that watches files being written, e.g. a test's spy)."""
    name = Path(path).name
    if name.startswith(".") and ".tmp" in name:
        head, _, _ = name[1:].rpartition(".tmp")
        return head.rpartition(".")[0] or name
    return name


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place (never half-written)."""
    atomic_save(path, lambda tmp: tmp.write_text(text))


def atomic_csv(df, path: Path, **kwargs) -> None:
    """``df.to_csv(path, **kwargs)`` (a pandas DataFrame) into place atomically."""
    atomic_save(path, lambda tmp: df.to_csv(tmp, **kwargs))


def atomic_savefig(fig, path: Path, **kwargs) -> None:
    """``fig.savefig`` into place atomically (the temporary file keeps the extension, so the format is the same)."""
    atomic_save(path, lambda tmp: fig.savefig(tmp, **kwargs), suffix=f".tmp{Path(path).suffix}")


# ----------------------------------------------------------------------------------------------------- reuse
def _describe_models(models: Mapping[str, Mapping]) -> str:
    return ", ".join(f"{role} {m.get('name')!r} ({_fp_short(m.get('fingerprint'))})" for role, m in models.items())


def _fp_short(record) -> str:
    if isinstance(record, Mapping):
        try:
            return Fingerprint.from_dict(record).short
        except (KeyError, TypeError, ValueError):
            return "an unreadable fingerprint"
    return str(record)


def models_record(**models: tuple[str, Fingerprint]) -> dict:
    """``{role: {"name", "fingerprint"}}`` for a run's config (``base=(name, fp), tuned=(name, fp)``)."""
    return {role: {"name": name, "fingerprint": fp.as_dict()} for role, (name, fp) in models.items()}


def _default_models(config: Mapping) -> Optional[Mapping]:
    return config.get("models")


def claim(run_dir: Path, config: dict, *, ignore: Sequence[str] = (), flag: str = "--out",
          models: Callable[[Mapping], Optional[Mapping]] = _default_models,
          has_results: Optional[Callable[[Path], bool]] = None) -> None:
    """Make ``run_dir`` this run's: write ``config.json`` on the first run; on a rerun refuse (with
    :class:`RunDirMismatchError`) a directory whose recorded config differs in anything but ``ignore``.

    The models a config records (``models(config)``: ``{role: {"name", "fingerprint"}}``, by default
    ``config["models"]``, see :func:`models_record`) are compared by fingerprint only (a model's name is not what
    it is), and a difference names both runs' models. ``has_results(run_dir)``: whether the directory holds
    results already (refused without a ``config.json``, since nothing says what made them)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{flag} {str(run_dir)!r} is a file; a run writes a directory there. Pass a new "
                                 "directory (or an earlier run's directory, to resume it).")
    path = run_dir / "config.json"
    if not path.exists():
        if has_results is not None and run_dir.is_dir() and has_results(run_dir):
            raise RunDirMismatchError(f"{run_dir} holds item records but no config.json, so which model and settings "
                                      f"measured them is unknown; use a new {flag} directory, or delete this one.")
        atomic_write(path, json.dumps(config, indent=1))
        return
    old = read_json(path, "the run's settings (JSON)", f"Delete the run directory {run_dir} to start over, or pass "
                    f"another {flag}.")
    if not isinstance(old, dict):
        raise RunDirMismatchError(f"{path} is not a run's settings (a JSON object); delete {run_dir} to start over, "
                                  f"or pass another {flag}.")
    now_models, old_models = models(config), models(old)
    if now_models is not None:
        same = isinstance(old_models, Mapping) and set(old_models) == set(now_models) and all(
            isinstance(old_models[r], Mapping) and old_models[r].get("fingerprint") == now_models[r]["fingerprint"]
            for r in now_models)
        if not same:
            was = _describe_models(old_models) if isinstance(old_models, Mapping) else "models it does not record"
            raise RunDirMismatchError(
                f"{run_dir} holds a run of other weights (fingerprint differs: {was}), not of "
                f"{_describe_models(now_models)}; pass another {flag} (the default directory is named by the "
                "fingerprint), or delete this one to start over.")
    skip = {"models", *ignore}
    diff = sorted(k for k in set(old) | set(config) if k not in skip and old.get(k) != config.get(k))
    if diff:
        unrecorded = [k for k in diff if k not in old]
        older = (f" The earlier run did not record {unrecorded}: it was made by an older version of hooked_clip, "
                 "whose numbers are not reused." if unrecorded else "")
        raise RunDirMismatchError(
            f"{run_dir} holds a run of another configuration (differs in {diff}: "
            f"{ {k: old.get(k) for k in diff} } vs { {k: config.get(k) for k in diff} }); use a new {flag} "
            f"directory, or delete this one to start over.{older}")


def chunk_key(*parts) -> str:
    """A chunk's key: sha256 (hex, 16 digits) of what it is computed from, as JSON (models' fingerprints,
    settings, the chunk's items)."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ChunkStore:
    """Per-chunk results of a long run, ``folder/<index>.pt`` (torch's safe ``weights_only`` format: tensors,
    lists, strings, numbers), each saved atomically with its key. :meth:`load` returns a chunk's payload where
    its key matches (else None: compute it again and :meth:`save` it, replacing the old file)."""

    def __init__(self, folder: Optional[Path]):
        self.folder = None if folder is None else Path(folder)

    def path(self, index: int) -> Optional[Path]:
        return None if self.folder is None else self.folder / f"{index:05d}.pt"

    def load(self, index: int, key: str) -> Optional[dict]:
        path = self.path(index)
        if path is None or not path.exists():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged chunk (cut short, not a torch file) is computed again
            return None
        return saved["fields"] if isinstance(saved, dict) and saved.get("key") == key else None

    def save(self, index: int, key: str, fields: dict) -> None:
        path = self.path(index)
        if path is not None:
            atomic_save(path, lambda tmp: torch.save({"key": key, "fields": fields}, tmp))


__all__ = ["RUNS", "ChunkStore", "RunDirMismatchError", "atomic_csv", "atomic_save", "atomic_savefig", "atomic_write",
           "chunk_key", "claim", "default_run_dir", "final_name", "model_dir_name", "models_record", "safe_name"]
