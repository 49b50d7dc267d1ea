"""CLIP-family text towers: each loads with its reference's config, weights and tokenizer, and matches its
reference (transformers or open_clip) per block and at the output to 1e-5 on random weights.

Covers: bidirectional towers (MobileCLIP-S*, SigLIP) padded as their reference pads; strict loading of
transformers directories (missing/foreign weights, CLIPTextModel without projection, mistyped paths); the
checkpoint's own tokenizer (SentencePiece / WordPiece built offline here, ids checked against the
reference tokenizer); SigLIP/SigLIP2 (tanh GELU, last-token pooling, head with bias, logit_bias);
OWL-ViT, OWLv2, X-CLIP, CLIPSeg, MetaCLIP 2; refusals (BLIP, GroupViTModel). Post-LN towers: test_post_ln.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MIXED_TEXTS, randomize_, valse_sentences, wordpiece

from hooked_clip import HookedCLIP
from hooked_clip.tokenizers.hf import HFTextTokenizer, UnavailableTokenizer, tokenizer_for_open_clip
from hooked_clip.parity import capture_block_outputs, parity_errors
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer
from hooked_clip.errors import CheckpointMismatchError, TextTooLongError, TokenizerUnavailableError
from hooked_clip.analyses.valse_negation.layout import ROWS

ATOL = 1e-5
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2)
TEXTS = MIXED_TEXTS[:4] + ["A dog.", "There are no elephants in the water, and no people on the bank."]


# ------------------------------------------------------------------------------------------ helpers
def hf_text_reference(hf, tokens):
    """(text embeddings, [block outputs]) computed by transformers itself."""
    layers = [m for n, m in hf.named_modules() if n.endswith("encoder.layers") and n.startswith(("text_model", "encoder"))]
    assert len(layers) == 1

    def run():
        if hasattr(hf, "get_text_features"):
            out = hf.get_text_features(input_ids=tokens)
        else:
            out = hf(input_ids=tokens)
        if isinstance(out, torch.Tensor):
            return out
        return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output

    return capture_block_outputs(layers[0], run)


def assert_parity(model, tokens, ref_embeds, ref_blocks):
    for trim in (False, True):
        errors = parity_errors(model.text, tokens, ref_embeds, ref_blocks, trim=trim)
        assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, (errors, trim)


def hf_pair(cls_name: str, text_kw: dict | None = None, seed: int = 0):
    """A random transformers model (with a small vision tower for two-tower classes), LN randomised."""
    import transformers

    cls = getattr(transformers, cls_name)
    ccls = cls.config_class
    text_kw = {**SMALL, **(text_kw or {})}
    torch.manual_seed(seed)
    if "text_config" in getattr(ccls, "sub_configs", {}):
        tc = ccls.sub_configs["text_config"](**text_kw)
        vc = ccls.sub_configs["vision_config"](**{**SMALL, "image_size": 32, "patch_size": 16})
        kw = {"projection_dim": 48} if "projection_dim" in ccls().to_dict() else {}
        model = cls(ccls(text_config=tc.to_dict(), vision_config=vc.to_dict(), **kw))
    else:
        model = cls(ccls(**text_kw))
    return randomize_(model, seed)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    """A SigLIP SentencePiece tokenizer trained offline on the VALSE sentences, saved as transformers does."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(valse_sentences()))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "sp"), vocab_size=300, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    out = d / "tok"
    SiglipTokenizer(vocab_file=str(d / "sp.model")).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    """A BERT WordPiece tokenizer (CLIPA's layout) trained offline on the VALSE sentences, written as a checkpoint
    holds it (transformers 5's ``BertTokenizerFast(vocab_file=...)`` would silently ignore the file)."""
    out = tmp_path_factory.mktemp("wp") / "tok"
    wordpiece(out)
    return out


# ------------------------------------------------------------------- bidirectional towers (MobileCLIP-S*)
def test_mobileclip_text_configs_are_plain_bidirectional_text_transformers():
    """What the fix below relies on: MobileCLIP-S1/S2 and MobileCLIP2-* text towers are open_clip's plain
    TextTransformer with no causal mask, argmax pooling, no padding mask (they attend to padding)."""
    import open_clip

    names = [n for n in open_clip.list_models() if n.startswith("MobileCLIP") and not n.endswith("-B")]
    assert sorted(names) == ["MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-L-14", "MobileCLIP2-S0", "MobileCLIP2-S2",
                             "MobileCLIP2-S3", "MobileCLIP2-S4"]
    for name in names:
        text_cfg = open_clip.get_model_config(name)["text_cfg"]
        assert text_cfg.get("no_causal_mask") is True and "hf_model_name" not in text_cfg, name
        assert text_cfg.get("pool_type", "argmax") == "argmax" and not text_cfg.get("use_pad_mask"), name


