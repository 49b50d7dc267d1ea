"""CLIP's byte-level BPE (OpenAI CLIP's ``SimpleTokenizer``, as open_clip ships it) without importing open_clip.

``import open_clip`` builds every model class open_clip has (transformers, torchvision, timm: seconds); the
tokenizer needs only the merges file open_clip bundles, ``bpe_simple_vocab_16e6.txt.gz``. :func:`default_bpe`
finds that file in open_clip's package folder without importing the package, and :class:`BPE` is the same
algorithm (same cleaning: ftfy, html unescape, whitespace, lower case; same pre-tokenising pattern; same
merges), tested id for id against ``open_clip.tokenizer.SimpleTokenizer`` (tests/unit/test_bpe.py).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

from hooked_clip.errors import TokenizerUnavailableError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
N_MERGES = 49152 - 256 - 2  # merges CLIP uses: 49408 tokens = 2*256 bytes + merges + 2 special tokens


@lru_cache()
def default_bpe() -> str:
    """Path of open_clip's bundled merges file, found without importing open_clip."""
    spec = find_spec("open_clip")
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return str(path)
    raise TokenizerUnavailableError(
        f"CLIP's BPE vocabulary ({VOCAB_FILE}) ships with open_clip, which is not installed here. "
        "Install it (pip install open_clip_torch) or pass bpe_path= to the tokenizer.")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map of the 256 byte values to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
    """CLIP's text cleaning: ftfy, html unescaped twice, whitespace runs to one space, lower case."""
    import ftfy  # ~0.1 s, so at the first text rather than at import

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))


class _Vocab:
    """What a merges file defines (read once per file and shared: every tower built with CLIP's BPE uses it)."""

    def __init__(self, bpe_path: str):
        import regex  # \p{L} / \p{N} classes, as CLIP's pattern needs

        byte_encoder = bytes_to_unicode()
        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        vocab = list(byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in SPECIAL_TOKENS}  # word -> its pieces: a pure function of the file
        self.pat = regex.compile("|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)


@lru_cache(maxsize=4)
def _vocab(bpe_path: str, mtime_ns: int) -> _Vocab:
    return _Vocab(bpe_path)


class BPE:
    """The merges file's encoder, decoder and merge ranks, and the per-word BPE with its cache."""

    def __init__(self, bpe_path: str | None = None):
        self.bpe_path = bpe_path or default_bpe()
        vocab = _vocab(str(Path(self.bpe_path).resolve()), Path(self.bpe_path).stat().st_mtime_ns)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.encoder, self.decoder, self.bpe_ranks = vocab.encoder, vocab.decoder, vocab.bpe_ranks
        self.cache, self.pat = vocab.cache, vocab.pat
        self.vocab_size = len(self.encoder)
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)

    def bpe(self, token: str) -> str:
        """The word pieces of one pre-token (space separated, the last one ending in ``</w>``)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of a text's word pieces, without SOT/EOT."""
        ids: list[int] = []
        for token in self.pat.findall(clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids (word ends as spaces; invalid utf-8 replaced), as open_clip decodes."""
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")
