"""Where models live: one default for every loader, and configs that follow the weights.

- :func:`resolve_device`: ``device=None`` means TransformerLens's rule (its ``TransformerLensConfig``
  default, and ``HookedTransformer.from_pretrained`` before it): ``"cuda"`` when ``torch.cuda.is_available()``,
  else ``"cpu"``. Every loader takes ``device=None`` with this meaning: :func:`~hooked_clip.load_model` and
  the shipped models, ``HookedCLIP.from_pretrained`` / ``from_hf`` / ``from_open_clip``,
  ``HookedCLIPVision.from_hf`` / ``from_open_clip``. Pass ``device="cpu"`` to stay on the CPU.
- :func:`sync_config`: after ``.to(...)``, ``.cuda()``, ``.cpu()``, ``.half()`` (of a tower or of the
  ``HookedCLIP`` holding it) the tower's ``cfg.device`` and ``cfg.dtype`` name where its weights are, so
  ``to_tokens`` and the analyses build their tensors there.
- :func:`no_tf32`: fp32 matmuls and convolutions in full fp32 on CUDA (TensorFloat-32 off) inside a ``with``
  block; what a replication runs under (the VALSE study records ``"tf32": false`` in its run config).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Union

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


TF32_BACKENDS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")  # torch's per-operator fp32 precision settings


def _backend(name: str):
    out = torch.backends
    for part in name.split("."):
        out = getattr(out, part)
    return out


@contextmanager
def no_tf32() -> Iterator[None]:
    """Run fp32 matmuls and cuDNN convolutions in IEEE fp32, not TensorFloat-32, inside the block; the previous
    settings are restored after. On Ampere and later GPUs cuDNN convolutions (an image tower's patch embedding)
    default to TF32, and ``torch.backends.cuda.matmul`` may have been switched to it: both round the inputs to
    10 mantissa bits. No effect on CPU runs. Uses torch's per-operator ``fp32_precision`` settings (mixing them
    with the legacy ``allow_tf32`` flags is an error in torch)."""
    saved = {name: _backend(name).fp32_precision for name in TF32_BACKENDS}
    try:
        for name in TF32_BACKENDS:
            _backend(name).fp32_precision = "ieee"
        yield
    finally:
        for name, value in saved.items():
            _backend(name).fp32_precision = value


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
