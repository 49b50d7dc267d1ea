"""BERT/RoBERTa-style post-LayerNorm text towers (ChineseCLIP: BERT; AltCLIP: XLM-R) against transformers:
per block and at the output to 1e-5 (fp32) on tiny random models with every LayerNorm randomised, on padded
batches (the reference given its tokenizer's attention mask); strict loading; the post-LN block's hooks;
RoBERTa position ids; mean pooling and the patching engine on such towers."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

from hooked_clip import HookedCLIP
from hooked_clip.components import PostLNBlock
from hooked_clip.text.config import CLIPTextConfig
from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError
from hooked_clip.loaders.hf_text import hf_post_ln_source, hf_post_ln_state_dict
from hooked_clip.parity import capture_block_outputs, parity_errors
from hooked_clip.text.tower import HookedCLIPText

ATOL = 1e-5
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, vocab_size=300,
             max_position_embeddings=40, type_vocab_size=2)
CLASSES = ["ChineseCLIPModel", "ChineseCLIPTextModel", "AltCLIPModel", "AltCLIPTextModel", "AlignModel", "AlignTextModel"]


def randomize_bert_(model, seed):
    """conftest.randomize_ plus BERT's LayerNorm names (``LayerNorm``, ``pre_LN``): weights 1 + N(0, 0.1)."""
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or "pre_LN" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif ("LayerNorm" in name or "pre_LN" in name) and name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def build(cls_name: str, seed: int = 0, **text_kw):
    import transformers

    cls = getattr(transformers, cls_name)
    ccls = cls.config_class
    torch.manual_seed(seed)
    text_kw = {**SMALL, **text_kw}
    if "text_config" in getattr(ccls, "sub_configs", {}):
        tc = ccls.sub_configs["text_config"](**text_kw)
        vc = ccls.sub_configs["vision_config"](hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                               num_hidden_layers=1, image_size=32, patch_size=16)
        proj = 24
        if cls_name == "AlignModel":  # its text projection must reach the EfficientNet's pooled width
            with torch.no_grad():
                proj = cls(ccls(text_config=tc.to_dict(), vision_config=vc.to_dict())).eval().vision_model(
                    pixel_values=torch.zeros(1, 3, 32, 32)).pooler_output.shape[-1]
        hf = cls(ccls(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=proj))
    else:
        hf = cls(ccls(**text_kw))
    return randomize_bert_(hf, seed).eval()


