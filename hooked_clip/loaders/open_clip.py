"""Reading open_clip models: a model object, or a model name with a pretrained tag or a local checkpoint file
(:func:`read_open_clip`), strictly (a checkpoint of another architecture is refused naming the keys; a file is
read without running code from it). The family table says which reader reads which text tower."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from torch import nn

from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError
from hooked_clip.loaders.checkpoint import Checkpoint, TextCheckpoint
from hooked_clip.loaders.convert import mismatch_summary
from hooked_clip.loaders.families import family_for
from hooked_clip.loaders.files import read_state_dict
from hooked_clip.loaders.hub import hub_reachable, unavailable
from hooked_clip.loaders.open_clip_text import hf_type_from_name, open_clip_hf_refusal
from hooked_clip.tokenizers.hf import tokenizer_for_open_clip
from hooked_clip.lazy import complete_transformer_lens


def read_open_clip(model: Union[str, nn.Module], pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                   tokenizer: Any = None, **cfg_overrides) -> Checkpoint:
    """An open_clip model object, or a model name with ``pretrained`` (a tag or a local file; None: random
    init), read into configs and state dicts. ``cfg_overrides`` (``device``, ``dtype``, text-config fields)
    set the text config; ``device``/``dtype`` the image tower's too."""
    import open_clip

    if isinstance(model, nn.Module):
        oc_model, preprocess_cfg = model, open_clip.get_model_preprocess_cfg(model)
    elif isinstance(model, str):
        oc_model, preprocess_cfg = _open_clip_model(model, pretrained, cache_dir)
    else:
        raise TypeError(f"from_open_clip takes an open_clip model or a model name, got {type(model).__name__}.")
    family = family_for("open_clip", open_clip_text_class(oc_model), what="this open_clip model")
    cfg, state_dict = family.text(oc_model, family, **cfg_overrides)
    if isinstance(model, str):
        tokenizer = tokenizer_for_open_clip(model, cfg.n_ctx, tokenizer, cache_dir)
    vision = family.vision(oc_model, preprocess_cfg, device=cfg.device, dtype=cfg.dtype) if family.vision else None
    bias = getattr(oc_model, "logit_bias", None)
    return Checkpoint(TextCheckpoint(cfg, state_dict, family.tokenizer(tokenizer, cfg)), vision,
                      float(oc_model.logit_scale.detach()), None if bias is None else float(bias.detach()), family.name)


def open_clip_text_class(oc_model: nn.Module) -> str:
    """The family-table key of an open_clip model: ``CLIP`` (the text transformer at the top level) or the
    class of its ``.text`` tower (``TextTransformer``, ``HFTextEncoder``)."""
    text = getattr(oc_model, "text", None)
    return type(oc_model).__name__ if text is None else type(text).__name__


def _open_clip_model(name: str, pretrained: Optional[str], cache_dir: Optional[str]):
    """An open_clip model built from its name, weights from a tag or a local file, checked strictly."""
    import open_clip

    complete_transformer_lens()  # its __init__'s huggingface_hub patch (open_clip's HF text towers read configs)

    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=4)
        raise ValueError(f"open_clip has no model {name!r}" + (f"; did you mean {close}?" if close else "."))
    pcfg: dict = {}
    if pretrained is None:
        path = None
    elif os.path.isfile(pretrained):
        path = pretrained
        twin = f"{name}-quickgelu"
        if twin in open_clip.list_models():  # a state dict does not record its activation function
            import warnings

            warnings.warn(
                f"{pretrained!r} is loaded as {name!r}, which uses GELU; a state-dict file does not record its "
                f"activation. If these are OpenAI-derived weights (QuickGELU, e.g. saved from pretrained='openai'), "
                f"load them as {twin!r}: the shapes match either way, so only the name tells them apart.",
                UserWarning, stacklevel=3)
    else:
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name!r}; tags: {tags}"
            )
        path = _resolve_open_clip_weights(name, pretrained, pcfg, cache_dir)
    hf_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_model_name")
    refusal = open_clip_hf_refusal(hf_type_from_name(hf_name)) if hf_name and hf_type_from_name(hf_name) else ""
    if refusal:  # said before anything is built or downloaded
        raise UnsupportedModelError(f"open_clip model {name!r} cannot be loaded: its text tower is {hf_name!r}. "
                                    f"{refusal}. Nothing was downloaded.")
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(pcfg.get("quick_gelu", False)))
    except OSError:
        if not hf_name:
            raise
        raise unavailable(  # open_clip builds the text tower from the transformers hub model of that name
            hf_name,
            f"open_clip builds {name!r}'s text tower from the transformers model {hf_name!r} (its config, and its "
            "weights unless pretrained_hf=False), which is not in the local HF cache. Fetch it where there is "
            f"network (`AutoModel.from_pretrained({hf_name!r})` fills the cache) and copy the cache here, or build "
            "the open_clip model yourself and pass the object: HookedCLIP.from_open_clip(model).") from None
    if path is not None:
        _load_open_clip_checkpoint(model, path, name)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if key in pcfg:
            preprocess_cfg[key] = pcfg[key]
    return model.eval(), preprocess_cfg


def _resolve_open_clip_weights(name: str, tag: str, pcfg: dict, cache_dir: Optional[str]) -> str:
    """Local path of a tagged open_clip checkpoint: from the HF cache if there, else downloaded if the
    Hub is reachable, else a clear error."""
    import open_clip

    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import hf_hub_download

        # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file
        repo, filename = hf_hub.rstrip("/"), None
        if not hf_hub.endswith("/"):
            repo, filename = os.path.split(hf_hub)
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fn in filenames:
            try:
                return hf_hub_download(repo, fn, cache_dir=cache_dir, local_files_only=True)
            except Exception:
                pass
    if not hub_reachable():
        raise unavailable(
            f"{name}/{tag}",
            "Download the checkpoint where there is network (e.g. `open_clip.create_model_and_transforms"
            f"('{name}', pretrained='{tag}')` then `torch.save(model.state_dict(), 'ckpt.pt')`), copy the file "
            f"here and call HookedCLIP.from_open_clip('{name}', pretrained='ckpt.pt').",
        )
    return open_clip.download_pretrained(pcfg, cache_dir=cache_dir)


def _load_open_clip_checkpoint(model: nn.Module, path: str, name: str) -> None:
    sd = read_state_dict(path)
    own = model.state_dict()
    ignorable = ("attn_mask", "position_ids")
    missing = [k for k in own if k not in sd and not k.endswith(ignorable)]
    unexpected = [k for k in sd if k not in own and not k.endswith(ignorable)]
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    summary = mismatch_summary(missing, unexpected, wrong)
    if summary:
        raise CheckpointMismatchError(
            f"Checkpoint {path!r} is not a {name!r} checkpoint: " + summary
            + ". Pass the open_clip model name the checkpoint was trained with."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
