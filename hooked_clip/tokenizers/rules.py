"""Which tokenizer a model gets: :func:`resolve_tokenizer` (what a loader was given) and
:func:`default_tokenizer` (what a model built without one gets)."""

from __future__ import annotations

import os
from typing import Any

from hooked_clip.tokenizers.base import CLIP_VOCAB_SIZE, uses_clip_vocab
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer
from hooked_clip.tokenizers.hf import UnavailableTokenizer, tokenizer_from_hf_dir


def resolve_tokenizer(tokenizer: Any, cfg):
    """The ``TextTokenizer`` a loader gives the model: ``None`` -> :func:`default_tokenizer`; a directory ->
    the transformers tokenizer saved there (:func:`~hooked_clip.tokenizers.hf.tokenizer_from_hf_dir`);
    anything else is taken as a ``TextTokenizer``."""
    if tokenizer is None:
        return default_tokenizer(cfg)
    if isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer_from_hf_dir(tokenizer, cfg)
    return tokenizer


def default_tokenizer(cfg):
    """CLIP's BPE for a CLIP-vocabulary config; otherwise a placeholder that asks for the tokenizer."""
    if uses_clip_vocab(cfg):
        return CLIPTokenizer(context_length=cfg.n_ctx)
    return UnavailableTokenizer(
        f"This model's vocabulary has {cfg.d_vocab} ids, not CLIP's {CLIP_VOCAB_SIZE}, and it was built without "
        "a tokenizer; pass tokenizer=... (a hooked_clip TextTokenizer, e.g. HFTextTokenizer(AutoTokenizer."
        "from_pretrained(DIR), n_ctx)) or load it with its checkpoint's tokenizer.", cfg.n_ctx,
        pad_token_id=cfg.pad_token_id, eot_token_id=cfg.eot_token_id, vocab_size=cfg.d_vocab)
