"""Weights from HF transformers and open_clip into `HookedCLIPText`, with strict key and shape checks.

Each converter reads a source state dict key by key: a key the converter does not consume is
"unexpected", a key it needs but does not find is "missing", and either is an error that lists them
(a checkpoint of another architecture never loads half-way).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence

from torch import Tensor, nn

from hooked_clip.config import CLIPTextConfig


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model being built."""


def _list(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def mismatch_summary(missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                     wrong_shapes: Sequence[str] = ()) -> str:
    """The one wording of a checkpoint/model key mismatch ("missing keys (n): ...; unexpected keys ...;
    shape mismatches ..."); empty when everything matches. Every strict loader builds its error from it."""
    parts = [f"missing keys ({len(missing)}): {_list(missing)}"] if missing else []
    parts += [f"unexpected keys ({len(unexpected)}): {_list(unexpected)}"] if unexpected else []
    parts += [f"shape mismatches ({len(wrong_shapes)}): {'; '.join(list(wrong_shapes)[:6])}"] if wrong_shapes else []
    return "; ".join(parts)


class _Reader:
    """Takes keys out of a state dict and remembers which were missing; leftovers are unexpected."""

    def __init__(self, state_dict: dict[str, Tensor], source: str, what: str = "CLIP text tower"):
        self.rest = dict(state_dict)
        self.missing: list[str] = []
        self.source = source
        self.what = what

    def take(self, key: str) -> Optional[Tensor]:
        if key not in self.rest:
            self.missing.append(key)
            return None
        return self.rest.pop(key)

    def finish(self, ignore: Callable[[str], bool] = lambda k: False) -> None:
        summary = mismatch_summary(self.missing, [k for k in self.rest if not ignore(k)])
        if summary:
            raise CheckpointMismatchError(
                f"The {self.source} checkpoint does not match a {self.what} of this configuration; " + summary
                + ". Check that the checkpoint and the model name/config are the same architecture."
            )


def _qkv(weight: Tensor, cfg: CLIPTextConfig) -> Tensor:
    """nn.Linear weight [head*d_head, d_model] -> [head, d_model, d_head]."""
    return weight.T.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 0, 2)


def _convert_blocks(read: _Reader, cfg: CLIPTextConfig, prefix: str, names: dict[str, str]) -> dict:
    """Shared by both sources: they differ only in key names and in how q/k/v are packed."""
    out = {}
    for layer in range(cfg.n_layers):
        p, b = f"{prefix}{layer}.", f"blocks.{layer}."
        if names["packed_qkv"]:
            w, bias = read.take(p + names["in_proj_weight"]), read.take(p + names["in_proj_bias"])
            qkv_w = w.chunk(3, dim=0) if w is not None else (None,) * 3
            qkv_b = bias.chunk(3, dim=0) if bias is not None else (None,) * 3
        else:
            qkv_w = [read.take(p + names[f"{x}_proj"] + ".weight") for x in "qkv"]
            qkv_b = [read.take(p + names[f"{x}_proj"] + ".bias") for x in "qkv"]
        for x, w, bias in zip("QKV", qkv_w, qkv_b):
            if w is not None:
                out[b + f"attn.W_{x}"] = _qkv(w, cfg)
            if bias is not None:
                out[b + f"attn.b_{x}"] = bias.reshape(cfg.n_heads, cfg.d_head)
        w, bias = read.take(p + names["out_proj"] + ".weight"), read.take(p + names["out_proj"] + ".bias")
        if w is not None:
            out[b + "attn.W_O"] = w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
        out[b + "attn.b_O"] = bias
        for ours, theirs in (("ln1", names["ln1"]), ("ln2", names["ln2"])):
            out[b + f"{ours}.w"] = read.take(p + theirs + ".weight")
            out[b + f"{ours}.b"] = read.take(p + theirs + ".bias")
        for ours, theirs in (("in", names["fc1"]), ("out", names["fc2"])):
            w = read.take(p + theirs + ".weight")
            out[b + f"mlp.W_{ours}"] = w.T if w is not None else None
            out[b + f"mlp.b_{ours}"] = read.take(p + theirs + ".bias")
    return out


