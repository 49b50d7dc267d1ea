"""Text towers of transformers checkpoints -> ``CLIPTextConfig`` + our state dict (never a tower).

Two readers, named in the family table (:mod:`hooked_clip.loaders.families`):

- :func:`read_clip_text`: CLIP's pre-LN transformer under its many names (CLIP, CLIPSeg, GroupViT's text model,
  OWL-ViT/OWLv2, X-CLIP, MetaCLIP 2, SigLIP/SigLIP2): every class has the key layout ``embeddings`` /
  ``encoder.layers`` / ``final_layer_norm`` under ``text_model``, so one converter serves all of them; the
  family says the causal mask and the pooling rule.
- :func:`read_post_ln_text`: BERT/RoBERTa post-LN towers (ChineseCLIP, AltCLIP, ALIGN): keys ``embeddings`` /
  ``encoder.layer`` / ..., token-type embeddings, a LayerNorm on the embeddings, padding masked.
"""

from __future__ import annotations

import math

from typing import Any, Optional

from torch import Tensor, nn

from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError
from hooked_clip.loaders.family import Family
from hooked_clip.loaders.convert import HF_ACTS, HF_BLOCK_NAMES, Reader, convert_blocks
from hooked_clip.text.config import CLIPTextConfig


def read_clip_text(hf_model: nn.Module, family: Family, **overrides) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """(config, state dict) of a CLIP-style transformers text tower and its projection."""
    text_cfg, text_module, proj = hf_text_parts(hf_model)
    cfg = config_from_hf(text_cfg, None if proj is None else proj.out_features, family,
                         proj_bias=proj is not None and proj.bias is not None, **overrides)
    return cfg, hf_text_state_dict(hf_text_model_state_dict(text_module, proj), cfg)


def read_post_ln_text(hf_model: nn.Module, family: Family, **overrides) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """(config, state dict) of a BERT/RoBERTa-style transformers text tower and its projection."""
    text_cfg, source = hf_post_ln_source(hf_model)
    cfg = config_from_hf_post_ln(text_cfg, source, family.name, **overrides)
    return cfg, hf_post_ln_state_dict(source, cfg)


def hf_text_parts(hf_model: nn.Module) -> tuple[Any, nn.Module, Optional[nn.Linear]]:
    """(text config, text transformer with ``embeddings``/``encoder``/``final_layer_norm``, projection
    ``nn.Linear`` or ``None``) of a supported transformers model."""
    text = hf_model
    while hasattr(text, "text_model"):
        text = text.text_model
    proj = getattr(hf_model, "text_projection", None)
    if proj is None:
        proj = getattr(text, "head", None)  # SigLIP / SigLIP2
    return text.config, text, proj


def hf_pooling(family: Family, eos_token_id: int) -> tuple[str, int]:
    """(``cfg.pooling``, ``cfg.eot_token_id``) of a transformers family, as its text model pools."""
    if family.pooling == "clip":  # HF CLIP: eos_token_id == 2 is the legacy marker for argmax pooling
        return ("argmax", 49407) if eos_token_id == 2 else ("eot", eos_token_id)
    if family.pooling == "eot":
        return "eot", eos_token_id
    return family.pooling, eos_token_id