@pytest.fixture(scope="module")
def bidirectional_open_clip():
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(3)
    oc = CustomTextCLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32),
                        text_cfg=dict(width=64, heads=2, layers=2, no_causal_mask=True))
    return randomize_(oc, seed=3)


def test_bidirectional_tower_embedding_does_not_depend_on_batch_mates(bidirectional_open_clip):
    import open_clip

    oc = bidirectional_open_clip
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    assert not model.cfg.causal and model.cfg.pads_to_context and not model.cfg.trims
    tokens = model.to_tokens(TEXTS)
    assert torch.equal(tokens, open_clip.tokenize(TEXTS))  # padded to the context length, as the reference
    with torch.no_grad():
        alone = model.encode_text(["There is a cat."], normalize=False)
        in_batch = model.encode_text(["There is a cat.", TEXTS[2]], normalize=False)[:1]
        ref = oc.encode_text(open_clip.tokenize(["There is a cat."]))
    assert (alone - in_batch).abs().max() <= 1e-6  # batch size changes float rounding only
    assert (alone - ref).abs().max() <= ATOL
    with pytest.raises(ValueError, match="padding='longest' would change this model's text embeddings.*bidirectional"):
        model.to_tokens(TEXTS, padding="longest")
    ref_embeds, ref_blocks = capture_block_outputs(oc.text.transformer.resblocks, lambda: oc.encode_text(tokens))
    assert_parity(model, tokens, ref_embeds, ref_blocks)


# ---------------------------------------------------------------------------- strict transformers loading
def _resave_weights(directory, edit):
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    sd = edit(load_file(path))
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"format": "pt"})


def test_clip_dir_without_text_projection_is_refused(tmp_path):
    hf_pair("CLIPModel").save_pretrained(tmp_path)
    _resave_weights(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "text_projection.weight"})
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): text_projection.weight.*refuses"):
        HookedCLIP.from_pretrained(tmp_path)


def test_clip_config_beside_foreign_weights_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    hf_pair("CLIPModel").save_pretrained(tmp_path)
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
    (tmp_path / "model.safetensors").write_bytes((bert / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): .*unexpected keys \(\d+\): .*embeddings.word_embeddings"):
        HookedCLIP.from_pretrained(tmp_path)


def test_weights_of_other_shapes_are_refused(tmp_path):
    hf_pair("CLIPModel").save_pretrained(tmp_path)
    _resave_weights(tmp_path, lambda sd: {**sd, "text_projection.weight": torch.zeros(48, 32)})
    with pytest.raises(CheckpointMismatchError, match="text_projection.weight"):
        HookedCLIP.from_pretrained(tmp_path)


def test_clip_text_model_dir_loads_without_projection(tmp_path):
    """SD-v1 style text encoder: no projection in the checkpoint, so none in the model (never random)."""
    hf = hf_pair("CLIPTextModel", {"eos_token_id": 2})
    hf.save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    assert model.cfg.d_proj is None and model.text.W_proj is None and model.vision is None
    tokens = model.to_tokens(TEXTS)
    ref_embeds, ref_blocks = hf_text_reference(hf, tokens)
    assert ref_embeds.shape == (len(TEXTS), SMALL["hidden_size"])
    assert_parity(model, tokens, ref_embeds, ref_blocks)


def test_mistyped_local_directory_is_reported_as_such(tmp_path, monkeypatch):
    for wrong in (tmp_path / "no-such-dir", str(tmp_path / "no-such-dir"), "./typo", "checkpoints/clip/x", "mydir"):
        with pytest.raises(FileNotFoundError, match="No such directory"):
            HookedCLIP.from_pretrained(wrong)
    (tmp_path / "ckpts").mkdir()  # 'ckpts/clip' with an existing 'ckpts' folder is a path, not a hub id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such directory: 'ckpts/clip'"):
        HookedCLIP.from_pretrained("ckpts/clip")


# ------------------------------------------------------------------------------------- tokenizers
def test_clip_dir_with_its_tokenizer_uses_the_bpe_once_proven_equal(tmp_path):
    hf_pair("CLIPModel").save_pretrained(tmp_path)
    CLIPTokenizer().save_hf_vocab(tmp_path)
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    HFCLIPTokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    assert isinstance(model.tokenizer, CLIPTokenizer)


def test_siglip_dir_carries_its_sentencepiece_tokenizer(tmp_path, spm_dir):
    from transformers import AutoTokenizer

    hf = hf_pair("SiglipModel", {"vocab_size": 300, "max_position_embeddings": 24})
    hf.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(spm_dir).save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    assert isinstance(model.tokenizer, HFTextTokenizer)
    ref_tok = AutoTokenizer.from_pretrained(tmp_path)
    texts = [t for t in TEXTS if len(ref_tok(t)["input_ids"]) <= 24]
    tokens = model.to_tokens(texts)
    expected = ref_tok(texts, padding="max_length", max_length=24, return_tensors="pt")["input_ids"]
    assert torch.equal(tokens, expected)
    assert model.to_str_tokens("There are no cats.") == ref_tok.convert_ids_to_tokens(ref_tok("There are no cats.")["input_ids"])
    assert model.tokenizer.encode("There are no cats.", special_tokens=False) == ref_tok(
        "There are no cats.", add_special_tokens=False)["input_ids"]
    long = "There are no cats " * 20
    with pytest.raises(TextTooLongError, match="over the context length of 24"):
        model.to_tokens([long])
    cut = model.to_tokens([long], truncate=True)
    assert torch.equal(cut, ref_tok([long], padding="max_length", max_length=24, truncation=True, return_tensors="pt")["input_ids"])


def test_dir_without_tokenizer_files_asks_for_them(tmp_path):
    hf_pair("SiglipModel", {"vocab_size": 300, "max_position_embeddings": 24}).save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    assert isinstance(model.tokenizer, UnavailableTokenizer)
    with pytest.raises(TokenizerUnavailableError, match="no tokenizer files.*save_pretrained\\(DIR\\)"):
        model.to_tokens("a cat")
    with torch.no_grad():  # ids still work
        assert model.encode_text(torch.randint(0, 300, (2, 24))).shape == (2, model.cfg.d_proj)


def test_tokenizer_of_another_checkpoint_is_refused(tmp_path, spm_dir):
    from transformers import AutoTokenizer

    hf_pair("SiglipModel", {"vocab_size": 100, "max_position_embeddings": 24}).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(spm_dir).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="has 300 ids but the model's vocabulary has 100"):
        HookedCLIP.from_pretrained(tmp_path)


