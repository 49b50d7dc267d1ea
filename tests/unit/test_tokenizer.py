"""Tokenizer: ids identical to open_clip and to transformers' CLIPTokenizer on every VALSE existence
sentence; clear errors for text over the context length."""

from __future__ import annotations

import pytest
import torch
from conftest import valse_sentences

from hooked_clip import CLIPTokenizer
from hooked_clip.errors import TextTooLongError


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


def test_valse_ids_match_open_clip(tok):
    import open_clip

    sentences = list(valse_sentences())
    assert len(sentences) > 700
    ours = tok(sentences, padding="max_length")
    ref = open_clip.tokenize(sentences)
    assert ours.dtype == torch.int64 and torch.equal(ours, ref)


def test_valse_ids_match_transformers(tok, tmp_path):
    from transformers import CLIPTokenizer as HFTokenizer

    hf = HFTokenizer.from_pretrained(tok.save_hf_vocab(tmp_path))
    for sentence in valse_sentences():
        assert tok.encode(sentence) == hf(sentence)["input_ids"], sentence


def test_padding_and_pool_positions(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat.", "There are no elephants in the picture."])
    assert tokens.shape == (2, 10)  # padded to the longest row only
    assert tokens[0, 7:].tolist() == [0, 0, 0]
    assert tiny_model.pool_positions(tokens).tolist() == [6, 9]
    assert tiny_model.to_tokens("a", padding="max_length").shape == (1, 77)


def test_str_tokens(tiny_model):
    assert tiny_model.to_str_tokens("There are no cats.") == [
        "<|startoftext|>", "there", "are", "no", "cats", ".", "<|endoftext|>"]
    tokens = tiny_model.to_tokens(["There are no elephants."])
    assert tiny_model.to_str_tokens(tokens[0]) == tiny_model.to_str_tokens("There are no elephants.")
    assert tiny_model.tokenizer.decode(tokens[0]) == "there are no elephants ."


def test_too_long_is_an_error_unless_truncating(tok):
    long = "cat " * 100
    with pytest.raises(TextTooLongError, match=r"102 tokens long, over the context length of 77.*truncate=True"):
        tok([long])
    cut = tok([long], truncate=True)
    import open_clip

    assert cut.shape == (1, 77) and torch.equal(cut, open_clip.tokenize([long]))


def test_bad_text_input(tok):
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(TypeError, match="expected a string"):
        tok([3])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="max")


def test_clip_tokenizer_follows_the_protocol(tok):
    from hooked_clip.tokenizers.base import TextTokenizer

    assert isinstance(tok, TextTokenizer)
    assert tok.encode("There are no cats.", special_tokens=False) == tok.encode("There are no cats.")[1:-1]


def test_model_padding_rule(tiny_model):
    """Causal EOT-pooled towers pad to the longest text; one that reads its padding may not."""
    import dataclasses

    from hooked_clip.tokenizers.base import padding_for

    assert padding_for(tiny_model.cfg, None) == "longest"
    bidirectional = dataclasses.replace(tiny_model.cfg, causal=False)
    last = dataclasses.replace(tiny_model.cfg, pooling="last")
    for cfg in (bidirectional, last):
        assert cfg.pads_to_context and padding_for(cfg, None) == "max_length"
        with pytest.raises(ValueError, match="padding='longest' would change"):
            padding_for(cfg, "longest")
