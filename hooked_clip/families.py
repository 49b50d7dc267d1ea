"""CLIP-family text towers: which reference classes load, and the few rules that differ between them.

A *family* is a text tower that is CLIP's pre-LN transformer under another name, differing only in config
fields (:class:`~hooked_clip.config.CLIPTextConfig`: activation, pooling, causal mask, projection bias,
context length, vocabulary) and in its tokenizer. Adding one = an entry here (or in the open_clip reader
of :mod:`hooked_clip.loading`) + its tokenizer + a parity test (docs/tutorials/06-extending.md).

transformers classes (every one has the same key layout ``embeddings`` / ``encoder.layers`` /
``final_layer_norm`` under ``text_model``, so one weight converter serves all of them):

======================  =========  ==========================================  ===================
family                  causal     pooling                                     projection
======================  =========  ==========================================  ===================
clip, clipseg, groupvit yes        argmax if ``eos_token_id == 2`` else EOT    ``text_projection``
owlvit, owlv2, x_clip   yes        argmax                                      ``text_projection``
metaclip_2              yes        first ``eos_token_id`` (XLM-V: id 2)        ``text_projection``
siglip, siglip2         no         last position (texts padded to n_ctx)       ``head`` (with bias)
======================  =========  ==========================================  ===================

BERT/RoBERTa post-LayerNorm towers (``post_ln``; their own converter, :func:`hooked_clip.loading.
config_from_hf_post_ln` / :func:`~hooked_clip.loading.hf_post_ln_state_dict`, keys ``embeddings`` /
``encoder.layer`` / ...; padding masked, so texts pad to the longest of the batch):

======================  =========  ==========================================  ===========================
family                  causal     pooling                                     projection
======================  =========  ==========================================  ===========================
chinese_clip (BERT)     no         first token (CLS)                           ``text_projection``; text
                                                                               model: pooler, tanh(W x + b)
altclip (XLM-R)         no         first token (<s>), after ``pre_LN``         ``transformation`` (+ ``text_
                                                                               projection``, folded)
align (BERT)            no         first token (CLS)                           ``text_projection`` (bias);
                                                                               text model: tanh pooler
======================  =========  ==========================================  ===========================

Text towers only: these classes' image towers (ChineseCLIP's and AltCLIP's ViT, ALIGN's EfficientNet) are
not reimplemented, so ``HookedCLIP.vision`` is ``None`` for them.

Refused, with the reason (:data:`REFUSED_HF_CLASSES`): BLIP (a BERT decoder with cross-attention layers and
a two-layer text head), FLAVA (BERT embeddings and pooler on pre-LN blocks), GroupViT's full model (MLP
projection; its text model loads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from hooked_clip.config import CLIPTextConfig
from hooked_clip.tokenizer import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class HFFamily:
    """How one transformers family differs from CLIP (see the module table)."""

    name: str
    causal: bool = True
    pooling: str = "clip"  # "clip" (argmax if eos == 2 else eot) | "argmax" | "eot" | "last"
    vision: bool = False  # image features = vision_model pooler output (+ visual_projection)
    post_ln: bool = False  # a BERT/RoBERTa tower (loading.config_from_hf_post_ln / hf_post_ln_state_dict)


FAMILIES = {f.name: f for f in (
    HFFamily("clip", vision=True),
    HFFamily("clipseg"),
    HFFamily("groupvit"),
    HFFamily("owlvit", pooling="argmax"),
    HFFamily("owlv2", pooling="argmax"),
    HFFamily("x_clip", pooling="argmax"),
    HFFamily("metaclip_2", pooling="eot", vision=True),
    HFFamily("siglip", causal=False, pooling="last", vision=True),
    HFFamily("siglip2", causal=False, pooling="last"),
    HFFamily("chinese_clip", causal=False, pooling="first", post_ln=True),
    HFFamily("altclip", causal=False, pooling="first", post_ln=True),
    HFFamily("align", causal=False, pooling="first", post_ln=True),
)}

# transformers class -> family. Text-only classes have no image tower; "*TextModel" of CLIP/MetaCLIP 2/
# X-CLIP/CLIPSeg/OWL have no projection (d_proj=None), SigLIP's carry their head.
HF_CLASSES = {
    "CLIPModel": "clip", "CLIPTextModelWithProjection": "clip", "CLIPTextModel": "clip",
    "CLIPSegModel": "clipseg", "CLIPSegTextModel": "clipseg", "GroupViTTextModel": "groupvit",
    "OwlViTModel": "owlvit", "OwlViTTextModel": "owlvit",
    "Owlv2Model": "owlv2", "Owlv2TextModel": "owlv2",
    "XCLIPModel": "x_clip", "XCLIPTextModel": "x_clip",
    "MetaClip2Model": "metaclip_2", "MetaClip2TextModel": "metaclip_2",
    "MetaClip2TextModelWithProjection": "metaclip_2",
    "SiglipModel": "siglip", "SiglipTextModel": "siglip",
    "Siglip2Model": "siglip2", "Siglip2TextModel": "siglip2",
    "ChineseCLIPModel": "chinese_clip", "ChineseCLIPTextModel": "chinese_clip",
    "AltCLIPModel": "altclip", "AltCLIPTextModel": "altclip",
    "AlignModel": "align", "AlignTextModel": "align",
}

_BLIP = ("its text tower is a BERT decoder: BlipTextConfig.is_decoder defaults to True, which gives every layer a "
         "cross-attention to image features that hooked_clip's post-LN block does not have (loading would leave those "
         "weights out); and BlipModel's text embedding is text_projection(tanh(pooler.dense(CLS))), a Linear-tanh-"
         "Linear head that neither of CLIPTextConfig's projections (linear, or open_clip's bias-free "
         "Linear-GELU-Linear) expresses")
_FLAVA = ("its text tower has pre-LN blocks but BERT's embeddings (token-type embeddings, a LayerNorm on the "
          "embeddings) and a tanh pooler on the first token, which CLIPTextConfig cannot express")
REFUSED_HF_CLASSES = {
    "GroupViTModel": ("its text projection is an MLP (Linear-BatchNorm-ReLU-Linear), not one linear map; load "
                      "GroupViTTextModel for the (CLIP) text tower without projection"),
    "FlavaModel": _FLAVA, "FlavaTextModel": _FLAVA,
    "BlipModel": _BLIP, "BlipTextModel": _BLIP,
}


def hf_family(hf_model: nn.Module) -> HFFamily:
    """The family of an in-memory transformers model, or a ``TypeError`` naming what is supported."""
    name = type(hf_model).__name__
    if name in HF_CLASSES:
        return FAMILIES[HF_CLASSES[name]]
    why = REFUSED_HF_CLASSES.get(name, "it is not a CLIP-family model")
    raise TypeError(
        f"from_hf cannot load a transformers {name}: {why}. Supported classes: {', '.join(HF_CLASSES)}."
    )


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


def hf_pooling(family: HFFamily, eos_token_id: int) -> tuple[str, int]:
    """(``cfg.pooling``, ``cfg.eot_token_id``) of a transformers family, as its text model pools."""
    if family.pooling == "clip":  # HF CLIP: eos_token_id == 2 is the legacy marker for argmax pooling
        return ("argmax", 49407) if eos_token_id == 2 else ("eot", eos_token_id)
    if family.pooling == "eot":
        return "eot", eos_token_id
    return family.pooling, eos_token_id


# ------------------------------------------------------------------------------------------ tokens
def padding_for(cfg: CLIPTextConfig, padding: Optional[str]) -> str:
    """The padding ``to_tokens`` uses: by default ``"longest"`` where that is exact (causal tower pooled at
    EOT/argmax), else ``"max_length"`` (the context length, as bidirectional and last-token towers were
    trained). Asking for ``"longest"`` where it would change the embedding is an error."""
    if padding is None:
        return "max_length" if cfg.pads_to_context else "longest"
    if padding == "longest" and cfg.pads_to_context:
        raise ValueError(
            f"padding='longest' would change this model's text embeddings: its tower "
            f"({'bidirectional' if not cfg.causal else 'causal'}, pooling={cfg.pooling!r}) reads the padding, "
            f"and its reference pads to the context length ({cfg.n_ctx}). Leave padding unset or pass "
            "padding='max_length'."
        )
    return padding


def uses_clip_vocab(cfg: CLIPTextConfig) -> bool:
    """Whether a config's ids are CLIP's BPE vocabulary (49408 ids)."""
    return cfg.d_vocab == CLIP_VOCAB_SIZE


def resolve_tokenizer(tokenizer: Any, cfg: CLIPTextConfig):
    """The ``TextTokenizer`` a loader gives the model: ``None`` -> :func:`default_tokenizer`; a directory ->
    the transformers tokenizer saved there (:func:`hooked_clip.hf_tokenizer.tokenizer_from_hf_dir`);
    anything else is taken as a ``TextTokenizer``."""
    if tokenizer is None:
        return default_tokenizer(cfg)
    if isinstance(tokenizer, (str, os.PathLike)):
        from hooked_clip.hf_tokenizer import tokenizer_from_hf_dir

        return tokenizer_from_hf_dir(tokenizer, cfg)
    return tokenizer


def default_tokenizer(cfg: CLIPTextConfig):
    """CLIP's BPE for a CLIP-vocabulary config; otherwise a placeholder that asks for the tokenizer."""
    if uses_clip_vocab(cfg):
        return CLIPTokenizer(context_length=cfg.n_ctx)
    from hooked_clip.hf_tokenizer import UnavailableTokenizer

    return UnavailableTokenizer(
        f"This model's vocabulary has {cfg.d_vocab} ids, not CLIP's {CLIP_VOCAB_SIZE}, and it was built without "
        "a tokenizer; pass tokenizer=... (a hooked_clip TextTokenizer, e.g. HFTextTokenizer(AutoTokenizer."
        "from_pretrained(DIR), n_ctx)) or load it with its checkpoint's tokenizer.", cfg.n_ctx,
        pad_token_id=cfg.pad_token_id, eot_token_id=cfg.eot_token_id, vocab_size=cfg.d_vocab)
