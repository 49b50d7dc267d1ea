"""Rebuild a run's outputs (report, tables, figures, attention view) only when what they are built from changed.

``.outputs.json`` in the run directory (written atomically after the outputs) holds the digest of their inputs
and the size and modification time of every output file. A rerun whose digest is the same and whose output files
are all there, untouched, rebuilds nothing; a changed input (a new item record, another zoom rule, other
weights or settings in ``config.json``, an edit of this package's code) or an output file that was deleted or
edited rebuilds them all.

The digest covers: the item records and aggregated results (as JSON), the model id, the images note, the run's
``config.json`` (model fingerprint, settings; a run directory without one is always rebuilt, since nothing then
says which weights the attention view would show) and the source of this package (``valse_negation/*.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.valse_negation.formatting import json_safe
from hooked_clip.analyses.run_dirs import atomic_write

OUTPUTS_FILE = ".outputs.json"
INPUT_FILES = ("config.json", "image_embeds.safetensors", OUTPUTS_FILE)  # a run's inputs, not its outputs
_PACKAGE = Path(__file__).resolve().parent


def inputs_digest(run_dir: Path, records: dict[str, dict], results: dict, model_id: str,
                  images_note: str) -> Optional[str]:
    """sha256 of everything the outputs are built from; None (always rebuild) without a ``config.json``."""
    config = Path(run_dir) / "config.json"
    if not config.is_file():
        return None
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(config.read_bytes() + b"\0")
    payload = json_safe({"records": records, "results": results, "model_id": model_id, "images_note": images_note})
    h.update(json.dumps(payload, sort_keys=True, allow_nan=False).encode())
    return h.hexdigest()


def _output_files(run_dir: Path) -> dict[str, list[int]]:
    """Every output file of the run directory: {name: [size, mtime_ns]}."""
    files = {}
    for path in sorted(run_dir.iterdir()):
        if path.is_file() and path.name not in INPUT_FILES and not path.name.startswith("."):
            st = path.stat()
            files[path.name] = [st.st_size, st.st_mtime_ns]
    return files


def outputs_current(run_dir: Path, digest: Optional[str]) -> bool:
    """True if the outputs were built from inputs with this digest and none of them was removed or changed."""
    if digest is None:
        return False
    try:
        saved = json.loads((Path(run_dir) / OUTPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: rebuild (and rewrite it)
        return False
    if not isinstance(saved, dict) or saved.get("digest") != digest or not isinstance(saved.get("files"), dict):
        return False
    now = _output_files(Path(run_dir))
    return bool(saved["files"]) and all(now.get(name) == stamp for name, stamp in saved["files"].items())


def record_outputs(run_dir: Path, digest: Optional[str]) -> None:
    """After building the outputs: remember their inputs' digest and their files (nothing without a digest)."""
    if digest is not None:
        atomic_write(Path(run_dir) / OUTPUTS_FILE, json.dumps({"digest": digest, "files": _output_files(Path(run_dir))}))
