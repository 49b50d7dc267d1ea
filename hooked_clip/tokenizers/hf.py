"""Tokenizers other than CLIP's BPE, behind the :class:`~hooked_clip.tokenizers.base.TextTokenizer` protocol.

- :class:`HFTextTokenizer` adapts a transformers tokenizer (the one saved beside a checkpoint, or the one
  open_clip's ``HFTokenizer`` wraps: SigLIP's SentencePiece, XLM-V, mT5, BERT for CLIPA, ...). Ids are the
  wrapped tokenizer's own, produced the way the reference produces them (open_clip: text cleaned, padded to
  the context length, truncated, SEP optionally zeroed); only a text over the context length becomes an
  error unless ``truncate=True``.
- :class:`UnavailableTokenizer` stands in where the model's tokenizer cannot be built on this machine: the
  model still runs on ids, and any use of the tokenizer raises one error naming the files to supply.
- :func:`tokenizer_for_open_clip` and :func:`tokenizer_from_hf_dir` pick the tokenizer of a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from jaxtyping import Int
from torch import Tensor

from hooked_clip.errors import CheckpointMismatchError, TokenizerUnavailableError
from hooked_clip.tokenizers.base import Padding, Text, as_text_list, check_padding, pad_rows, too_long, uses_clip_vocab
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer
from hooked_clip.lazy import complete_transformer_lens

# Probe texts on which a directory's CLIP tokenizer must give open_clip's BPE ids before the BPE replaces it.
_PROBES = (
    "There are no cats.", "A man in a red jacket rides a bicycle, next to a bus!", "naïve café 123 ÆØ",
    "  extra   spaces\tand\nnewlines ", "UPPER lower MiXeD", "emoji 🐱 and 漢字", "don't can't won't",
)


class HFTextTokenizer:
    """A transformers tokenizer behind the :class:`~hooked_clip.tokenizers.base.TextTokenizer` protocol.

    Args:
        tokenizer: a transformers ``PreTrainedTokenizerBase``.
        context_length: the model's ``n_ctx``.
        clean: text clean-up applied before tokenizing (open_clip's ``clean_fn``; identity by default).
        strip_sep_token: replace the SEP id by 0 after padding (open_clip's CLIPA setting).
        source: where the tokenizer came from (for messages and ``repr``).
    """

    def __init__(self, tokenizer: Any, context_length: int, clean: Optional[Callable[[str], str]] = None,
                 strip_sep_token: bool = False, source: str = "transformers tokenizer"):
        self.hf = tokenizer
        self.context_length = context_length
        self.clean = clean or (lambda text: text)
        self.strip_sep_token = strip_sep_token
        self.source = source
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = 0 if pad is None else int(pad)
        self.eot_token_id: Optional[int] = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.sot_token_id: Optional[int] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        self.vocab_size: int = len(tokenizer)

    def __repr__(self) -> str:
        return f"HFTextTokenizer({type(self.hf).__name__} from {self.source}, context_length={self.context_length})"

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """Ids of one (cleaned) text, with the tokenizer's special tokens unless ``special_tokens=False``;
        not padded, not truncated."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        ids = self.hf(self.clean(text), add_special_tokens=special_tokens, truncation=False)["input_ids"]
        return [int(i) for i in ids]

    def __call__(self, texts: Text, *, truncate: bool = False, padding: Padding = "longest",
                 context_length: Optional[int] = None) -> Int[Tensor, "batch pos"]:
        """Ids [batch, pos] (int64), padded with ``pad_token_id`` to the longest row or (``"max_length"``) to
        the context length; a text over the context length raises ``TextTooLongError`` unless
        ``truncate=True``, which cuts it as the wrapped tokenizer does (``truncation=True``)."""
        texts = as_text_list(texts)
        check_padding(padding)
        n_ctx = context_length or self.context_length
        rows = []
        for i, text in enumerate(texts):
            row = self.encode(text)
            if len(row) > n_ctx:
                if not truncate:
                    raise too_long(i, text, len(row), n_ctx)
                row = [int(t) for t in self.hf(self.clean(text), truncation=True, max_length=n_ctx)["input_ids"]]
            rows.append(row)
        width = n_ctx if padding == "max_length" else max(len(r) for r in rows)
        out = pad_rows(rows, width, self.pad_token_id)
        if self.strip_sep_token and self.hf.sep_token_id is not None:
            out[out == self.hf.sep_token_id] = 0
        return out

    def to_str_tokens(self, tokens: Union[Int[Tensor, "pos"], Sequence[int]]) -> list[str]:
        """The wrapped tokenizer's piece for each id (SentencePiece's word-start ``▁`` kept)."""
        return list(self.hf.convert_ids_to_tokens([int(t) for t in tokens]))

    def decode(self, tokens: Union[Int[Tensor, "pos"], Sequence[int]]) -> str:
        """Text of one row, without special tokens and padding."""
        return self.hf.decode([int(t) for t in tokens], skip_special_tokens=True).strip()


class UnavailableTokenizer:
    """Placeholder for a tokenizer that cannot be built here; every use raises ``TokenizerUnavailableError``
    with ``message``. The model still runs on token ids."""

    def __init__(self, message: str, context_length: int, pad_token_id: int = 0,
                 eot_token_id: Optional[int] = None, sot_token_id: Optional[int] = None, vocab_size: int = 0):
        self.message = message
        self.context_length = context_length
        self.pad_token_id, self.eot_token_id, self.sot_token_id = pad_token_id, eot_token_id, sot_token_id
        self.vocab_size = vocab_size

    def __repr__(self) -> str:
        return "UnavailableTokenizer(...)"

    def _fail(self, *args, **kwargs):
        raise TokenizerUnavailableError(self.message)

    __call__ = encode = to_str_tokens = decode = _fail


# ------------------------------------------------------------------------------------------ open_clip
def open_clip_tokenizer_name(model_name: str) -> Optional[str]:
    """The HF tokenizer an open_clip model name uses (``text_cfg.hf_tokenizer_name``), or ``None`` for
    CLIP's BPE."""
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    return (cfg.get("text_cfg") or {}).get("hf_tokenizer_name")


def tokenizer_for_open_clip(model_name: str, context_length: int, tokenizer: Any = None, cache_dir: Optional[str] = None):
    """The tokenizer ``open_clip.get_tokenizer(model_name)`` builds, as a ``TextTokenizer``.

    ``tokenizer`` overrides the lookup: a ``TextTokenizer``, an open_clip tokenizer object, or a local
    directory holding the HF tokenizer files (what ``AutoTokenizer.save_pretrained`` writes). Where the
    tokenizer would need a download and is not in the local HF cache, the model gets an
    :class:`UnavailableTokenizer` whose error names the repository and what to pass instead.
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike, HFTokenizer, SimpleTokenizer)):
        return tokenizer  # already a TextTokenizer
    if isinstance(tokenizer, SimpleTokenizer):
        return CLIPTokenizer(context_length=context_length)
    hf_name = open_clip_tokenizer_name(model_name)
    if tokenizer is None and hf_name is None:
        return CLIPTokenizer(context_length=context_length)  # open_clip's SimpleTokenizer, same ids
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    if isinstance(tokenizer, HFTokenizer):
        oc_tok = tokenizer
    elif tokenizer is not None:  # a directory the user named: it must be there
        if not os.path.isdir(tokenizer):
            raise FileNotFoundError(f"No such tokenizer directory: {str(tokenizer)!r}.")
        oc_tok = HFTokenizer(str(tokenizer), context_length=context_length, local_files_only=True, **kwargs)
    else:
        try:  # the config's hub id, from the local HF cache only (a download attempt hangs offline)
            oc_tok = HFTokenizer(hf_name, context_length=context_length, cache_dir=cache_dir, local_files_only=True,
                                 **kwargs)
        except OSError as err:
            return UnavailableTokenizer(_needs_download_message(model_name, hf_name, err), context_length)
    return HFTextTokenizer(oc_tok.tokenizer, context_length, clean=oc_tok.clean_fn,
                           strip_sep_token=oc_tok.strip_sep_token, source=f"open_clip {model_name!r}")


def _needs_download_message(model_name: str, source: str, err: Exception) -> str:
    return (
        f"The tokenizer of open_clip model {model_name!r} is the Hugging Face tokenizer {source!r}, which is "
        f"not on this machine ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Where there is network, "
        f"save it with `transformers.AutoTokenizer.from_pretrained({source!r}).save_pretrained(DIR)` (it writes "
        "tokenizer_config.json, special_tokens_map.json and tokenizer.json or the SentencePiece model), copy "
        "DIR here and pass tokenizer=DIR to HookedCLIP.from_open_clip. Token ids given directly still work."
    )


# ------------------------------------------------------------------------------------- transformers dirs
# a tokenizer that reads all of these as unknown tokens only is not this checkpoint's (English, Chinese, digits)
_UNKNOWN_PROBES = ("a photo of a dog", "There are no cats.", "一只狗的照片", "123")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")


def tokenizer_from_hf_dir(directory: Union[str, Path], cfg) -> Any:
    """The tokenizer saved beside a transformers checkpoint, as a ``TextTokenizer`` for the model ``cfg``.

    A CLIP tokenizer whose ids equal open_clip's BPE on probe texts is replaced by the BPE
    (:class:`CLIPTokenizer`: same ids, CLIP's string forms, no transformers quirks). With no tokenizer
    files, CLIP's BPE is used only for a CLIP-vocabulary model; otherwise the model gets an
    :class:`UnavailableTokenizer` that says which files are needed. A tokenizer with more ids than the
    model's vocabulary is refused.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No such tokenizer directory: {str(directory)!r}.")
    if not any((directory / f).exists() for f in _TOKENIZER_FILES):
        if uses_clip_vocab(cfg):
            return CLIPTokenizer(context_length=cfg.n_ctx)
        return UnavailableTokenizer(
            f"{str(directory)!r} has no tokenizer files and this model's vocabulary ({cfg.d_vocab} ids) is not "
            "CLIP's BPE. Save the checkpoint's tokenizer beside it (`AutoTokenizer.from_pretrained(ID)."
            "save_pretrained(DIR)`, which writes tokenizer_config.json and tokenizer.json or its SentencePiece "
            "model); token ids given directly still work.", cfg.n_ctx, pad_token_id=cfg.pad_token_id,
            eot_token_id=cfg.eot_token_id, vocab_size=cfg.d_vocab)
    from transformers import AutoTokenizer

    complete_transformer_lens()  # its __init__'s huggingface_hub patch, as a plain import of it would apply
    adapted = HFTextTokenizer(AutoTokenizer.from_pretrained(str(directory), local_files_only=True), cfg.n_ctx,
                              source=str(directory))
    if adapted.vocab_size > cfg.d_vocab:
        raise CheckpointMismatchError(
            f"The tokenizer in {str(directory)!r} has {adapted.vocab_size} ids but the model's vocabulary has "
            f"{cfg.d_vocab}; the tokenizer belongs to another checkpoint.")
    unk = getattr(adapted.hf, "unk_token_id", None)
    if unk is not None and all(set(adapted.encode(t, special_tokens=False)) <= {unk} for t in _UNKNOWN_PROBES):
        raise CheckpointMismatchError(
            f"The tokenizer in {str(directory)!r} reads every probe text ({', '.join(map(repr, _UNKNOWN_PROBES))}) as "
            "unknown tokens only: it belongs to another checkpoint (or its vocabulary file is empty). Save the "
            "checkpoint's own tokenizer beside it.")
    if uses_clip_vocab(cfg):
        bpe = CLIPTokenizer(context_length=cfg.n_ctx)
        if all(adapted.encode(t) == bpe.encode(t) for t in _PROBES):
            return bpe
    return adapted


