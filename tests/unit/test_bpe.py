"""CLIP's BPE without open_clip (hooked_clip.tokenizers.bpe): id for id equal to open_clip's SimpleTokenizer
(the reference, imported here only) on strings that exercise cleaning, unicode, the pre-tokenising pattern and
long words."""

from __future__ import annotations

import pytest

from hooked_clip.tokenizers.bpe import BPE, default_bpe

TRICKY = [
    "", "   ", "a", "A photo of a CAT.", "There are no cats!!!", "It's a dog's toy; they're here, we'll see, I'd go.",
    "  leading\tand\ttrailing \n\n whitespace\r\n ", "&amp; &lt;b&gt; html &amp;amp; twice &#39;quoted&#39;",
    "naïve café résumé Ärger straße ĲSSELMEER", "東京タワーの写真", "日本語とEnglish混在", "Привет, мир", "مرحبا بالعالم",
    "emoji 🐈‍⬛🐕🏳️‍🌈 and 👍🏽", "mojibake: Ã©tÃ© â€œquotesâ€\x9d", "numbers 12345 3.14 1,000,000 ½ ² Ⅻ",
    "punctuation ... --- !!! ??? ((( ))) [] {} <> @#$%^&*_+=|\\/~`", "under_score snake_case CamelCaseWord",
    "<start_of_text> <end_of_text> inline special strings", "supercalifragilisticexpialidocious" * 3,
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism", "x" * 300,
    " ".join(["word"] * 120), "zero\u200bwidth and\u00a0nbsp and ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "combining e\u0301 vs é", "tab\tsep\tvalues", "a.b,c;d:e?f!g", "'s 't 're 've 'm 'll 'd alone", "I'M SHOUTING'S",
]


@pytest.fixture(scope="module")
def pair():
    from open_clip.tokenizer import SimpleTokenizer

    return BPE(), SimpleTokenizer()


@pytest.mark.parametrize("text", TRICKY)
def test_ids_equal_open_clip(pair, text):
    ours, ref = pair
    assert ours.encode(text) == ref.encode(text)


def test_vocab_and_decode_equal_open_clip(pair):
    ours, ref = pair
    assert ours.encoder == ref.encoder and ours.bpe_ranks == ref.bpe_ranks
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (ref.sot_token_id, ref.eot_token_id, ref.vocab_size)
    for text in TRICKY:
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode([256, 300, 49406]) == ref.decode([256, 300, 49406])  # partial utf-8 bytes


def test_vocab_file_is_open_clips():
    from open_clip.tokenizer import default_bpe as reference

    assert default_bpe() == reference()  # found by find_spec: tests/unit/test_startup.py checks no import


def test_missing_vocab_is_one_clear_error(monkeypatch):
    import hooked_clip.tokenizers.bpe as bpe
    from hooked_clip.errors import TokenizerUnavailableError

    monkeypatch.setattr(bpe, "find_spec", lambda name: None)
    bpe.default_bpe.cache_clear()
    try:
        with pytest.raises(TokenizerUnavailableError, match="ships with open_clip.*pip install open_clip_torch"):
            bpe.default_bpe()
    finally:
        bpe.default_bpe.cache_clear()
