"""Text towers of open_clip models -> ``CLIPTextConfig`` + our state dict (never a tower): CLIP's own
``TextTransformer`` (:func:`read_open_clip_text`) and ``HFTextEncoder`` towers wrapping a RoBERTa/XLM-R model
(:func:`read_open_clip_hf_text`)."""

from __future__ import annotations


from torch import Tensor, nn

from hooked_clip.errors import UnsupportedModelError
from hooked_clip.loaders.family import Family
from hooked_clip.loaders.convert import OPEN_CLIP_BLOCK_NAMES, Reader, convert_blocks, open_clip_activation
from hooked_clip.loaders.hf_text import hf_post_ln_state_dict, hf_text_shape
from hooked_clip.text.config import CLIPTextConfig


def read_open_clip_text(oc_model: nn.Module, family: Family, **overrides) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """(config, state dict) of an open_clip ``CLIP``/``CustomTextCLIP`` whose text tower is CLIP's transformer."""
    cfg = config_from_open_clip(oc_model, family=family.name, **overrides)
    return cfg, open_clip_text_state_dict(oc_model.state_dict(), cfg)


def read_open_clip_hf_text(oc_model: nn.Module, family: Family, **overrides) -> tuple[CLIPTextConfig, dict[str, Tensor]]:
    """(config, state dict) of an open_clip model whose text tower is an ``HFTextEncoder`` (RoBERTa/XLM-R)."""
    cfg = config_from_open_clip_hf(oc_model.text, family=family.name, **overrides)
    return cfg, open_clip_hf_text_state_dict(oc_model.state_dict(), cfg)