def config_from_hf(text_config, projection_dim: Optional[int], family: Family, proj_bias: bool = False,
                   **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` from a transformers text config of a family in :mod:`hooked_clip.loaders.families`
    (causal mask and pooling rule are the family's; HF CLIP: ``eos_token_id == 2`` is the legacy marker
    for argmax pooling, any other id pools at that id's first occurrence)."""
    shape = hf_text_shape(text_config)
    pooling, eot = hf_pooling(family, text_config.eos_token_id)
    kw = dict(
        **shape,
        d_proj=projection_dim,
        proj_bias=proj_bias,
        pooling=pooling,
        eot_token_id=eot,
        pad_token_id=text_config.pad_token_id if text_config.pad_token_id is not None else 0,
        causal=family.causal,
        family=family.name,
        model_name=getattr(text_config, "_name_or_path", "") or "hf",
    )
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def hf_text_state_dict(state_dict: dict[str, Tensor], cfg: CLIPTextConfig) -> dict[str, Tensor]:
    """Our state dict from the text part of a transformers CLIP-family state dict: keys ``text_model.*``
    and ``text_projection.weight`` (+ ``text_projection.bias`` where ``cfg.proj_bias``), as in a
    ``CLIPModel``; :func:`hf_text_model_state_dict` brings every supported class to this layout."""
    read = Reader({k: v for k, v in state_dict.items() if not k.startswith(("vision_model.", "visual_projection.", "logit_scale", "logit_bias"))}, "HF transformers")
    t = "text_model."
    out = read.take_all({"embed.W_E": t + "embeddings.token_embedding.weight",
                         "pos_embed.W_pos": t + "embeddings.position_embedding.weight",
                         "ln_final.w": t + "final_layer_norm.weight", "ln_final.b": t + "final_layer_norm.bias"})
    out.update(convert_blocks(read, cfg, t + "encoder.layers.", HF_BLOCK_NAMES))
    if cfg.d_proj is not None:
        w = read.take("text_projection.weight")
        out["W_proj"] = w.T if w is not None else None
        if cfg.proj_bias:
            out["b_proj"] = read.take("text_projection.bias")
    read.finish(ignore=lambda k: k.endswith("position_ids"))
    return out


def hf_text_model_state_dict(text_module: nn.Module, projection: Optional[nn.Module]) -> dict[str, Tensor]:
    """The text tower of any supported transformers class (:mod:`hooked_clip.loaders.families`) in the layout
    :func:`hf_text_state_dict` reads: the transformer's keys under ``text_model.``, the projection (CLIP's
    ``text_projection``, SigLIP's ``head``) as ``text_projection.*``."""
    sd = {"text_model." + k: v for k, v in text_module.state_dict().items() if not k.startswith("head.")}
    if projection is not None:
        sd.update({"text_projection." + k: v for k, v in projection.state_dict().items()})
    return sd


def hf_text_shape(text_config) -> dict:
    """The fields every transformers text config gives the same way (widths, depth, context, vocabulary,
    activation, LayerNorm eps), checked: an activation or position scheme we do not reimplement is refused."""
    if getattr(text_config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"position_embedding_type={text_config.position_embedding_type!r} is not supported; hooked_clip "
            "reimplements absolute position embeddings only.")
    eps = getattr(text_config, "layer_norm_eps", None)
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise CheckpointMismatchError(f"layer_norm_eps={eps!r} is not a finite number >= 0; fix the checkpoint's config.")
    sizes = {k: getattr(text_config, k, None) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                                                        "intermediate_size", "vocab_size", "max_position_embeddings")}
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0}
    if bad:
        raise CheckpointMismatchError(f"the text config's sizes {bad} are not positive whole numbers; fix the config.")
    if text_config.hidden_act not in HF_ACTS:
        raise UnsupportedModelError(
            f"hidden_act={text_config.hidden_act!r} is not supported; hooked_clip has {', '.join(HF_ACTS)}.")
    return dict(
        d_model=text_config.hidden_size,
        n_heads=text_config.num_attention_heads,
        d_head=text_config.hidden_size // text_config.num_attention_heads,
        n_layers=text_config.num_hidden_layers,
        d_mlp=text_config.intermediate_size,
        n_ctx=text_config.max_position_embeddings,
        d_vocab=text_config.vocab_size,
        act_fn=HF_ACTS[text_config.hidden_act],
        eps=text_config.layer_norm_eps,
    )


def hf_post_ln_source(hf_model: nn.Module) -> tuple[Any, dict[str, Tensor]]:
    """(text config, state dict) of a BERT/RoBERTa-style transformers text tower (ChineseCLIP, AltCLIP) in one
    layout: ``embeddings.*`` and ``encoder.layer.*`` (AltCLIP: ``encoder.layers.*``; its ``roberta.`` prefix dropped), and whichever of
    ``pooler.dense.*`` (ChineseCLIPTextModel), ``pre_LN.*`` and ``transformation.*`` (AltCLIPTextModel) and
    ``text_projection.*`` (the two-tower classes) the model has."""
    text = getattr(hf_model, "text_model", hf_model)
    sd = {k.removeprefix("roberta."): v for k, v in text.state_dict().items()}
    if text is not hf_model:
        # a two-tower model embeds text as text_projection(CLS); ALIGN's text model keeps BERT's pooler, which
        # is on no path to that embedding, so it is not part of the tower
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
        sd.update({"text_projection." + k: v for k, v in hf_model.text_projection.state_dict().items()})
    return text.config, sd


def config_from_hf_post_ln(text_config, source: dict[str, Tensor], family: str, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` of a BERT/RoBERTa-style tower from its transformers config and the keys of
    :func:`hf_post_ln_source`: post-LN blocks, token-type embeddings, a LayerNorm on the embeddings, padding
    masked, pooled at the first token (CLS / <s>); ``ln_final`` = AltCLIP's ``pre_LN``; the projection is
    ChineseCLIP's ``text_projection``, AltCLIP's ``transformation`` (folded with ``text_projection`` into one
    linear map in AltCLIPModel), or ChineseCLIPTextModel's pooler (tanh of a linear map)."""
    shape = hf_text_shape(text_config)
    has = lambda prefix: any(k.startswith(prefix) for k in source)  # noqa: E731
    if has("text_projection."):
        d_proj = source["text_projection.weight"].shape[0]
    elif has("transformation."):
        d_proj = source["transformation.weight"].shape[0]
    elif has("pooler."):
        d_proj = source["pooler.dense.weight"].shape[0]
    else:
        d_proj = None
    eos = getattr(text_config, "eos_token_id", None)
    kw = dict(
        **shape,
        d_proj=d_proj,
        proj_bias=has("transformation.") or has("pooler.") or "text_projection.bias" in source,
        proj_act="tanh" if has("pooler.") else None,
        pooling="first",
        pad_token_id=text_config.pad_token_id if text_config.pad_token_id is not None else 0,
        causal=False,
        ln_position="post",
        n_token_types=text_config.type_vocab_size,
        ln_embed=True,
        position_ids="roberta" if family == "altclip" else "absolute",
        mask_padding=True,
        final_ln=has("pre_LN."),
        trim_after_pool=False,
        family=family,
        model_name=getattr(text_config, "_name_or_path", "") or "hf",
    )
    if eos is not None:
        kw["eot_token_id"] = eos
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def hf_post_ln_state_dict(source: dict[str, Tensor], cfg: CLIPTextConfig, projection: bool = True) -> dict[str, Tensor]:
    """Our state dict from :func:`hf_post_ln_source`'s, every key consumed (strict, as the other converters);
    ``projection=False``: the transformer only (a caller with its own projection keys converts those).
    AltCLIPModel's two projections (``transformation`` with bias, then ``text_projection``) become one linear
    map: ``W_proj = W_t.T @ W_p.T``, ``b_proj = b_t @ W_p.T`` (exact up to float rounding)."""
    read = Reader(source, "HF transformers", "BERT/RoBERTa text tower")
    e = "embeddings."
    out = {
        "embed.W_E": read.take(e + "word_embeddings.weight"),
        "pos_embed.W_pos": read.take(e + "position_embeddings.weight"),
        "token_type_embed.W_token_type": read.take(e + "token_type_embeddings.weight"),
        "ln_embed.w": read.take(e + "LayerNorm.weight"),
        "ln_embed.b": read.take(e + "LayerNorm.bias"),
    }
    out.update(
        convert_blocks(
            read, cfg, "encoder.layers." if any(k.startswith("encoder.layers.") for k in source) else "encoder.layer.",
            {"packed_qkv": False, "q_proj": "attention.self.query", "k_proj": "attention.self.key",
             "v_proj": "attention.self.value", "out_proj": "attention.output.dense",
             "ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm", "fc1": "intermediate.dense",
             "fc2": "output.dense"},
        )
    )
    if cfg.final_ln:
        out["ln_final.w"], out["ln_final.b"] = read.take("pre_LN.weight"), read.take("pre_LN.bias")
    if cfg.d_proj is not None and projection:
        w = b = None
        first = next((p for p in ("transformation", "pooler.dense") if p + ".weight" in read.rest), None)
        if first is not None:
            w, b = read.take(first + ".weight").T, read.take(first + ".bias")
        if first is None or "text_projection.weight" in read.rest:
            p = read.take("text_projection.weight")
            p_b = read.take("text_projection.bias") if "text_projection.bias" in read.rest else None
            if p is not None and w is not None:  # AltCLIPModel: two linear maps in a row, folded into one
                w, b = w @ p.T, (None if b is None else b @ p.T)
                b = p_b if b is None else b if p_b is None else b + p_b
            elif p is not None:
                w, b = p.T, p_b
        out["W_proj"] = w
        if cfg.proj_bias:
            out["b_proj"] = b
    read.finish(ignore=lambda k: k.endswith(("position_ids", "token_type_ids")))
    return out


FLAVA_BLOCK_NAMES = {"packed_qkv": False, "q_proj": "attention.attention.query", "k_proj": "attention.attention.key",
                     "v_proj": "attention.attention.value", "out_proj": "attention.output.dense",
                     "ln1": "layernorm_before", "ln2": "layernorm_after", "fc1": "intermediate.dense",
                     "fc2": "output.dense"}


def read_flava_text(hf_model: nn.Module, family: Family, **overrides) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """(config, state dict) of FLAVA's text tower: BERT's embeddings (token types, a LayerNorm on their sum) on
    pre-LN blocks (ViT's layernorm_before/after), a final ``layernorm``, padding masked, read at the first token;
    projected by FlavaModel's ``text_projection`` (with bias: its contrastive text embedding is the projected
    [CLS] row of ``get_text_features``), or by FlavaTextModel's pooler, tanh(W x + b)."""
    text = getattr(hf_model, "text_model", hf_model)
    source = dict(text.state_dict())
    if text is not hf_model:  # the two-tower model embeds text as text_projection(CLS); its pooler is off that path
        source = {k: v for k, v in source.items() if not k.startswith("pooler.")}
        source.update({"text_projection." + k: v for k, v in hf_model.text_projection.state_dict().items()})
    head = "text_projection" if "text_projection.weight" in source else "pooler.dense"
    tc = text.config
    cfg = CLIPTextConfig(**{**dict(
        **hf_text_shape(tc), d_proj=source[head + ".weight"].shape[0], proj_bias=True,
        proj_act="tanh" if head == "pooler.dense" else None, pooling="first",
        pad_token_id=tc.pad_token_id if tc.pad_token_id is not None else 0, causal=False, ln_position="pre",
        n_token_types=tc.type_vocab_size, ln_embed=True, mask_padding=True, final_ln=True, trim_after_pool=False,
        family=family.name, model_name=getattr(tc, "_name_or_path", "") or "hf"), **overrides})
    read = Reader(source, "HF transformers", "FLAVA text tower")
    e = "embeddings."
    out = read.take_all({"embed.W_E": e + "word_embeddings.weight", "pos_embed.W_pos": e + "position_embeddings.weight",
                         "token_type_embed.W_token_type": e + "token_type_embeddings.weight",
                         "ln_embed.w": e + "LayerNorm.weight", "ln_embed.b": e + "LayerNorm.bias",
                         "ln_final.w": "layernorm.weight", "ln_final.b": "layernorm.bias", "b_proj": head + ".bias"})
    out.update(convert_blocks(read, cfg, "encoder.layer.", FLAVA_BLOCK_NAMES))
    w = read.take(head + ".weight")
    out["W_proj"] = None if w is None else w.T
    read.finish(ignore=lambda k: k.endswith(("position_ids", "token_type_ids")))
    return cfg, out
