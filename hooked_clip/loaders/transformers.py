"""Reading transformers checkpoints: an in-memory model (:func:`read_hf`) or a directory / hub id
(:func:`load_hf_pretrained`), strictly (missing, unexpected or mis-shaped weights are refused, never filled in
at random). The family table (:mod:`hooked_clip.loaders.families`) says which reader reads which class."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError, UnsupportedModelTypeError
from hooked_clip.loaders.checkpoint import Checkpoint, TextCheckpoint
from hooked_clip.loaders.convert import mismatch_summary
from hooked_clip.loaders.families import class_for_model_type, family_for
from hooked_clip.loaders.hf_vision import PIXEL_BACKEND
from hooked_clip.loaders.files import check_checkpoint_dir
from hooked_clip.loaders.hub import hub_reachable, unavailable
from hooked_clip.lazy import complete_transformer_lens


def read_hf(hf_model: nn.Module, image_processor: Any = None, tokenizer: Any = None, **cfg_overrides) -> Checkpoint:
    """A transformers model of a family in the table, read into configs and state dicts. ``cfg_overrides``
    (``device``, ``dtype`` and any text-config field) set the text config; ``device``/``dtype`` the image
    tower's too. A class the table refuses or does not know is an :class:`~hooked_clip.errors.UnsupportedModelTypeError`
    (a ``TypeError`` and an ``UnsupportedModelError``) naming the reason."""
    name = type(hf_model).__name__
    family = family_for("transformers", name, what=f"from_hf: a transformers {name}", error=UnsupportedModelTypeError)
    cfg, state_dict = family.text(hf_model, family, **cfg_overrides)
    vision = None
    if family.vision is not None and hasattr(hf_model, "vision_model"):
        vision = family.vision(hf_model, image_processor, device=cfg.device, dtype=cfg.dtype)
    return Checkpoint(TextCheckpoint(cfg, state_dict, family.tokenizer(tokenizer, cfg)), vision,
                      *_logit_parameters(hf_model), family.name)


def _logit_parameters(hf_model: nn.Module) -> tuple[Optional[float], Optional[float]]:
    """(log logit scale, logit bias) of a transformers model: ``logit_scale`` (CLIP and most), or ALIGN's
    ``temperature`` (its logits are cos / temperature, so the log scale is -log(temperature))."""
    scale, bias = (getattr(hf_model, k, None) for k in ("logit_scale", "logit_bias"))
    temperature = getattr(hf_model, "temperature", None)
    if scale is None and isinstance(temperature, torch.Tensor):
        scale = -torch.log(temperature.detach().reshape(()))
    return (None if scale is None else float(scale.detach().reshape(())),
            None if bias is None else float(bias.detach().reshape(())))


def load_hf_pretrained(name_or_path: Union[str, Path]) -> tuple[nn.Module, Any, Path]:
    """(transformers model, image processor or None, folder of its tokenizer files) from a directory written by
    ``save_pretrained`` or a hub id (the local cache first; with no network a clear
    :class:`~hooked_clip.errors.WeightsUnavailableError` at once)."""
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a file; from_pretrained takes a directory written by save_pretrained or a "
            "hub id. For an open_clip checkpoint file use HookedCLIP.from_open_clip(model_name, pretrained=file)."
        )
    if not path.exists() and not _looks_like_hub_id(name_or_path):
        raise FileNotFoundError(
            f"No such directory: {str(path)!r}. Pass a directory written by transformers' save_pretrained, "
            "or a Hugging Face hub id of the form 'org/name'."
        )
    if path.is_dir():
        check_checkpoint_dir(path)  # empty / damaged files named before transformers reads them
        hf_model, processor, tokenizer = _load_hf_dir(str(path), local_only=True)
    else:
        try:
            hf_model, processor, tokenizer = _load_hf_dir(str(name_or_path), local_only=True)
        except OSError:
            if not hub_reachable():
                raise unavailable(
                    str(name_or_path),
                    "Download it where there is network (e.g. `CLIPModel.from_pretrained(id).save_pretrained(DIR)`"
                    " together with `CLIPProcessor.from_pretrained(id).save_pretrained(DIR)`), copy DIR here and "
                    f"call HookedCLIP.from_pretrained(DIR). (No local directory {str(name_or_path)!r} exists "
                    "either, if that is what you meant.)",
                ) from None
            hf_model, processor, tokenizer = _load_hf_dir(str(name_or_path), local_only=False)
    return hf_model, processor, tokenizer


def _looks_like_hub_id(name: Union[str, Path]) -> bool:
    """'org/name' whose 'org' is not a local folder (anything else that does not exist is a mistyped path)."""
    if isinstance(name, Path):
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.isdir(parts[0])


def _load_hf_dir(name: str, local_only: bool):
    """(transformers model, image processor or None, local folder of its tokenizer) from a directory or hub id, loaded
    strictly: missing, unexpected or mis-shaped weights raise ``CheckpointMismatchError``."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    complete_transformer_lens()  # its __init__'s huggingface_hub patch, as a plain import of it would apply

    config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    class_name, family = _hf_class(config, name)
    reference = family.reference or getattr(transformers, class_name, None)
    if reference is None:
        raise UnsupportedModelError(f"{name!r} names the class {class_name}, which transformers does not have; "
                                    "register its family with reference=<the class> (hooked_clip.loaders.families)")
    try:
        model, info = reference.from_pretrained(  # mismatched shapes reported in info; the file's own values in fp32
            name, local_files_only=local_only, output_loading_info=True, ignore_mismatched_sizes=True,
            dtype=torch.float32)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:  # a config transformers cannot build from
        raise CheckpointMismatchError(f"transformers cannot build the {class_name} that {name!r}'s config.json describes "
                                      f"({type(err).__name__}: {str(err)[:200]}); check config.json (sizes, "
                                      "hidden_act) against the checkpoint it came with.") from None
    _check_loading_info(info, name, class_name)
    processor = None
    if family.vision is not None and hasattr(model, "vision_model"):
        try:
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only, backend=PIXEL_BACKEND)
        except (OSError, ValueError):
            processor = None  # no preprocessor_config.json: fall back to the family's default preprocessing
    directory = name if os.path.isdir(name) else _hub_snapshot(name, local_only)
    return model.eval(), processor, Path(directory)


def _hf_class(config, name: str):
    """(class name, family row) of the transformers class a directory's config asks for (``architectures``, or
    the table's class for its model_type), refused with the reason where the table refuses or lacks it."""
    archs = list(getattr(config, "architectures", None) or [])
    class_name = archs[0] if archs else class_for_model_type(config.model_type)
    what = f"{name!r} (a {config.model_type!r} model, class {class_name or 'not named'})"
    return class_name, family_for("transformers", class_name, what=what)


def _check_loading_info(info: dict, name: str, class_name: str) -> None:
    ignorable = ("position_ids",)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(ignorable)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith(ignorable)]
    mismatched = [f"{k[0]}: {tuple(k[1])} vs {tuple(k[2])}" if isinstance(k, tuple) else str(k)
                  for k in info.get("mismatched_keys", ())]
    summary = mismatch_summary(missing, unexpected, mismatched)
    if summary:
        raise CheckpointMismatchError(
            f"The weights in {name!r} do not match its config ({class_name}): " + summary
            + ". transformers would fill the missing ones with random values; hooked_clip refuses. Check that the "
            "weight files and config.json come from the same checkpoint."
        )


def _hub_snapshot(name: str, local_only: bool) -> str:
    """Local folder of a hub id's tokenizer and config files (from the cache, or downloaded)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(name, local_files_only=local_only, allow_patterns=["*.json", "*.txt", "*.model"])