def hf_text_state_dict(state_dict: dict[str, Tensor], cfg: CLIPTextConfig) -> dict[str, Tensor]:
    """Our state dict from the text part of a transformers CLIP-family state dict: keys ``text_model.*``
    and ``text_projection.weight`` (+ ``text_projection.bias`` where ``cfg.proj_bias``), as in a
    ``CLIPModel``; :func:`hf_text_model_state_dict` brings every supported class to this layout."""
    read = _Reader({k: v for k, v in state_dict.items() if not k.startswith(("vision_model.", "visual_projection.", "logit_scale", "logit_bias"))}, "HF transformers")
    t = "text_model."
    out = {
        "embed.W_E": read.take(t + "embeddings.token_embedding.weight"),
        "pos_embed.W_pos": read.take(t + "embeddings.position_embedding.weight"),
    }
    out.update(
        _convert_blocks(
            read, cfg, t + "encoder.layers.",
            {"packed_qkv": False, "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
             "v_proj": "self_attn.v_proj", "out_proj": "self_attn.out_proj", "ln1": "layer_norm1",
             "ln2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"},
        )
    )
    out["ln_final.w"] = read.take(t + "final_layer_norm.weight")
    out["ln_final.b"] = read.take(t + "final_layer_norm.bias")
    if cfg.d_proj is not None:
        w = read.take("text_projection.weight")
        out["W_proj"] = w.T if w is not None else None
        if cfg.proj_bias:
            out["b_proj"] = read.take("text_projection.bias")
    read.finish(ignore=lambda k: k.endswith("position_ids"))
    return out


def hf_text_model_state_dict(text_module: nn.Module, projection: Optional[nn.Module]) -> dict[str, Tensor]:
    """The text tower of any supported transformers class (:mod:`hooked_clip.families`) in the layout
    :func:`hf_text_state_dict` reads: the transformer's keys under ``text_model.``, the projection (CLIP's
    ``text_projection``, SigLIP's ``head``) as ``text_projection.*``."""
    sd = {"text_model." + k: v for k, v in text_module.state_dict().items() if not k.startswith("head.")}
    if projection is not None:
        sd.update({"text_projection." + k: v for k, v in projection.state_dict().items()})
    return sd


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


def _hf_text_shape(text_config) -> dict:
    """The fields every transformers text config gives the same way (widths, depth, context, vocabulary,
    activation, LayerNorm eps), checked: an activation or position scheme we do not reimplement is refused."""
    if getattr(text_config, "position_embedding_type", "absolute") != "absolute":
        raise CheckpointMismatchError(
            f"position_embedding_type={text_config.position_embedding_type!r} is not supported; hooked_clip "
            "reimplements absolute position embeddings only.")
    if text_config.hidden_act not in _HF_ACTS:
        raise CheckpointMismatchError(
            f"hidden_act={text_config.hidden_act!r} is not supported; hooked_clip has {', '.join(_HF_ACTS)}.")
    return dict(
        d_model=text_config.hidden_size,
        n_heads=text_config.num_attention_heads,
        d_head=text_config.hidden_size // text_config.num_attention_heads,
        n_layers=text_config.num_hidden_layers,
        d_mlp=text_config.intermediate_size,
        n_ctx=text_config.max_position_embeddings,
        d_vocab=text_config.vocab_size,
        act_fn=_HF_ACTS[text_config.hidden_act],
        eps=text_config.layer_norm_eps,
    )


