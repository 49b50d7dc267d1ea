"""Tokenizers: the contract (:mod:`~hooked_clip.tokenizers.base`), CLIP's BPE (:mod:`~hooked_clip.tokenizers.clip_bpe`),
transformers tokenizers saved beside a checkpoint (:mod:`~hooked_clip.tokenizers.hf`) and which one a model
gets (:mod:`~hooked_clip.tokenizers.rules`). Exports are lazy: importing the contract costs no open_clip."""

from hooked_clip.lazy import lazy_exports

_EXPORTS = {"TextTokenizer": "base", "Text": "base", "Padding": "base", "padding_for": "base",
            "uses_clip_vocab": "base", "CLIPTokenizer": "clip_bpe", "HFTextTokenizer": "hf",
            "UnavailableTokenizer": "hf", "tokenizer_from_hf_dir": "hf", "tokenizer_for_open_clip": "hf",
            "resolve_tokenizer": "rules", "default_tokenizer": "rules"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
