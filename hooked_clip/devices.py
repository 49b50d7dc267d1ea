"""Where models live: one default for every loader, and configs that follow the weights.

- :func:`resolve_device`: ``device=None`` means TransformerLens's rule (its ``TransformerLensConfig``
  default, and ``HookedTransformer.from_pretrained`` before it): ``"cuda"`` when ``torch.cuda.is_available()``,
  else ``"cpu"``. Every loader takes ``device=None`` with this meaning: :func:`~hooked_clip.load_model` and
  the shipped models, ``HookedCLIP.from_pretrained`` / ``from_hf`` / ``from_open_clip``,
  ``HookedCLIPVision.from_hf`` / ``from_open_clip``. Pass ``device="cpu"`` to stay on the CPU.
- :func:`sync_config`: after ``.to(...)``, ``.cuda()``, ``.cpu()``, ``.half()`` (of a tower or of the
  ``HookedCLIP`` holding it) the tower's ``cfg.device`` and ``cfg.dtype`` name where its weights are, so
  ``to_tokens`` and the analyses build their tensors there.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> str:
    """The device a loader puts a model on: ``device`` as given (checked), or, for ``None``, ``"cuda"``
    when CUDA is available and ``"cpu"`` otherwise (TransformerLens's default)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err}); pass e.g. 'cpu', 'cuda', 'cuda:1', "
                         "or None for CUDA when available, else the CPU.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False on this "
                         "machine; pass device='cpu' (or None: CUDA when available, else the CPU).")
    return str(device) if isinstance(device, str) else str(resolved)


def sync_config(tower: nn.Module) -> None:
    """Set ``tower.cfg.device`` / ``cfg.dtype`` to where its weights are after a move. A ``cfg.device`` that
    already names that device (``"cuda"`` for ``cuda:0`` when that is the current one) is kept as written."""
    param = next(tower.parameters(), None)
    cfg = getattr(tower, "cfg", None)
    if param is None or cfg is None:
        return
    if not _same_device(getattr(cfg, "device", None), param.device):
        cfg.device = str(param.device)
    if param.dtype.is_floating_point:
        cfg.dtype = param.dtype


def _same_device(name: Optional[Union[str, torch.device]], actual: torch.device) -> bool:
    if name is None:
        return False
    try:
        named = torch.device(name)
    except (RuntimeError, TypeError):
        return False
    if named.type != actual.type:
        return False
    if named.index is None and actual.type == "cuda":
        return actual.index == torch.cuda.current_device()
    return named.index is None or named.index == actual.index


__all__ = ["resolve_device", "sync_config"]