def test_open_clip_hf_tokenizer_ids_equal_open_clips(spm_dir, wordpiece_dir):
    """SigLIP (canonicalize clean) and CLIPA (BERT, SEP zeroed) tokenizers as open_clip builds them."""
    from open_clip.tokenizer import HFTokenizer

    texts = list(valse_sentences())[:200] + ["UPPER case, punctuation!!", "  spaces  "]
    for name, directory, kwargs in (("ViT-B-16-SigLIP", spm_dir, {"clean": "canonicalize"}),
                                    ("ViT-L-14-CLIPA", wordpiece_dir, {"strip_sep_token": True})):
        ours = tokenizer_for_open_clip(name, 32, tokenizer=str(directory))
        ref = HFTokenizer(str(directory), context_length=32, **kwargs)
        assert isinstance(ours, HFTextTokenizer)
        assert torch.equal(ours(texts, padding="max_length", truncate=True), ref(texts)), name


def test_open_clip_tokenizer_that_needs_a_download_says_so():
    tok = tokenizer_for_open_clip("ViT-B-16-SigLIP", 64)
    assert isinstance(tok, UnavailableTokenizer)
    with pytest.raises(TokenizerUnavailableError, match=r"'timm/ViT-B-16-SigLIP'.*save_pretrained\(DIR\).*tokenizer=DIR"):
        tok("a cat")
    assert isinstance(tokenizer_for_open_clip("ViT-B-32", 77), CLIPTokenizer)
    with pytest.raises(FileNotFoundError, match="No such tokenizer directory: 'no/such/tokenizer'"):
        tokenizer_for_open_clip("ViT-B-16-SigLIP", 64, tokenizer="no/such/tokenizer")


# ---------------------------------------------------------------------------------- SigLIP / SigLIP2
@pytest.mark.parametrize("cls_name", ["SiglipModel", "SiglipTextModel", "Siglip2Model", "Siglip2TextModel"])
def test_siglip_parity(cls_name):
    hf = hf_pair(cls_name, {"vocab_size": 300, "max_position_embeddings": 24})
    model = HookedCLIP.from_hf(hf, device="cpu")
    cfg = model.cfg
    assert (cfg.act_fn, cfg.pooling, cfg.causal, cfg.proj_bias, cfg.eps) == ("gelu_tanh", "last", False, True, 1e-6)
    tokens = torch.randint(0, 300, (5, 24), generator=torch.Generator().manual_seed(0))
    assert_parity(model, tokens, *hf_text_reference(hf, tokens))


