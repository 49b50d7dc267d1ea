"""CLIP's BPE tokenizer (:class:`CLIPTokenizer`), implementing :class:`~hooked_clip.tokenizers.base.TextTokenizer`
from open_clip's bundled vocabulary (the offline source of truth), read by :mod:`~hooked_clip.tokenizers.bpe`
without importing open_clip.

Ids are identical to ``open_clip.tokenize`` and to a transformers ``CLIPTokenizer`` built from the same
vocabulary (see :meth:`CLIPTokenizer.save_hf_vocab`). Unlike ``open_clip.tokenize``, text longer than the
context length is an error unless the caller asks for truncation, and batches are padded only to their
longest row by default (positions after EOT are never read by a causal, EOT-pooled tower).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from hooked_clip.tokenizers.bpe import BPE, N_MERGES
from hooked_clip.tokenizers.base import Padding, Text, as_text_list, check_padding, pad_rows, too_long

SOT_STR = "<|startoftext|>"
EOT_STR = "<|endoftext|>"
_HF_NAMES = {"<start_of_text>": SOT_STR, "<end_of_text>": EOT_STR}


class CLIPTokenizer:
    """Byte-level BPE tokenizer of CLIP (lower-cased, whitespace-cleaned, ftfy-fixed, like open_clip)."""

    pad_token_id = 0  # open_clip's padding id

    def __init__(self, context_length: int = 77, bpe_path: str | None = None):
        self._bpe = BPE(bpe_path)
        self.bpe_path = self._bpe.bpe_path
        self.context_length = context_length
        self.sot_token_id: int = self._bpe.sot_token_id
        self.eot_token_id: int = self._bpe.eot_token_id
        self.vocab_size: int = self._bpe.vocab_size

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """Ids of one text, with SOT and EOT (unless ``special_tokens=False``), not padded, not truncated."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        ids = self._bpe.encode(text)
        return [self.sot_token_id, *ids, self.eot_token_id] if special_tokens else ids

    def __call__(
        self,
        texts: Text,
        *,
        truncate: bool = False,
        padding: Padding = "longest",
        context_length: int | None = None,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids [batch, pos] (int64), SOT ... EOT then ``pad_token_id`` (0).

        ``padding="longest"`` pads to the longest text of the batch, ``"max_length"`` to the context
        length (what ``open_clip.tokenize`` returns). A text over the context length raises
        :class:`TextTooLongError` unless ``truncate=True``, which keeps the first ``context_length - 1``
        tokens and ends the row with EOT, exactly as open_clip does.
        """
        texts = as_text_list(texts)
        check_padding(padding)
        n_ctx = context_length or self.context_length
        rows = [self.encode(t) for t in texts]
        for i, row in enumerate(rows):
            if len(row) > n_ctx:
                if not truncate:
                    raise too_long(i, texts[i], len(row), n_ctx)
                rows[i] = row[: n_ctx - 1] + [self.eot_token_id]
        width = n_ctx if padding == "max_length" else max(len(r) for r in rows)
        return pad_rows(rows, width, self.pad_token_id)

    def token_str(self, token_id: int) -> str:
        """The text of one token: special tokens as ``<|startoftext|>``/``<|endoftext|>``, word pieces
        without the end-of-word marker ``</w>``."""
        piece = self._bpe.decoder[int(token_id)]
        if piece in _HF_NAMES:
            return _HF_NAMES[piece]
        raw = bytearray(self._bpe.byte_decoder[c] for c in piece.replace("</w>", ""))
        return raw.decode("utf-8", errors="replace")

    def to_str_tokens(self, tokens: Int[Tensor, "pos"] | Sequence[int]) -> list[str]:
        """String form of each id of one row (padding included, if the row has any)."""
        return [self.token_str(int(t)) for t in tokens]

    def decode(self, tokens: Int[Tensor, "pos"] | Sequence[int]) -> str:
        """Text of one row, without SOT, EOT and padding."""
        ids = [int(t) for t in tokens]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        ids = [t for t in ids if t != self.sot_token_id]
        return self._bpe.decode(ids).strip()

    def save_hf_vocab(self, directory: str | Path) -> Path:
        """Write ``vocab.json`` and ``merges.txt`` so ``transformers.CLIPTokenizer.from_pretrained(directory)``
        builds the same tokenizer offline. Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {_HF_NAMES.get(k, k): v for k, v in self._bpe.encoder.items()}
        (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = gzip.open(self.bpe_path).read().decode("utf-8").split("\n")
        merges = lines[1 : N_MERGES + 1]  # the slice open_clip's SimpleTokenizer uses
        (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return directory