def padded_tokens(pad: int, seed: int = 0) -> torch.Tensor:
    """Rows of different lengths (first id 0 = CLS/<s>, then random ids, padding after)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [12, 5, 9, 3]
    rows = torch.full((len(lengths), 12), pad)
    for i, n in enumerate(lengths):
        body = torch.randint(3, 300, (n,), generator=gen)
        body[0] = 0 if pad != 0 else 101
        rows[i, :n] = body
    return rows


def reference(hf, tokens, pad):
    """(text embeddings, [block outputs]) by transformers, with the attention mask its tokenizer returns."""
    layers = [m for n, m in hf.named_modules() if n.endswith(("encoder.layer", "encoder.layers")) and "vision" not in n]
    assert len(layers) == 1
    mask = (tokens != pad).long()

    def run():
        if hasattr(hf, "get_text_features"):
            return hf.get_text_features(input_ids=tokens, attention_mask=mask).pooler_output
        return hf(input_ids=tokens, attention_mask=mask).pooler_output

    return capture_block_outputs(layers[0], run)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_post_ln_parity_on_padded_batches(cls_name):
    hf = build(cls_name)
    model = HookedCLIP.from_hf(hf, device="cpu")
    cfg = model.cfg
    assert (cfg.ln_position, cfg.causal, cfg.pooling, cfg.mask_padding, cfg.ln_embed) == ("post", False, "first", True, True)
    assert isinstance(model.text.blocks[0], PostLNBlock)
    pad = cfg.pad_token_id
    tokens = padded_tokens(pad)
    ref, blocks = reference(hf, tokens, pad)
    errors = parity_errors(model.text, tokens, ref, blocks)
    assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, errors
    assert ref.abs().max() > 1e-2  # a real signal, not a vanishing one


def test_chinese_clip_text_model_output_is_its_tanh_pooler():
    hf = build("ChineseCLIPTextModel")
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert (model.cfg.proj_act, model.cfg.proj_bias, model.cfg.final_ln) == ("tanh", True, False)
    assert model.cfg.position_ids == "absolute"


def test_altclip_uses_roberta_position_ids():
    """XLM-R: ids start at pad + 1 and padding reads row pad; a left-padded row gets the same embedding."""
    hf = build("AltCLIPTextModel")
    model = HookedCLIP.from_hf(hf, device="cpu")
    assert (model.cfg.position_ids, model.cfg.pad_token_id, model.cfg.final_ln) == ("roberta", 1, True)
    tokens = torch.tensor([[0, 7, 8, 2, 1, 1]])
    assert model.text.pos_embed.roberta_position_ids(tokens).tolist() == [[2, 3, 4, 5, 1, 1]]
    emb = hf.roberta.embeddings.create_position_ids_from_input_ids(tokens, 1)
    assert model.text.pos_embed.roberta_position_ids(tokens).tolist() == emb.tolist()


@pytest.mark.parametrize("cls_name", ["ChineseCLIPModel", "AltCLIPModel"])
def test_embedding_does_not_depend_on_padding(cls_name):
    model = HookedCLIP.from_hf(build(cls_name), device="cpu")
    pad = model.cfg.pad_token_id
    tokens = padded_tokens(pad)
    with torch.no_grad():
        batch = model.encode_text(tokens, normalize=False)
        alone = torch.cat([model.encode_text(t[None, : int((t != pad).sum())], normalize=False) for t in tokens])
    assert (batch - alone).abs().max() <= 1e-5


def test_post_ln_checkpoints_load_completely_or_are_refused():
    hf = build("AltCLIPModel")
    model = HookedCLIP.from_hf(hf, device="cpu")
    _, source = hf_post_ln_source(hf)
    missing = dict(source)
    missing.pop("encoder.layers.1.output.LayerNorm.bias")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): encoder.layers.1.output.LayerNorm.bias"):
        hf_post_ln_state_dict(missing, model.cfg)
    extra = {**source, "pooler.dense.weight": torch.zeros(64, 64)}
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): pooler.dense.weight"):
        hf_post_ln_state_dict(extra, model.cfg)


def test_post_ln_block_hooks_hold_the_normalised_sums():
    model = HookedCLIP.from_hf(build("ChineseCLIPModel"), device="cpu")
    tokens = padded_tokens(0)
    _, cache = model.text.run_with_cache(tokens)
    b = "blocks.0."
    assert torch.allclose(cache[b + "hook_resid_mid"], cache[b + "ln1.hook_normalized"])
    mid = model.text.blocks[0].ln1(cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"])
    assert torch.allclose(cache[b + "hook_resid_mid"], mid, atol=1e-6)
    post = model.text.blocks[0].ln2(cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"])
    assert torch.allclose(cache[b + "hook_resid_post"], post, atol=1e-6)
    assert torch.equal(cache["ln_embed.hook_normalized"], cache[b + "hook_resid_pre"])
    pattern = cache[b + "attn.hook_pattern"]  # padding keys are never read
    assert pattern[1, :, :, 5:].abs().max() == 0 and pattern[0, :, :, 5:].abs().max() > 0


def test_post_ln_config_fields_are_validated():
    base = dict(d_model=32, d_head=16, n_heads=2, n_layers=1, n_ctx=16, d_vocab=50, causal=False)
    with pytest.raises(ValueError, match="ln_position='mid' is not supported"):
        CLIPTextConfig(**base, ln_position="mid")
    with pytest.raises(ValueError, match="position_ids='alibi' is not supported"):
        CLIPTextConfig(**base, position_ids="alibi")
    with pytest.raises(ValueError, match="proj_act='tanh' needs a projection"):
        CLIPTextConfig(**base, d_proj=None, proj_act="tanh")
    with pytest.raises(ValueError, match="n_token_types must be an int >= 0"):
        CLIPTextConfig(**base, n_token_types=-1)
    with pytest.raises(ValueError, match="pooling='cls' is not supported"):
        CLIPTextConfig(**base, pooling="cls")
    with pytest.raises(ValueError, match="set causal=False"):
        CLIPTextConfig(**{**base, "causal": True}, ln_position="post", position_ids="roberta")
    with pytest.raises(ValueError, match="append_cls=True .* set pooling='last'"):
        CLIPTextConfig(**base, append_cls=True)
    with pytest.raises(ValueError, match="pad_mask_shift must be 0, or 1"):
        CLIPTextConfig(**base, pad_mask_shift=1)


def test_start_at_layer_on_a_masked_tower_needs_the_tokens():
    model = HookedCLIP.from_hf(build("ChineseCLIPModel"), device="cpu")
    tokens = padded_tokens(0)
    with torch.no_grad():
        resid = model.text(tokens, stop_at_layer=1)
        with pytest.raises(ValueError, match="pass tokens="):
            model.text(resid, start_at_layer=1)
        assert torch.allclose(model.text(resid, start_at_layer=1, tokens=tokens), model.text(tokens), atol=1e-6)


def test_pre_ln_only_processing_and_decompositions_refuse_a_post_ln_tower():
    from hooked_clip.text.readout import decompose_resid
    from hooked_clip.weight_processing import center_writing_weights, fold_ln, fold_value_biases

    model = HookedCLIP.from_hf(build("AltCLIPModel"), device="cpu")
    tokens = padded_tokens(1)
    with pytest.raises(ValueError, match="fold_ln is derived for pre-LN towers"):
        fold_ln(model)
    with pytest.raises(ValueError, match="center_writing_weights is derived for pre-LN towers"):
        center_writing_weights(model)
    _, cache = model.text.run_with_cache(tokens)
    with pytest.raises(ValueError, match="decompose_resid needs a pre-LN tower"):
        decompose_resid(model.text, cache, torch.zeros(len(tokens), dtype=torch.long))
    with torch.no_grad():
        before = model.encode_text(tokens, normalize=False)
        fold_value_biases(model)  # exact in either block: each pattern row (padding masked) sums to 1
        assert (model.encode_text(tokens, normalize=False) - before).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- the patching engine
def _loop(tower, clean, corrupt, metric, act):
    """One forward per (layer, position), hook written by hand; nothing shared with the engine."""
    from transformer_lens.utilities import get_act_name

    _, cache = tower.run_with_cache(clean)
    out = torch.empty(tower.cfg.n_layers, corrupt.shape[1], corrupt.shape[0])
    for layer in range(tower.cfg.n_layers):
        for pos in range(corrupt.shape[1]):
            def hook(x, hook, pos=pos):
                x = x.clone()
                x[:, pos] = cache[hook.name][:, pos]
                return x

            emb = tower.run_with_hooks(corrupt, return_type="normalized", fwd_hooks=[(get_act_name(act, layer), hook)])
            out[layer, pos] = metric(emb)
    return out


def mean_pooled_tower():
    """open_clip's hf-text layout: a RoBERTa tower pooled by the mean over non-padding tokens."""
    cfg = CLIPTextConfig(d_model=32, d_head=16, n_heads=2, n_layers=2, n_ctx=20, d_vocab=100, d_mlp=64, act_fn="gelu",
                         ln_position="post", n_token_types=1, ln_embed=True, position_ids="roberta", pad_token_id=1,
                         mask_padding=True, final_ln=False, pooling="mean", causal=False, d_proj=8, seed=3)
    tower = HookedCLIPText(cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith(".w"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return tower


@pytest.mark.parametrize("which", ["ChineseCLIPModel", "AltCLIPModel", "mean"])
@pytest.mark.parametrize("act", ["resid_pre", "resid_mid", "attn_out", "mlp_out"])
def test_activation_patch_equals_a_plain_loop_on_post_ln_towers(which, act):
    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch

    tower = mean_pooled_tower() if which == "mean" else HookedCLIP.from_hf(build(which), device="cpu").text
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(3, 100, (3, 7), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 3] = torch.randint(3, 100, (3,), generator=gen)
    clean[:, 0] = corrupt[:, 0] = 2  # a CLS-like first token (not the pad id of either tower)
    assert (which == "mean") == (tower.pool_positions(clean) is None)
    d = tower.cfg.d_proj
    metric = cosine_to_target(torch.randn(3, d, generator=gen))
    res = activation_patch(tower, clean, corrupt, metric, act, index="layer_pos", progress=False, batch_size=5)
    assert (res.values - _loop(tower, clean, corrupt, metric, act)).abs().max() <= ATOL
    assert res.values.std() > 1e-4  # the patches do move the metric


# ------------------------------------------------------------------ open_clip's hf_model_name towers
def open_clip_hf_model(config_cls: str, pooler: str, proj: str, seed: int = 0, **config_kw):
    """An open_clip CustomTextCLIP whose text tower is its HFTextEncoder around a tiny local transformers
    config (open_clip builds it from a hub config by name, which needs a download; given a config object it
    builds the same modules offline)."""
    import transformers
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import CustomTextCLIP

    hf_cfg = getattr(transformers, config_cls)(**{**{k: v for k, v in SMALL.items() if k != "type_vocab_size"}, **config_kw})
    torch.manual_seed(seed)
    oc = CustomTextCLIP(embed_dim=32, text_cfg=dict(width=32, heads=2, layers=1, vocab_size=300, context_length=8),
                        vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32))
    oc.text = HFTextEncoder("local", output_dim=32, config=hf_cfg, pooler_type=pooler, proj_type=proj)
    return randomize_bert_(oc, seed).eval()


@pytest.mark.parametrize("config_cls,pooler,proj", [
    ("RobertaConfig", "mean_pooler", "mlp"),  # roberta-ViT-B-32
    ("XLMRobertaConfig", "mean_pooler", "mlp"),  # xlm-roberta-base-ViT-B-32, xlm-roberta-large-ViT-H-14
    ("RobertaConfig", "cls_last_hidden_state_pooler", "linear"),
])
def test_open_clip_hf_text_tower_parity(config_cls, pooler, proj):
    oc = open_clip_hf_model(config_cls, pooler, proj)
    model = HookedCLIP.from_open_clip(oc, device="cpu")
    cfg = model.cfg
    assert (cfg.ln_position, cfg.position_ids, cfg.pad_token_id) == ("post", "roberta", 1)
    assert cfg.pooling == ("mean" if pooler == "mean_pooler" else "first")
    assert (cfg.d_proj_hidden is not None) == (proj == "mlp")
    tokens = padded_tokens(1)
    ref, blocks = capture_block_outputs(oc.text.transformer.encoder.layer, lambda: oc.encode_text(tokens))
    errors = parity_errors(model.text, tokens, ref, blocks)
    assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, errors
    with torch.no_grad():  # the mean reads only the non-padding tokens of each row
        alone = torch.cat([model.encode_text(t[None, : int((t != 1).sum())], normalize=False) for t in tokens])
    assert (alone - ref).abs().max() <= ATOL


def test_open_clip_hf_text_towers_that_are_not_bert_are_refused():
    from open_clip.hf_model import HFTextEncoder

    oc = open_clip_hf_model("RobertaConfig", "mean_pooler", "mlp")
    oc.text.pooler = __import__("open_clip").hf_model.MaxPooler()
    with pytest.raises(UnsupportedModelError, match="pooler MaxPooler is not supported"):
        HookedCLIP.from_open_clip(oc)
    oc = open_clip_hf_model("RobertaConfig", "cls_pooler", "linear")  # reads the transformer's tanh pooler
    with pytest.raises(UnsupportedModelError, match="ClsPooler reading the transformer's tanh pooler"):
        HookedCLIP.from_open_clip(oc)
    import transformers

    t5 = transformers.MT5Config(d_model=32, d_ff=64, num_heads=2, num_layers=1, vocab_size=100)
    oc.text = HFTextEncoder("local", output_dim=32, config=t5, pooler_type="mean_pooler")
    with pytest.raises(UnsupportedModelError, match="'mt5' is not supported.*T5 encoder"):
        HookedCLIP.from_open_clip(oc)


def test_roberta_context_length_leaves_out_the_padding_rows():
    model = HookedCLIP.from_hf(build("AltCLIPTextModel"), device="cpu")  # 40 rows, pad id 1: 38 tokens
    assert model.cfg.max_text_tokens == 38
    with torch.no_grad():
        model.encode_text(torch.full((1, 38), 5))
        with pytest.raises(ValueError, match="tokens have 39 positions, over the context length 38"):
            model.encode_text(torch.full((1, 39), 5))


def test_open_clip_hf_text_name_without_its_transformers_model_says_what_to_fetch(monkeypatch):
    from hooked_clip.errors import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"'roberta-base'.*not in the local HF cache.*from_open_clip\(model\)"):
        HookedCLIP.from_open_clip("roberta-ViT-B-32")


