"""The family table: the ONE place an architecture is registered.

A *family* is a row of :data:`FAMILIES`: the reference classes that hold it (transformers classes, or the
class of an open_clip model's text tower), the reader of its text tower and of its image tower (functions that
return config + state dict, never a tower), the rule that gives it its tokenizer, how it differs from CLIP
(causal mask, pooling), or the reason it is refused. Loaders look a class up here (:func:`family_for`) and
nowhere else; a user adds a family from their own module with :func:`register_family`
(docs/tutorials/06-extending.md), without editing the package.

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

BERT/RoBERTa post-LayerNorm towers (``post_ln``; their own converter, :func:`hooked_clip.loaders.hf_text.
read_post_ln_text`, keys ``embeddings`` /
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

Their image towers (ChineseCLIP's and AltCLIP's ViT, ALIGN's EfficientNet) are not reimplemented: the model
holds the reference module (``ReferenceVisionTower``: ``encode_image`` is the reference's ``get_image_features``,
hooks are refused naming why), so the study and every text-side analysis run with real images.

FLAVA (:func:`hooked_clip.loaders.hf_text.read_flava_text`): BERT's embeddings on pre-LN blocks, a final
LayerNorm, padding masked, read at the first token; FlavaModel's ``text_projection`` (its contrastive text
embedding: the projected [CLS] row) or FlavaTextModel's tanh pooler. Text tower only (FLAVA's image tower is
neither read nor kept).

Refused, with the reason (rows with ``refused`` set): BLIP (a BERT decoder with cross-attention layers and
a two-layer text head), GroupViT's full model (MLP projection; its text model loads).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from hooked_clip.errors import UnsupportedModelError
from hooked_clip.loaders.family import Family
from hooked_clip.loaders.hf_text import read_clip_text, read_flava_text, read_post_ln_text
from hooked_clip.loaders.hf_vision import read_hf_vision
from hooked_clip.loaders.open_clip_text import read_open_clip_hf_text, read_open_clip_text
from hooked_clip.loaders.open_clip_vision import read_open_clip_vision

_BLIP = ("its text tower is a BERT decoder: BlipTextConfig.is_decoder defaults to True, which gives every layer a "
         "cross-attention to image features that hooked_clip's post-LN block does not have (loading would leave those "
         "weights out); and BlipModel's text embedding is text_projection(tanh(pooler.dense(CLS))), a Linear-tanh-"
         "Linear head that neither of CLIPTextConfig's projections (linear, or open_clip's bias-free "
         "Linear-GELU-Linear) expresses")

_GROUPVIT = ("its text projection is an MLP (Linear-BatchNorm-ReLU-Linear), not one linear map; load "
             "GroupViTTextModel for the (CLIP) text tower without projection")

# transformers "*TextModel" classes of CLIP/MetaCLIP 2/X-CLIP/CLIPSeg/OWL have no projection (d_proj=None),
# SigLIP's carry their head; the image tower is read only for the families with a vision reader.
_HF, _OC = "transformers", "open_clip"
FAMILIES: list[Family] = [
    Family("clip", _HF, ("CLIPModel", "CLIPTextModelWithProjection", "CLIPTextModel"), read_clip_text,
           read_hf_vision, model_types=(("clip", "CLIPModel"), ("clip_text_model", "CLIPTextModelWithProjection"))),
    Family("clipseg", _HF, ("CLIPSegModel", "CLIPSegTextModel"), read_clip_text),
    Family("groupvit", _HF, ("GroupViTTextModel",), read_clip_text),
    Family("owlvit", _HF, ("OwlViTModel", "OwlViTTextModel"), read_clip_text, pooling="argmax"),
    Family("owlv2", _HF, ("Owlv2Model", "Owlv2TextModel"), read_clip_text, pooling="argmax"),
    Family("x_clip", _HF, ("XCLIPModel", "XCLIPTextModel"), read_clip_text, pooling="argmax"),
    Family("metaclip_2", _HF, ("MetaClip2Model", "MetaClip2TextModel", "MetaClip2TextModelWithProjection"),
           read_clip_text, read_hf_vision, model_types=(("metaclip_2", "MetaClip2Model"),), pooling="eot"),
    Family("siglip", _HF, ("SiglipModel", "SiglipTextModel"), read_clip_text, read_hf_vision,
           model_types=(("siglip", "SiglipModel"), ("siglip_text_model", "SiglipTextModel")), causal=False, pooling="last"),
    Family("siglip2", _HF, ("Siglip2Model", "Siglip2TextModel"), read_clip_text, model_types=(("siglip2", "Siglip2Model"),),
           causal=False, pooling="last"),
    Family("chinese_clip", _HF, ("ChineseCLIPModel", "ChineseCLIPTextModel"), read_post_ln_text, read_hf_vision,
           causal=False, pooling="first"),
    Family("altclip", _HF, ("AltCLIPModel", "AltCLIPTextModel"), read_post_ln_text, read_hf_vision, causal=False,
           pooling="first"),
    Family("align", _HF, ("AlignModel", "AlignTextModel"), read_post_ln_text, read_hf_vision, causal=False,
           pooling="first"),
    Family("groupvit-full", _HF, ("GroupViTModel",), refused=_GROUPVIT),
    Family("flava", _HF, ("FlavaModel", "FlavaTextModel"), read_flava_text, causal=False, pooling="first"),
    Family("blip", _HF, ("BlipModel", "BlipTextModel"), refused=_BLIP),
    Family("open_clip", _OC, ("CLIP", "TextTransformer"), read_open_clip_text, read_open_clip_vision),
    Family("open_clip-hf", _OC, ("HFTextEncoder",), read_open_clip_hf_text, read_open_clip_vision),
]


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add a row to the table (from any module: no edit of hooked_clip needed). A class another row already
    holds is an error unless ``replace=True`` (then that row gives the class up)."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family, got {type(family).__name__}.")
    taken = {c: row.name for row in FAMILIES if row.source == family.source for c in row.classes}
    clash = sorted(c for c in family.classes if c in taken and taken[c] != family.name)
    if clash and not replace:
        raise ValueError(f"{clash} already belong to family {taken[clash[0]]!r}; pass replace=True to take them over.")
    kept = []
    for row in FAMILIES:  # the row of the same name is replaced; other rows give up the classes taken over
        rest = tuple(c for c in row.classes if row.source != family.source or c not in family.classes)
        if not (row.source == family.source and row.name == family.name) and rest:
            kept.append(row if rest == row.classes else dataclasses.replace(row, classes=rest))
    FAMILIES[:] = kept + [family]
    return family


def find_family(source: str, class_name: str) -> Optional[Family]:
    """The row holding ``class_name`` (refused rows included), or None."""
    return next((row for row in FAMILIES if row.source == source and class_name in row.classes), None)


def supported_classes(source: str) -> list[str]:
    """Every class of ``source`` that loads (refused rows left out), in table order."""
    return [c for row in FAMILIES if row.source == source and row.refused is None for c in row.classes]


def refused_classes(source: str) -> dict[str, str]:
    """Every refused class of ``source`` -> the reason."""
    return {c: row.refused for row in FAMILIES if row.source == source and row.refused is not None for c in row.classes}


def family_for(source: str, class_name: str, what: str = "", error: type = UnsupportedModelError) -> Family:
    """The row that loads ``class_name``; ``error`` naming the reason for a refused class, or the supported
    ones for an unknown class. ``what`` names the checkpoint in the message."""
    row = find_family(source, class_name)
    if row is not None and row.refused is None:
        return row
    why = row.refused if row is not None else "it is not a CLIP-family model"
    what = what or f"a {source} {class_name or '(unknown class)'}"
    raise error(f"{what} cannot be loaded: {why}. Supported {source} classes: {', '.join(supported_classes(source))} "
                "(or register a family: hooked_clip.loaders.families.register_family).")


def class_for_model_type(model_type: str) -> str:
    """The transformers class to read a config of ``model_type`` as, when it lists no ``architectures`` ("" if
    no row says)."""
    pairs = {t: c for row in FAMILIES if row.source == "transformers" for t, c in row.model_types}
    return pairs.get(model_type, "")