@pytest.mark.parametrize("cls_name", ["SiglipModel", "MetaClip2Model"])
def test_similarity_matches_the_reference_logits(cls_name):
    """SigLIP: exp(logit_scale) * cos + logit_bias (a sigmoid model); MetaCLIP 2: CLIP's, no bias."""
    hf = hf_pair(cls_name, {"vocab_size": 300, "max_position_embeddings": 24, "eos_token_id": 2})
    with torch.no_grad():
        hf.logit_scale.fill_(2.0)
        if hasattr(hf, "logit_bias"):
            hf.logit_bias.fill_(-3.5)
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert (model.logit_bias is not None) == (cls_name == "SiglipModel")
    if model.logit_bias is not None:
        assert model.logit_bias.item() == -3.5
    tokens = torch.randint(3, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    tokens[:, 10] = 2  # MetaCLIP 2 pools at the first eos id; SigLIP reads the last position
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(input_ids=tokens, pixel_values=pixels).logits_per_text
        text, image = model.encode_text(tokens), model.encode_image(pixels)
        ours = model.similarity(text, image)
    assert (ours - ref).abs().max() <= 1e-4
    # the paired forms read the same logits, bias included (text b with image b): the metrics and the study's
    # caption and foil scores go through them
    from hooked_clip.analyses.metrics import similarity_metric

    diagonal = ref[:2].diagonal()
    assert (model.paired_similarity(text[:2], image) - diagonal).abs().max() <= 1e-4
    assert (similarity_metric(model, image)(text[:2]) - diagonal).abs().max() <= 1e-4


def test_open_clip_siglip2_style_tower_parity():
    """open_clip's SigLIP2 text tower: tanh GELU, eps 1e-6, last-token pooling, projection with bias, no mask."""
    from functools import partial

    import open_clip
    from open_clip.model import CustomTextCLIP

    text_cfg = {k: v for k, v in open_clip.get_model_config("ViT-B-16-SigLIP2")["text_cfg"].items()
                if k not in ("hf_tokenizer_name", "tokenizer_kwargs")}
    text_cfg.update(width=64, heads=2, layers=2, vocab_size=300, context_length=24)
    torch.manual_seed(4)
    oc = randomize_(CustomTextCLIP(embed_dim=32, init_logit_bias=-10.0, text_cfg=text_cfg,
                                   vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32)), 4)
    assert isinstance(oc.text.transformer.resblocks[0].mlp.gelu, partial(torch.nn.GELU).func)
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    assert (model.cfg.act_fn, model.cfg.pooling, model.cfg.causal, model.cfg.proj_bias) == ("gelu_tanh", "last", False, True)
    assert model.logit_bias.item() == -10.0
    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(3))
    assert_parity(model, tokens, *capture_block_outputs(oc.text.transformer.resblocks, lambda: oc.encode_text(tokens)))


# ------------------------------------------------------------------- CLIP's tower under another class
@pytest.mark.parametrize("cls_name", ["OwlViTModel", "OwlViTTextModel", "Owlv2Model", "Owlv2TextModel", "XCLIPModel",
                                      "XCLIPTextModel", "CLIPSegModel", "CLIPSegTextModel", "MetaClip2Model",
                                      "MetaClip2TextModel", "MetaClip2TextModelWithProjection", "GroupViTTextModel"])
def test_other_class_parity(cls_name):
    hf = hf_pair(cls_name, {"max_position_embeddings": 16})
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert model.cfg.causal and model.cfg.act_fn == "quick_gelu"
    tokens = model.to_tokens([t for t in TEXTS if len(model.tokenizer.encode(t)) <= 16], padding="max_length")
    assert_parity(model, tokens, *hf_text_reference(hf, tokens))