def config_from_open_clip(model: nn.Module, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` read off an open_clip ``CLIP`` or ``CustomTextCLIP`` object."""
    t = model.text if hasattr(model, "text") else model
    if not hasattr(t, "transformer") or not hasattr(t.transformer, "resblocks"):
        raise UnsupportedModelError(
            f"open_clip text tower {type(t).__name__} is not a CLIP TextTransformer (e.g. an HF-based text "
            "encoder); hooked_clip reimplements only CLIP's own text transformer."
        )
    block = t.transformer.resblocks[0]
    act = open_clip_activation(block.mlp.gelu)
    if not isinstance(getattr(block, "ls_1", nn.Identity()), nn.Identity):
        raise UnsupportedModelError("open_clip blocks with LayerScale (ls_init_value) are not supported.")
    if not isinstance(block.attn, nn.MultiheadAttention):
        raise UnsupportedModelError(
            f"attention module {type(block.attn).__name__} (open_clip's custom attention with cosine/scaled "
            "heads) is not supported; only nn.MultiheadAttention blocks are."
        )
    coca = getattr(t, "cls_emb", None) is not None  # an appended CLS embedding, read by the tower (pool "last")
    if getattr(t, "use_pad_mask", False) and not coca:  # no shipped config sets it; a causal EOT-pooled tower
        raise UnsupportedModelError(  # would trim and reuse key prefixes, which a padding mask does not fit
            "open_clip text towers with a padding mask (use_pad_mask) and no CLS embedding are not supported.")
    pool = "last" if coca else getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
    eos = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
    if pool not in ("argmax", "eos", "last"):
        raise UnsupportedModelError(f"pool_type={pool!r} is not supported; use argmax, eos or last.")
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
        n_ctx=t.positional_embedding.shape[0],  # with CoCa's CLS: the context length + 1
        d_vocab=t.token_embedding.num_embeddings,
        act_fn=act,
        eps=t.ln_final.eps,
        d_proj=d_proj,
        proj_bias=proj_bias,
        pooling={"argmax": "argmax", "eos": "eot", "last": "last"}[pool],
        eot_token_id=eos if pool == "eos" else 49407,
        pad_token_id=getattr(t, "pad_id", 0),
        causal=getattr(t, "attn_mask", None) is not None,
        append_cls=coca,
        mask_padding=coca,
        pad_mask_shift=int(coca and not getattr(t, "correct_cls_mask", False)),
        trim_after_pool=not coca,
        family="open_clip",
        model_name="open_clip",
    )
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def open_clip_text_state_dict(state_dict: dict[str, Tensor], cfg: CLIPTextConfig) -> dict[str, Tensor]:
    """Our state dict from an open_clip ``CLIP`` (text keys at the top level) or ``CustomTextCLIP``
    (keys under ``text.``) state dict."""
    custom = any(k.startswith("text.") for k in state_dict)
    t = "text." if custom else ""
    text_sd = {
        k: v for k, v in state_dict.items()
        if (k.startswith("text.") if custom else not k.startswith(("visual.", "logit_scale", "logit_bias")))
    }
    read = Reader(text_sd, "open_clip")
    out = read.take_all({"embed.W_E": t + "token_embedding.weight", "pos_embed.W_pos": t + "positional_embedding",
                         "ln_final.w": t + "ln_final.weight", "ln_final.b": t + "ln_final.bias"})
    if cfg.append_cls:
        out["W_cls"] = read.take(t + "cls_emb")
    out.update(convert_blocks(read, cfg, t + "transformer.resblocks.", OPEN_CLIP_BLOCK_NAMES))
    if cfg.d_proj is not None:
        if cfg.proj_bias:
            w = read.take(t + "text_projection.weight")
            out["W_proj"] = w.T if w is not None else None
            out["b_proj"] = read.take(t + "text_projection.bias")
        else:
            out["W_proj"] = read.take(t + "text_projection")
    read.finish(ignore=lambda k: k.endswith("attn_mask"))
    return out


_OPEN_CLIP_HF_TYPES = ("roberta", "xlm-roberta")
_REFUSED_HF_TYPES = {  # transformers model_type -> why its encoder is not expressible
    "mt5": "mT5 is a T5 encoder (relative position buckets, RMS-style LayerNorm before each sublayer)",
    "t5": "T5 is an encoder with relative position buckets and RMS-style LayerNorm before each sublayer",
    "m2m_100": "NLLB is an M2M-100 encoder (sinusoidal positions, pre-LN)",
}
_NAME_HINTS = (("xlm-roberta", "xlm-roberta"), ("roberta", "roberta"), ("nllb", "m2m_100"), ("mt5", "mt5"),
               ("t5", "t5"))


def open_clip_hf_refusal(model_type: str) -> str:
    """Why open_clip's HF text tower of ``model_type`` is refused ("" if hooked_clip reimplements it)."""
    if model_type in _OPEN_CLIP_HF_TYPES:
        return ""
    why = _REFUSED_HF_TYPES.get(model_type, f"{model_type!r} is not one of them")
    return (f"open_clip's HF text tower {model_type!r} is not supported: hooked_clip reimplements the BERT/RoBERTa "
            f"post-LN encoders ({', '.join(_OPEN_CLIP_HF_TYPES)}); {why}, which its blocks do not express")


def hf_type_from_name(hf_model_name: str) -> str:
    """The transformers model_type a hub name stands for, read off the name where it says ("" if it does not):
    enough to refuse a tower before downloading its model."""
    lowered = hf_model_name.lower()
    return next((t for hint, t in _NAME_HINTS if hint in lowered), "")


def config_from_open_clip_hf(text: nn.Module, **overrides) -> CLIPTextConfig:
    """``CLIPTextConfig`` of open_clip's ``HFTextEncoder`` (``hf_model_name`` towers) wrapping a RoBERTa or
    XLM-R model: post-LN blocks with RoBERTa position ids, padding masked (open_clip masks ``pad_token_id``),
    pooled by the mean over non-padding tokens (``mean_pooler``) or at the first token
    (``cls_last_hidden_state_pooler``), projected by nothing, one linear map or open_clip's MLP
    (Linear-GELU-Linear, no biases). mT5 (a T5 encoder: relative position buckets, RMS norm, pre-norm blocks)
    and NLLB (an M2M-100 encoder: sinusoidal positions, pre-LN) and the other poolers are refused by name."""
    from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, MeanPooler

    hf_cfg = text.config
    refusal = open_clip_hf_refusal(hf_cfg.model_type)
    if refusal:
        raise UnsupportedModelError(refusal + ".")
    pooler = text.pooler
    uses_hf_pooler = isinstance(pooler, ClsPooler) and pooler.use_pooler_output and getattr(
        text.transformer, "pooler", None) is not None
    if isinstance(pooler, MeanPooler):
        pooling = "mean"
    elif isinstance(pooler, (ClsPooler, ClsLastHiddenStatePooler)) and not uses_hf_pooler:
        pooling = "first"
    else:
        raise UnsupportedModelError(
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
        raise UnsupportedModelError(f"open_clip HF text projection {proj!r} is not supported (Identity, a linear "
                                    "map or open_clip's Linear-GELU-Linear MLP, without biases).")
    kw = dict(
        **hf_text_shape(hf_cfg), d_proj=d_proj, d_proj_hidden=d_proj_hidden,
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
    read = Reader({k: v for k, v in state_dict.items() if k.startswith("text.proj")}, "open_clip",
                   "HF text tower's projection")
    if cfg.d_proj_hidden is not None:
        w_in, w = read.take("text.proj.0.weight"), read.take("text.proj.2.weight")
        out["W_proj_in"], out["W_proj"] = (None if w_in is None else w_in.T), (None if w is None else w.T)
    elif cfg.d_proj is not None:
        w = read.take("text.proj.weight")
        out["W_proj"] = None if w is None else w.T
    read.finish()
    return out