def test_chinese_clip_directory_carries_its_wordpiece_tokenizer_and_pads_to_the_longest(tmp_path):
    """save_pretrained + a BERT WordPiece tokenizer beside it: the model tokenizes with it, pads to the longest
    text (padding is masked), and embeds as transformers does with that tokenizer's attention mask."""
    from conftest import wordpiece

    hf_tok = wordpiece(tmp_path / "ckpt")  # vocab.txt + tokenizer_config.json, as a checkpoint holds them
    hf = build("ChineseCLIPModel", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id)
    hf.save_pretrained(tmp_path / "ckpt")
    model = HookedCLIP.from_pretrained(tmp_path / "ckpt", device="cpu")
    texts = ["There are no dogs.", "A man is riding a horse on the beach next to the water."]
    tokens = model.to_tokens(texts)
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(tokens, enc["input_ids"])
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        assert (model.encode_text(texts, normalize=False) - ref).abs().max() <= ATOL
    assert type(model.vision).__name__ == "ReferenceVisionTower"  # the reference image tower, not hooked


def test_fused_attention_masks_padding_too():
    hf = build("AltCLIPModel")
    tokens = padded_tokens(1)
    ref, blocks = reference(hf, tokens, 1)
    model = HookedCLIP.from_hf(hf, device="cpu", use_fused_attn=True)
    errors = parity_errors(model.text, tokens, ref, blocks)
    assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, errors