def test_metaclip_2_pools_at_the_first_eos_id_2():
    """XLM-V ids: EOS is id 2, not the largest id, so argmax pooling would read the wrong position."""
    hf = hf_pair("MetaClip2Model", {"vocab_size": 500, "eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1})
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert (model.cfg.pooling, model.cfg.eot_token_id) == ("eot", 2)
    tokens = torch.tensor([[0, 300, 17, 2, 1, 1, 1], [0, 5, 499, 42, 8, 2, 1]])
    assert model.pool_positions(tokens).tolist() == [3, 5]
    assert_parity(model, tokens, *hf_text_reference(hf, tokens))


@pytest.mark.parametrize("cls_name,why", [("BlipModel", "BERT decoder.*cross-attention"),
                                          ("BlipTextModel", "BERT decoder.*cross-attention"),
                                          ("GroupViTModel", "an MLP")])
def test_refused_classes_say_why(cls_name, why):
    import transformers

    cls = getattr(transformers, cls_name)
    with pytest.raises(TypeError, match=f"{cls_name} cannot be loaded: its (text tower|text projection).*{why}"):
        HookedCLIP.from_hf(cls.__new__(cls))


@pytest.fixture(scope="module")
def xlmv_style_dir(tmp_path_factory):
    """A SentencePiece-style (Unigram) fast tokenizer with XLM-V's special ids: <s>=0, <pad>=1, </s>=2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(list(valse_sentences()), trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    out = tmp_path_factory.mktemp("xlmv") / "tok"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def _registered_open_clip(tmp_path, name: str, like: str, tokenizer_dir, **text_overrides):
    """Register ``name``: ``like``'s open_clip config with a small text tower whose hf_tokenizer_name is a
    local folder; returns (random open_clip model, path of its saved checkpoint)."""
    import json

    import open_clip

    cfg = open_clip.get_model_config(like)
    text_cfg = dict(cfg["text_cfg"], **{"width": 64, "heads": 2, "layers": 2, "vocab_size": 300, "context_length": 32,
                                        "hf_tokenizer_name": str(tokenizer_dir), **text_overrides})
    small = {"embed_dim": 32, "quick_gelu": cfg.get("quick_gelu", False), "custom_text": cfg.get("custom_text", False),
             "vision_cfg": dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32), "text_cfg": text_cfg}
    if "init_logit_bias" in cfg:
        small["init_logit_bias"] = cfg["init_logit_bias"]
    (tmp_path / f"{name}.json").write_text(json.dumps(small))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    oc = randomize_(open_clip.create_model(name), 6)
    torch.save(oc.state_dict(), tmp_path / "ckpt.pt")
    return oc, str(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("like,tok_fixture", [("ViT-B-16-SigLIP", "spm_dir"), ("ViT-H-14-worldwide", "xlmv_style_dir"),
                                              ("ViT-L-14-CLIPA", "wordpiece_dir")])
def test_open_clip_model_by_name_carries_get_tokenizers_tokenizer(tmp_path, request, like, tok_fixture):
    """A registered open_clip config shaped like a SigLIP / worldwide (eos id 2) / CLIPA name, its
    hf_tokenizer_name a local folder: to_tokens gives open_clip.get_tokenizer(name)'s ids, and the
    embeddings match encode_text on them."""
    import open_clip

    name = f"hc-{like.lower()}-tiny"
    vocab = {"vocab_size": 1000} if tok_fixture == "wordpiece_dir" else {}  # the WordPiece has ~820 ids
    oc, ckpt = _registered_open_clip(tmp_path, name, like, request.getfixturevalue(tok_fixture), **vocab)
    model = HookedCLIP.from_open_clip(name, pretrained=ckpt, device="cpu")
    assert isinstance(model.tokenizer, HFTextTokenizer)
    texts = list(valse_sentences())[:20] + ["UPPER case, punctuation!!"]
    ref_ids = open_clip.get_tokenizer(name)(texts)  # always padded to the context length
    assert torch.equal(model.to_tokens(texts, padding="max_length"), ref_ids)
    tokens = model.to_tokens(texts)  # the model's own padding: to the longest text only where that is exact
    assert tokens.shape[1] == (32 if model.cfg.pads_to_context else int((ref_ids != ref_ids[0, -1]).sum(1).max()))
    assert torch.equal(tokens, ref_ids[:, : tokens.shape[1]])
    if like == "ViT-H-14-worldwide":
        assert (model.cfg.pooling, model.cfg.eot_token_id) == ("eot", 2) and model.cfg.causal
        assert torch.equal(model.pool_positions(tokens), (tokens == 2).int().argmax(-1))
    with torch.no_grad():
        assert (model.encode_text(tokens, normalize=False) - oc.encode_text(ref_ids)).abs().max() <= ATOL


def test_study_runs_end_to_end_on_a_mobileclip_family_checkpoint_file(tmp_path):
    """`hooked-clip valse-negation --model open_clip:NAME:FILE` on a bidirectional (MobileCLIP-S-style) tower:
    the study tokenizes with the model's rule (padded to the context length) and completes."""
    import json

    import open_clip
    from PIL import Image

    from hooked_clip.analyses.cli import main
    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.analyses.valse_negation.study import select_items

    cfg = {"embed_dim": 32, "custom_text": True, "vision_cfg": dict(image_size=64, layers=1, width=32, patch_size=16,
                                                                    head_width=32),
           "text_cfg": dict(open_clip.get_model_config("MobileCLIP-S1")["text_cfg"], width=64, heads=2, layers=2)}
    (tmp_path / "hc-mobileclip-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "hc-mobileclip-tiny.json")
    torch.save(randomize_(open_clip.create_model("hc-mobileclip-tiny"), 5).state_dict(), tmp_path / "ckpt.pt")
    images = tmp_path / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(0)
    for x in select_items(load_items(), 4):
        Image.fromarray((torch.rand(40, 50, 3, generator=gen) * 255).byte().numpy()).save(images / x.image_file)
    main(["valse-negation", "--model", f"open_clip:hc-mobileclip-tiny:{tmp_path / 'ckpt.pt'}", "--images", str(images),
          "--limit", "4", "--out", str(tmp_path / "run"), "--no-progress"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["scores"]["original"]["all"]["n"] == 4 and "cte" in res and "heads" in res
    assert res["cte"]["foil"]["all"]["rows"] == ROWS  # CLIP's BPE, pooled at the EOT: CLIP's rows, none absent


def test_weight_processing_keeps_siglip_embeddings():
    """fold_ln / center_writing_weights / fold_value_biases on a tower with a projection bias and no mask."""
    hf = hf_pair("SiglipTextModel", {"vocab_size": 300, "max_position_embeddings": 24})
    tokens = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(4))
    plain = HookedCLIP.from_hf(hf, device="cpu")
    processed = HookedCLIP.from_hf(hf, device="cpu", fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    with torch.no_grad():
        assert (processed.encode_text(tokens, normalize=False) - plain.encode_text(tokens, normalize=False)).abs().max() <= ATOL


# ------------------------------------------------------------------ the VALSE study on SigLIP towers
SIGLIP_ROWS = ["[SOT] (absent)", "there", "is/are", "a/some/no", "subj 1st", "subj further", ". (absent)", "[EOT]",
               "[pooled]"]


@pytest.fixture(scope="module")
def siglip_words_dir(tmp_path_factory):
    """A SigLIP SentencePiece tokenizer (BPE, 400 ids) trained offline on the VALSE sentences as SigLIP's clean-up
    leaves them (lower case, no punctuation), so that, as in SigLIP's real 32k vocabulary, "there", "is", "are",
    "no", "a", "an" and "some" are one piece each while rarer words split."""
    import re

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    d = tmp_path_factory.mktemp("spm_words")
    (d / "corpus.txt").write_text("\n".join(re.sub(r"[^\w\s]", "", s).lower() for s in valse_sentences()))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=400, model_type="bpe",
                                   character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    out = d / "tok"
    SiglipTokenizer(vocab_file=str(d / "sp.model")).save_pretrained(out)
    return out


def _valse_images(folder, n):
    """Random images for the first ``n`` items the study selects (files named as in Visual7W)."""
    from PIL import Image

    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.analyses.valse_negation.study import select_items

    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for x in select_items(load_items(), n):
        Image.fromarray((torch.rand(40, 50, 3, generator=gen) * 255).byte().numpy()).save(folder / x.image_file)
    return folder


def _check_siglip_run(run, model):
    """Rows of a SigLIP run: labels, and what each row holds, read back through the model's own tokenizer;
    at the embeddings (layer 0) only the negator differs between the sentences, so its CTE is 1 and every other
    row's 0; at the last layer only the pooled position is read, so the [pooled] row is 1 and the others 0."""
    import json
    import math

    res = json.loads((run / "results.json").read_text())
    assert res["cte"]["foil"]["all"]["rows"] == SIGLIP_ROWS and res["zoom"]["rows"] == SIGLIP_ROWS
    assert "Absent rows" in (run / "report.md").read_text()
    records = [json.loads(p.read_text()) for p in sorted((run / "items").glob("*.json"))]
    assert records and all("aligned" in r for r in records)
    n_ctx = model.cfg.n_ctx
    for r in records:
        a, pos = r["aligned"], r["aligned"]["positions"]
        negated = a["caption"] if r["negation_in"] == "caption" else a["foil"]
        affirmative = a["foil"] if r["negation_in"] == "caption" else a["caption"]
        neg, aff = model.to_str_tokens(negated), model.to_str_tokens(affirmative)
        assert neg[pos["negator"]] == "▁no" and aff[pos["negator"]] in ("▁a", "▁an", "▁some")
        assert (neg[pos["there"]], neg[pos["is_are"]]) in (("▁there", "▁is"), ("▁there", "▁are"))
        assert neg[pos["eot"]] == "</s>" and pos["eot"] == len(neg) - 1 == a["n_tokens"] - 1
        assert pos["sot"] is None and pos["dot"] is None and pos["pooled"] == n_ctx - 1
        assert negated.lower().split()[3].startswith(neg[pos["subject"]].lstrip("▁"))  # the subject's first piece
        first, last = a["cte_rows"][0], a["cte_rows"][-1]
        for row, v0, vL in zip(SIGLIP_ROWS, first, last):
            if row.endswith("(absent)") or (row == "subj further" and a["n_further"] == 0):
                assert math.isnan(v0) and math.isnan(vL), row
                continue
            assert v0 == pytest.approx(1.0 if row == "a/some/no" else 0.0, abs=1e-4), (row, first)
            assert vL == pytest.approx(1.0 if row == "[pooled]" else 0.0, abs=1e-4), (row, last)
        assert len(a["rome_rows"][0]) == len(SIGLIP_ROWS) and len(a["head_rows"][0][0]) == len(SIGLIP_ROWS)


def test_study_runs_end_to_end_on_a_siglip_directory_with_its_sentencepiece_tokenizer(tmp_path, siglip_words_dir):
    """`hooked-clip valse-negation --model DIR` on a transformers SigLIP directory with its SentencePiece
    tokenizer: no start token, no "." (SigLIP's clean-up drops it), pooling at the last padded position."""
    from transformers import AutoTokenizer

    from hooked_clip.analyses.cli import main

    hf_pair("SiglipModel", {"vocab_size": 400, "max_position_embeddings": 32}).save_pretrained(tmp_path / "sig")
    AutoTokenizer.from_pretrained(siglip_words_dir).save_pretrained(tmp_path / "sig")
    images = _valse_images(tmp_path / "images", 6)
    main(["valse-negation", "--model", str(tmp_path / "sig"), "--images", str(images), "--limit", "6", "--rome",
          "--out", str(tmp_path / "run"), "--no-progress"])
    model = HookedCLIP.from_pretrained(tmp_path / "sig", device="cpu")
    assert isinstance(model.tokenizer, HFTextTokenizer) and model.cfg.pooling == "last"
    _check_siglip_run(tmp_path / "run", model)


def test_study_runs_end_to_end_on_an_open_clip_siglip_file_with_a_local_tokenizer(tmp_path, siglip_words_dir):
    """`--model open_clip:NAME:FILE` for a ViT-B-16-SigLIP-shaped config whose tokenizer is a local folder."""
    import json

    from hooked_clip.analyses.cli import main

    name = "hc-siglip-study-tiny"
    _, ckpt = _registered_open_clip(tmp_path, name, "ViT-B-16-SigLIP", siglip_words_dir, vocab_size=400, layers=4)
    images = _valse_images(tmp_path / "images", 4)
    main(["valse-negation", "--model", f"open_clip:{name}:{ckpt}", "--images", str(images), "--limit", "4", "--rome",
          "--out", str(tmp_path / "run"), "--no-progress"])
    _check_siglip_run(tmp_path / "run", HookedCLIP.from_open_clip(name, pretrained=ckpt, device="cpu"))
    zoom = json.loads((tmp_path / "run" / "results.json").read_text())["zoom"]  # 4 layers: the paper's layer-4 zoom
    assert zoom["layer"] == 4 and zoom["rows"] == SIGLIP_ROWS
    for loc in ("caption", "foil"):  # absent rows stay empty (not the paper rule's 0 for a missing row)
        assert all(h[0] is None and h[6] is None and h[3] is not None and h[8] is not None for h in zoom[loc])
    table = (tmp_path / "run" / "report.md").read_text().split("### Layer zoom")[1]
    assert "| head | a/some/no | subj 1st | subj further | . (absent) | [EOT] | [pooled] |" in table


def test_every_aligned_valse_pair_lays_out_on_a_siglip_tokenizer(siglip_words_dir):
    """All 490 pairs: the negator at position 2 (no start token), holding "no" in the negated sentence."""
    from transformers import AutoTokenizer

    from hooked_clip.analyses.valse_negation.data import aligned_pairs, load_items
    from hooked_clip.analyses.valse_negation.layout import check_token_layout

    hf = hf_pair("SiglipTextModel", {"vocab_size": 400, "max_position_embeddings": 32})
    model = HookedCLIP.from_hf(hf, device="cpu")
    model.text.tokenizer = HFTextTokenizer(AutoTokenizer.from_pretrained(siglip_words_dir), 32)
    pairs = aligned_pairs(load_items())
    layouts = check_token_layout(model.text, [p.negated for p in pairs], [p.affirmative for p in pairs])
    assert len(layouts) == 490 and {x.negator for x in layouts} == {2} and {x.pooled for x in layouts} == {31}
    assert all(model.to_str_tokens(p.negated)[x.negator] == "▁no" for p, x in zip(pairs, layouts))


def test_study_refuses_pairs_a_tokenizer_splits_apart(spm_dir):
    """With a 300-piece unigram vocabulary "some" is two pieces (▁s ome) and "there", "is" two each: "there are
    no X" / "there are some X" do not correspond position by position, and "there is" is not one token per row's
    word. The layout refuses, naming each pair and why (never rows filled with other tokens)."""
    from transformers import AutoTokenizer

    from hooked_clip.analyses.valse_negation.layout import TokenLayoutError, check_token_layout

    hf = hf_pair("SiglipTextModel", {"vocab_size": 300, "max_position_embeddings": 32})
    model = HookedCLIP.from_hf(hf, device="cpu")
    model.text.tokenizer = HFTextTokenizer(AutoTokenizer.from_pretrained(spm_dir), 32)
    assert model.to_str_tokens("There are some cats.")[4:6] == ["▁s", "ome"]
    with pytest.raises(TokenLayoutError, match=r"2 of 2 aligned pairs .*'There is no cat\.': 4 tokens \(\['▁the', 're', "
                                               r"'▁', 'is'\]\) precede the negator.*'There are no cats\.': the negated "
                                               r"sentence is 8 tokens and the affirmative one 9"):
        check_token_layout(model.text, ["There is no cat.", "There are no cats."], ["There is a cat.", "There are some cats."])


def test_model_comparison_reads_the_row_each_tower_pools():
    """`--model A --model B`: the second CTE row of the comparison is the one whose state becomes the embedding:
    [EOT] for CLIP's layout, [pooled] for a tower that reads its last padded position (labelled so)."""
    from hooked_clip.analyses.valse_negation.comparison import summary_table

    def results(rows):
        matrix = [[float(i)] * 3 for i in range(len(rows))]  # row i holds i at every layer
        return {"counts": {}, "confounds": {},
                "cte": {loc: {"correct": {"n": 2, "rows": rows, "matrix": matrix}} for loc in ("caption", "foil")}}

    clip, siglip = summary_table("clip", results(ROWS))["cte"]["foil"], summary_table("siglip", results(SIGLIP_ROWS))["cte"]["foil"]
    assert clip == {"n": 2, "negator": [3.0] * 3, "eot": [7.0] * 3}
    assert siglip == {"n": 2, "negator": [3.0] * 3, "eot": [8.0] * 3, "eot_row": "[pooled]"}


def coca(correct_cls_mask: bool, seed: int = 0):
    """A tiny random open_clip CoCa (text tower with its appended CLS embedding; attentional-pool ViT)."""
    from open_clip.coca_model import CoCa

    torch.manual_seed(seed)
    m = CoCa(embed_dim=32, multimodal_cfg=dict(width=64, heads=2, layers=1, context_length=12, vocab_size=500),
             text_cfg=dict(width=64, heads=2, layers=2, context_length=12, vocab_size=500, embed_cls=True,
                           output_tokens=True),
             vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32, attentional_pool=True,
                             attn_pooler_queries=4, output_tokens=True))
    m = randomize_(m, seed + 1).eval()
    m.text.correct_cls_mask = correct_cls_mask  # open_clip keeps the legacy (shifted) mask for existing weights
    return m


@pytest.mark.parametrize("correct", [False, True])
def test_open_clip_coca_text_tower_parity_on_padded_batches(correct):
    """CoCa's text tower: a CLS embedding appended after the tokens and read at the end, a causal mask plus a
    padding mask on the keys (open_clip's legacy one shifted right by one), per block and at the output; and the
    patching engine on the padded batch equals the one loop reference."""
    from conftest import assert_matches_loop

    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch

    oc = coca(correct)
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    cfg = model.cfg
    assert (cfg.append_cls, cfg.pooling, cfg.mask_padding, cfg.pad_mask_shift) == (True, "last", True, int(not correct))
    assert (cfg.n_ctx, cfg.max_text_tokens) == (13, 12) and type(model.vision).__name__ == "ReferenceVisionTower"
    tokens = torch.zeros(3, 12, dtype=torch.long)
    gen = torch.Generator().manual_seed(2)
    for b, n in enumerate([12, 5, 8]):
        tokens[b, :n] = torch.randint(1, 499, (n,), generator=gen)
    ref, blocks = capture_block_outputs(oc.text.transformer.resblocks, lambda: oc.encode_text(tokens, normalize=False))
    errors = parity_errors(model.text, tokens, ref, blocks)
    assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, errors
    corrupt = tokens.clone()
    corrupt[:, 2] = torch.randint(1, 499, (3,), generator=gen)
    metric = cosine_to_target(torch.randn(3, 32, generator=gen))
    res = activation_patch(model, tokens, corrupt, metric, "resid_pre", progress=False, batch_size=7)
    assert_matches_loop(res, model.text, tokens, corrupt, metric)
