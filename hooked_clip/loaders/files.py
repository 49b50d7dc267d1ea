"""Reading weight and JSON files without running code from them, with errors that name the file.

- :func:`read_state_dict`: tensors from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``,
  so no pickled code runs). TorchScript archives are refused with :class:`UnsafeCheckpointError`:
  they hold code, and deserialising one runs it.
- :func:`read_safetensors`, :func:`read_json`: one file each, any damage (empty, truncated, not the
  format) reported as :class:`UnreadableFileError` naming the file.
- :func:`check_checkpoint_dir`: a ``save_pretrained`` directory checked before transformers reads it
  (empty, no ``config.json``, damaged config or weight files), so the error names the file.
"""

from __future__ import annotations

from hooked_clip.errors import UnreadableFileError, UnsafeCheckpointError

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Union

from torch import Tensor

PathLike = Union[str, os.PathLike]






def unreadable(path: PathLike, what: str, why: Any, fix: str = "") -> UnreadableFileError:
    """The error for a damaged file: names it, says what it should hold and what to do."""
    size = os.path.getsize(path) if os.path.isfile(path) else None
    first_line = (str(why).strip().splitlines() or [""])[0]
    state = "is empty (0 bytes)" if size == 0 else f"cannot be read as {what} ({type(why).__name__}: {first_line})"
    fix = fix or "It may be truncated by an interrupted download or copy: fetch or write it again."
    return UnreadableFileError(f"{str(path)!r} {state}. {fix}")


def is_torchscript(path: PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl``), read without loading it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def read_safetensors(path: PathLike, fix: str = "") -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file (on the CPU); ``fix`` says what to do if it is damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as err:  # SafetensorError, OSError, ... from a damaged header or body
        raise unreadable(path, "a safetensors file", err, fix) from None


def read_state_dict(path: PathLike) -> dict[str, Tensor]:
    """A checkpoint's state dict, without executing anything stored in the file.

    ``.safetensors`` files, and ``torch.save`` files of a state dict (optionally under a ``"state_dict"``
    key, keys optionally prefixed ``module.``). TorchScript archives (OpenAI's original ``.pt`` files)
    are refused: see :class:`UnsafeCheckpointError`.
    """
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file {path!r}.")
    if path.endswith(".safetensors"):
        sd = read_safetensors(path)
    else:
        if is_torchscript(path):
            raise UnsafeCheckpointError(
                f"{path!r} is a TorchScript archive; loading it would run the code stored in it, so hooked_clip "
                "refuses it. Get the same weights as tensors only: the transformers checkpoint "
                "(HookedCLIP.from_pretrained('openai/clip-vit-base-patch32'), safetensors) or open_clip's "
                "pretrained tag (its hub copies are safetensors / state dicts)."
            )
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, or objects weights_only does not allow
            raise unreadable(
                path, "a torch.save state dict", err,
                "It may be truncated (re-download or re-save it), or hold more than tensors: save "
                "`model.state_dict()` with torch.save, or use safetensors.",
            ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise UnreadableFileError(
            f"{path!r} does not hold a state dict of tensors (got {type(sd).__name__}); save "
            "`model.state_dict()` with torch.save or safetensors."
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


def read_json(path: PathLike, what: str = "JSON", fix: str = "") -> Any:
    """A JSON file's content; a damaged or empty file is an :class:`UnreadableFileError` naming it."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise unreadable(path, what, err, fix or "Repair or replace the file (it may be truncated).") from None


def check_checkpoint_dir(path: PathLike) -> None:
    """Refuse a local checkpoint directory that transformers would misreport: an empty one, one without
    ``config.json``, a damaged ``config.json``, or a weight file that is empty or truncated (read from
    its header / zip directory only, so this is cheap)."""
    from safetensors import safe_open

    folder = Path(path)
    how = "Pass a directory written by save_pretrained (config.json plus model.safetensors or pytorch_model.bin)."
    if not any(folder.iterdir()):
        raise FileNotFoundError(f"{str(folder)!r} is an empty directory. {how}")
    config = folder / "config.json"
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8])
        raise FileNotFoundError(f"{str(folder)!r} has no config.json (it holds: {found}). {how}")
    read_json(config, "a model configuration (JSON)", "Re-save the checkpoint with save_pretrained.")
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as err:
            raise unreadable(weights, "a safetensors file", err) from None
    for weights in sorted(folder.glob("*.bin")):
        if os.path.getsize(weights) == 0 or not zipfile.is_zipfile(weights):
            raise unreadable(weights, "a torch.save archive", zipfile.BadZipFile("no zip directory at its end"))