def config_from_hf_post_ln(text_config, source: dict[str, Tensor], family: str, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` of a BERT/RoBERTa-style tower from its transformers config and the keys of
    :func:`hf_post_ln_source`: post-LN blocks, token-type embeddings, a LayerNorm on the embeddings, padding
    masked, pooled at the first token (CLS / <s>); ``ln_final`` = AltCLIP's ``pre_LN``; the projection is
    ChineseCLIP's ``text_projection``, AltCLIP's ``transformation`` (folded with ``text_projection`` into one
    linear map in AltCLIPModel), or ChineseCLIPTextModel's pooler (tanh of a linear map)."""
    shape = _hf_text_shape(text_config)
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
    read = _Reader(source, "HF transformers", "BERT/RoBERTa text tower")
    e = "embeddings."
    out = {
        "embed.W_E": read.take(e + "word_embeddings.weight"),
        "pos_embed.W_pos": read.take(e + "position_embeddings.weight"),
        "token_type_embed.W_token_type": read.take(e + "token_type_embeddings.weight"),
        "ln_embed.w": read.take(e + "LayerNorm.weight"),
        "ln_embed.b": read.take(e + "LayerNorm.bias"),
    }
    out.update(
        _convert_blocks(
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


_OPEN_CLIP_HF_TYPES = ("roberta", "xlm-roberta")


def config_from_open_clip_hf(text: nn.Module, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` of open_clip's ``HFTextEncoder`` (``hf_model_name`` towers) wrapping a RoBERTa or
    XLM-R model: post-LN blocks with RoBERTa position ids, padding masked (open_clip masks ``pad_token_id``),
    pooled by the mean over non-padding tokens (``mean_pooler``) or at the first token
    (``cls_last_hidden_state_pooler``), projected by nothing, one linear map or open_clip's MLP
    (Linear-GELU-Linear, no biases). mT5 (a T5 encoder: relative position buckets, RMS norm, pre-norm blocks)
    and NLLB (an M2M-100 encoder: sinusoidal positions, pre-LN) and the other poolers are refused by name."""
    from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, MeanPooler

    hf_cfg = text.config
    if hf_cfg.model_type not in _OPEN_CLIP_HF_TYPES:
        raise CheckpointMismatchError(
            f"open_clip's HF text tower {hf_cfg.model_type!r} is not supported: hooked_clip reimplements the "
            f"BERT/RoBERTa post-LN encoders ({', '.join(_OPEN_CLIP_HF_TYPES)}); mT5 is a T5 encoder (relative "
            "position buckets, RMS-style LayerNorm before each sublayer) and NLLB an M2M-100 encoder (sinusoidal "
            "positions, pre-LN), which its blocks do not express.")
    pooler = text.pooler
    uses_hf_pooler = isinstance(pooler, ClsPooler) and pooler.use_pooler_output and getattr(
        text.transformer, "pooler", None) is not None
    if isinstance(pooler, MeanPooler):
        pooling = "mean"
    elif isinstance(pooler, (ClsPooler, ClsLastHiddenStatePooler)) and not uses_hf_pooler:
        pooling = "first"
    else:
        raise CheckpointMismatchError(
            f"open_clip pooler {type(pooler).__name__}" + (" reading the transformer's tanh pooler" if uses_hf_pooler
                                                          else "") + " is not supported; hooked_clip pools by the "
            "mean (mean_pooler) or at the first token (cls_last_hidden_state_pooler).")
    proj = text.proj
    d_proj_hidden = None
    if isinstance(proj, nn.Identity):
        d_proj = None
    elif isinstance(proj, nn.Linear) and proj.bias is None:
        d_proj = proj.out_features
    elif (isinstance(proj, nn.Sequential) and len(proj) == 3 and isinstance(proj[1], nn.GELU)
          and proj[1].approximate == "none" and all(isinstance(proj[i], nn.Linear) and proj[i].bias is None for i in (0, 2))):
        d_proj_hidden, d_proj = proj[0].out_features, proj[2].out_features
    else:
        raise CheckpointMismatchError(f"open_clip HF text projection {proj!r} is not supported (Identity, a linear "
                                      "map or open_clip's Linear-GELU-Linear MLP, without biases).")
    kw = dict(
        **_hf_text_shape(hf_cfg), d_proj=d_proj, d_proj_hidden=d_proj_hidden,
        pooling=pooling, pad_token_id=hf_cfg.pad_token_id, causal=False, ln_position="post",
        n_token_types=hf_cfg.type_vocab_size, ln_embed=True, position_ids="roberta", mask_padding=True,
        final_ln=False, trim_after_pool=False, family="open_clip-hf", model_name="open_clip",
    )
    if hf_cfg.eos_token_id is not None:
        kw["eot_token_id"] = hf_cfg.eos_token_id
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def open_clip_hf_text_state_dict(state_dict: dict[str, Tensor], cfg: CLIPTextConfig) -> dict[str, Tensor]:
    """Our state dict from an open_clip model with an ``HFTextEncoder`` (keys ``text.transformer.*``,
    ``text.proj.*``), every key consumed. The transformer's own tanh pooler, which open_clip builds when it
    is given a config object but which the mean/CLS-hidden-state poolers never read, is not part of the tower."""
    t = "text.transformer."
    source = {k[len(t):]: v for k, v in state_dict.items() if k.startswith(t) and not k.startswith(t + "pooler.")}
    out = hf_post_ln_state_dict(source, cfg, projection=False)
    read = _Reader({k: v for k, v in state_dict.items() if k.startswith("text.proj")}, "open_clip",
                   "HF text tower's projection")
    if cfg.d_proj_hidden is not None:
        w_in, w = read.take("text.proj.0.weight"), read.take("text.proj.2.weight")
        out["W_proj_in"], out["W_proj"] = (None if w_in is None else w_in.T), (None if w is None else w.T)
    elif cfg.d_proj is not None:
        w = read.take("text.proj.weight")
        out["W_proj"] = None if w is None else w.T
    read.finish()
    return out


def open_clip_text_state_dict(state_dict: dict[str, Tensor], cfg: CLIPTextConfig) -> dict[str, Tensor]:
    """Our state dict from an open_clip ``CLIP`` (text keys at the top level) or ``CustomTextCLIP``
    (keys under ``text.``) state dict."""
    custom = any(k.startswith("text.") for k in state_dict)
    t = "text." if custom else ""
    text_sd = {
        k: v for k, v in state_dict.items()
        if (k.startswith("text.") if custom else not k.startswith(("visual.", "logit_scale", "logit_bias")))
    }
    read = _Reader(text_sd, "open_clip")
    out = {
        "embed.W_E": read.take(t + "token_embedding.weight"),
        "pos_embed.W_pos": read.take(t + "positional_embedding"),
    }
    out.update(
        _convert_blocks(
            read, cfg, t + "transformer.resblocks.",
            {"packed_qkv": True, "in_proj_weight": "attn.in_proj_weight", "in_proj_bias": "attn.in_proj_bias",
             "out_proj": "attn.out_proj", "ln1": "ln_1", "ln2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"},
        )
    )
    out["ln_final.w"] = read.take(t + "ln_final.weight")
    out["ln_final.b"] = read.take(t + "ln_final.bias")
    if cfg.d_proj is not None:
        if cfg.proj_bias:
            w = read.take(t + "text_projection.weight")
            out["W_proj"] = w.T if w is not None else None
            out["b_proj"] = read.take(t + "text_projection.bias")
        else:
            out["W_proj"] = read.take(t + "text_projection")
    read.finish(ignore=lambda k: k.endswith("attn_mask"))
    return out


def load_converted(model: nn.Module, converted: dict[str, Tensor]) -> None:
    """Copy a converted state dict into ``model``; any shape difference is an error naming the parameter."""
    own = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise CheckpointMismatchError(
            "The checkpoint has the wrong architecture for this config: " + "; ".join(wrong[:8])
            + (f" ... and {len(wrong) - 8} more" if len(wrong) > 8 else "")
        )
    missing = sorted(set(own) - set(converted))
    if missing:
        raise CheckpointMismatchError(f"converted checkpoint lacks parameters: {_list(missing)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


# ------------------------------------------------------------------------------------------- configs
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}  # transformers -> ours


def config_from_hf(text_config, projection_dim: Optional[int], family: str = "clip", proj_bias: bool = False,
                   **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` from a transformers text config of a family in :mod:`hooked_clip.families`
    (causal mask and pooling rule are the family's; HF CLIP: ``eos_token_id == 2`` is the legacy marker
    for argmax pooling, any other id pools at that id's first occurrence)."""
    from hooked_clip.families import FAMILIES, hf_pooling

    fam = FAMILIES[family]
    shape = _hf_text_shape(text_config)
    pooling, eot = hf_pooling(fam, text_config.eos_token_id)
    kw = dict(
        **shape,
        d_proj=projection_dim,
        proj_bias=proj_bias,
        pooling=pooling,
        eot_token_id=eot,
        pad_token_id=text_config.pad_token_id if text_config.pad_token_id is not None else 0,
        causal=fam.causal,
        family=family,
        model_name=getattr(text_config, "_name_or_path", "") or "hf",
    )
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def config_from_open_clip(model: nn.Module, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` read off an open_clip ``CLIP`` or ``CustomTextCLIP`` object."""
    from open_clip.transformer import QuickGELU

    t = model.text if hasattr(model, "text") else model
    if not hasattr(t, "transformer") or not hasattr(t.transformer, "resblocks"):
        raise CheckpointMismatchError(
            f"open_clip text tower {type(t).__name__} is not a CLIP TextTransformer (e.g. an HF-based text "
            "encoder); hooked_clip reimplements only CLIP's own text transformer."
        )
    block = t.transformer.resblocks[0]
    act_layer = block.mlp.gelu
    if isinstance(act_layer, QuickGELU):
        act = "quick_gelu"
    elif isinstance(act_layer, nn.GELU) and act_layer.approximate in ("none", "tanh"):
        act = "gelu" if act_layer.approximate == "none" else "gelu_tanh"
    else:
        raise CheckpointMismatchError(f"activation {act_layer!r} is not supported; use quick_gelu or (tanh-)GELU.")
    if not isinstance(getattr(block, "ls_1", nn.Identity()), nn.Identity):
        raise CheckpointMismatchError("open_clip blocks with LayerScale (ls_init_value) are not supported.")
    if getattr(t, "use_pad_mask", False):
        raise CheckpointMismatchError("open_clip text towers with a padding mask (use_pad_mask) are not supported.")
    if not isinstance(block.attn, nn.MultiheadAttention):
        raise CheckpointMismatchError(
            f"attention module {type(block.attn).__name__} (open_clip's custom attention with cosine/scaled "
            "heads) is not supported; only nn.MultiheadAttention blocks are."
        )
    if getattr(t, "cls_emb", None) is not None:
        raise CheckpointMismatchError("text towers with a CLS embedding (CoCa-style) are not supported.")
    pool = getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
    eos = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
    if pool not in ("argmax", "eos", "last"):
        raise CheckpointMismatchError(f"pool_type={pool!r} is not supported; use argmax, eos or last.")
    proj = t.text_projection
    if proj is None:
        d_proj, proj_bias = None, False
    elif isinstance(proj, nn.Linear):
        d_proj, proj_bias = proj.out_features, proj.bias is not None
    else:
        d_proj, proj_bias = proj.shape[1], False
    width = t.transformer.width
    kw = dict(
        d_model=width,
        n_heads=block.attn.num_heads,
        d_head=width // block.attn.num_heads,
        n_layers=len(t.transformer.resblocks),
        d_mlp=block.mlp.c_fc.out_features,
        n_ctx=t.positional_embedding.shape[0],
        d_vocab=t.token_embedding.num_embeddings,
        act_fn=act,
        eps=t.ln_final.eps,
        d_proj=d_proj,
        proj_bias=proj_bias,
        pooling={"argmax": "argmax", "eos": "eot", "last": "last"}[pool],
        eot_token_id=eos if pool == "eos" else 49407,
        pad_token_id=getattr(t, "pad_id", 0),
        causal=getattr(t, "attn_mask", None) is not None,
        family="open_clip",
        model_name="open_clip",
    )
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def default_logit_scale() -> float:
    """CLIP's initial logit scale, log(1/0.07), stored in log space like both references."""
    return math.log(1 / 0.07)
