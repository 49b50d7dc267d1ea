"""The tokenizer contract: :class:`TextTokenizer` (what ``HookedCLIPText`` needs of a tokenizer: ids, padding,
special ids, string forms), the padding rule of a model (:func:`padding_for`) and the helpers every
tokenizer shares. :mod:`~hooked_clip.tokenizers.clip_bpe` implements it for CLIP's BPE,
:mod:`~hooked_clip.tokenizers.hf` for a transformers tokenizer."""

from __future__ import annotations

from typing import Literal, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor

from hooked_clip.errors import TextTooLongError

Text = Union[str, Sequence[str]]


Padding = Literal["longest", "max_length"]


@runtime_checkable
class TextTokenizer(Protocol):
    """What a model's tokenizer provides (``model.tokenizer``).

    ``__call__`` returns ids [batch, pos] padded with ``pad_token_id`` to the longest row or to the context
    length; a text over the context length raises :class:`TextTooLongError` unless ``truncate=True``.
    ``encode(text, special_tokens=False)`` gives the ids of the text alone (no SOT/EOT/CLS/SEP).
    ``eot_token_id``/``sot_token_id`` may be ``None`` where the vocabulary has no such token.
    """

    context_length: int
    pad_token_id: int
    eot_token_id: Optional[int]
    sot_token_id: Optional[int]
    vocab_size: int

    def __call__(self, texts: "Text", *, truncate: bool = False, padding: Padding = "longest",
                 context_length: Optional[int] = None) -> Tensor: ...

    def encode(self, text: str, special_tokens: bool = True) -> list[int]: ...

    def to_str_tokens(self, tokens: Union[Tensor, Sequence[int]]) -> list[str]: ...

    def decode(self, tokens: Union[Tensor, Sequence[int]]) -> str: ...


def as_text_list(texts: "Text") -> list[str]:
    """A non-empty list of strings from one string or a sequence of them."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("to_tokens got an empty list of texts.")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"expected a string, got {type(t).__name__}")
    return texts


def check_padding(padding: str) -> None:
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}.")


def too_long(i: int, text: str, n_tokens: int, n_ctx: int) -> TextTooLongError:
    return TextTooLongError(
        f"text {i} ({text[:60]!r}...) is {n_tokens} tokens long, over the context length of {n_ctx}; "
        "shorten it, or cut it with model.to_tokens(texts, truncate=True) and pass those tokens (cut as the "
        "model's reference tokenizer does)."
    )


def pad_rows(rows: Sequence[Sequence[int]], width: int, pad_token_id: int) -> Tensor:
    """Ids [len(rows), width] (int64): each row, then ``pad_token_id``."""
    out = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


CLIP_VOCAB_SIZE = 49408


def uses_clip_vocab(cfg) -> bool:
    """Whether a text config's ids are CLIP's BPE vocabulary (49408 ids)."""
    return cfg.d_vocab == CLIP_VOCAB_SIZE


def padding_for(cfg, padding: Optional[str]) -> str:
    """The padding ``to_tokens`` uses: by default ``"longest"`` where that is exact (causal tower pooled at
    EOT/argmax, or a tower that masks its padding), else ``"max_length"`` (the context length, as
    bidirectional and last-token towers were trained). Asking for ``"longest"`` where it would change the
    embedding is an error."""
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