@pytest.mark.parametrize("cls_name", ["ChineseCLIPModel", "AltCLIPModel", "AlignModel"])
def test_both_towers_give_the_reference_logits(cls_name):
    """The image tower is the reference module (not reimplemented: encode_image is get_image_features) and
    the similarity the model's own: logit_scale, or ALIGN's cos / temperature."""
    hf = build(cls_name)
    if cls_name == "AlignModel":
        with torch.no_grad():
            hf.temperature.fill_(0.07)
    model = HookedCLIP.from_hf(hf, device="cpu")
    tokens = padded_tokens(hf.config.text_config.pad_token_id)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=(tokens != model.cfg.pad_token_id).long(), pixel_values=pixels)
        ours = model(tokens, pixels)
    assert type(model.vision).__name__ == "ReferenceVisionTower"
    assert (ours - ref.logits_per_text).abs().max() <= 1e-4


@pytest.mark.parametrize("cls_name", ["FlavaTextModel", "FlavaModel"])
def test_flava_text_tower_parity_on_padded_batches(cls_name):
    """FLAVA: BERT embeddings on pre-LN blocks, a final LayerNorm, padding masked, read at [CLS]; FlavaModel's
    contrastive embedding is the projected [CLS] row of get_text_features, FlavaTextModel's the tanh pooler."""
    import transformers

    text_kw = {k: v for k, v in SMALL.items()}
    torch.manual_seed(0)
    if cls_name == "FlavaModel":
        tiny = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1)
        hf = transformers.FlavaModel(transformers.FlavaConfig(
            text_config=text_kw, image_config=dict(**tiny, image_size=32, patch_size=16), multimodal_config=tiny,
            projection_dim=24))
    else:
        hf = transformers.FlavaTextModel(transformers.FlavaTextConfig(**text_kw))
    hf = randomize_bert_(hf, 0).eval()
    with torch.no_grad():  # FLAVA's own LayerNorm names
        for name, p in hf.named_parameters():
            if "layernorm" in name:
                p.copy_((1 if name.endswith("weight") else 0) + 0.1 * torch.randn(p.shape))
    model = HookedCLIP.from_hf(hf, device="cpu")
    cfg = model.cfg
    assert (cfg.ln_position, cfg.causal, cfg.pooling, cfg.mask_padding, cfg.ln_embed, cfg.final_ln) == (
        "pre", False, "first", True, True, True)
    assert cfg.proj_act == (None if cls_name == "FlavaModel" else "tanh")
    tokens = padded_tokens(0)
    mask = (tokens != 0).long()
    text = getattr(hf, "text_model", hf)

    def run():
        if cls_name == "FlavaModel":
            return hf.get_text_features(input_ids=tokens, attention_mask=mask).pooler_output[:, 0]
        return hf(input_ids=tokens, attention_mask=mask).pooler_output

    ref, blocks = capture_block_outputs(text.encoder.layer, run)
    errors = parity_errors(model.text, tokens, ref, blocks)
    assert errors["blocks"] <= ATOL and errors["output"] <= ATOL, errors
