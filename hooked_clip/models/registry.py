"""Models by name: the ones whose weights ship inside the package (offline), else a local directory or an
HF hub id. ``load_model`` is the one entry point; ``SHIPPED_MODELS`` maps each shipped name to its loader
(see docs/models/ for their cards)."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import torch

from hooked_clip.model import HookedCLIP
from hooked_clip.tower import pop_forward_options
from hooked_clip.config import resolve_dtype
from hooked_clip.devices import resolve_device
from hooked_clip.weight_processing import process_weights


def _tiny_negation(device: Optional[str] = None, dtype: Union[torch.dtype, str] = torch.float32, **processing) -> HookedCLIP:
    from hooked_clip.models.tiny_negation import load

    dtype = resolve_dtype(dtype)
    model = load(device=resolve_device(device))
    process_weights(model, **processing)
    return model.to(dtype)  # the towers' cfg.dtype follow (HookedTower._apply)


def _tiny_negation_pixels(device: Optional[str] = None, dtype: Union[torch.dtype, str] = torch.float32,
                          **processing) -> HookedCLIP:
    """``tiny-negation``'s text tower with a hooked ViT that reads rendered scenes (processing: text tower)."""
    from hooked_clip.models.tiny_negation.pixels import load_pixels

    dtype = resolve_dtype(dtype)
    model = load_pixels(device=resolve_device(device))
    process_weights(model, **processing)
    return model.to(dtype)  # both towers' cfg.dtype follow (HookedTower._apply)


def _tiny_pair(name: str):
    """A loader of one model of the toy checkpoint pair (``tiny-pair-base`` / ``tiny-pair-tuned``)."""

    def loader(device: Optional[str] = None, dtype: Union[torch.dtype, str] = torch.float32, **processing) -> HookedCLIP:
        from hooked_clip.models.tiny_pair import load

        dtype = resolve_dtype(dtype)
        model = load(name, device=resolve_device(device))
        process_weights(model, **processing)
        return model.to(dtype)

    return loader


def _tiny_count(device: Optional[str] = None, dtype: Union[torch.dtype, str] = torch.float32, **processing) -> HookedCLIP:
    """``tiny-count``: existence and counting (0-4); its scenes repeat an object's name once per instance."""
    from hooked_clip.models.tiny_count import load

    dtype = resolve_dtype(dtype)
    model = load(device=resolve_device(device))
    process_weights(model, **processing)
    return model.to(dtype)


SHIPPED_MODELS: dict[str, Callable[..., HookedCLIP]] = {"tiny-negation": _tiny_negation,
                                                        "tiny-negation-pixels": _tiny_negation_pixels,
                                                        "tiny-pair-base": _tiny_pair("tiny-pair-base"),
                                                        "tiny-pair-tuned": _tiny_pair("tiny-pair-tuned"),
                                                        "tiny-count": _tiny_count}


def load_model(name: str, **kwargs: Any) -> HookedCLIP:
    """A model by name: one shipped with the package (offline), else a local directory or HF hub id
    (see :meth:`HookedCLIP.from_pretrained`). Every model takes ``device`` (default ``None``: CUDA when
    available, else the CPU, as every loader and TransformerLens; ``device="cpu"`` to stay on the CPU) and
    ``dtype`` (a torch dtype or its name, e.g. ``"float16"``)."""
    if name in SHIPPED_MODELS:
        options = pop_forward_options(kwargs)
        model = SHIPPED_MODELS[name](**kwargs)
        model.set_options(**options)
        return model
    if os.path.isdir(name) or "/" in name:
        return HookedCLIP.from_pretrained(name, **kwargs)
    raise ValueError(
        f"No shipped model {name!r} (shipped: {sorted(SHIPPED_MODELS) or 'none yet'}). Pass an HF hub id such "
        "as 'openai/clip-vit-base-patch32', a local directory, or use HookedCLIP.from_open_clip(...)."
    )
