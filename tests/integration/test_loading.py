"""Loaders: round trips through disk, strict key/shape checks, offline hub requests that fail at once."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import MIXED_TEXTS, hf_clip, open_clip_model, randomize_

from hooked_clip import HookedCLIP, load_model
from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError, WeightsUnavailableError
from hooked_clip.loaders.hf_text import hf_text_state_dict
from hooked_clip.loaders.open_clip_text import open_clip_text_state_dict

ATOL = 1e-5


def test_hf_save_pretrained_round_trip(tmp_path):
    hf = hf_clip("laion_gelu")
    hf.save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(tmp_path, device="cpu")
    tokens = model.to_tokens(MIXED_TEXTS)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(input_ids=tokens, pixel_values=pixels)
        assert (model.encode_text(tokens) - ref.text_embeds).abs().max() <= ATOL  # CLIPModel normalises
        sim = model.similarity(model.encode_text(tokens), model.encode_image(pixels))
        assert (sim - ref.logits_per_text).abs().max() <= 1e-4
    assert load_model(str(tmp_path)).cfg.act_fn == "gelu"


def test_hf_text_only_round_trip(tmp_path):
    hf = hf_clip("tiny_argmax", with_vision=False)
    hf.save_pretrained(tmp_path)
    model = HookedCLIP.from_pretrained(str(tmp_path), device="cpu")
    tokens = model.to_tokens(MIXED_TEXTS)
    with torch.no_grad():
        assert (model.encode_text(tokens, normalize=False) - hf(input_ids=tokens).text_embeds).abs().max() <= ATOL
    assert model.vision is None


@pytest.fixture
def tiny_open_clip_name(tmp_path):
    """Register a tiny open_clip architecture so a checkpoint file can be loaded by model name."""
    import open_clip

    from conftest import open_clip_text_cfg

    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": open_clip_text_cfg("tiny_argmax")}
    path = tmp_path / "hc-tiny-test.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "hc-tiny-test"


def test_open_clip_checkpoint_file_round_trip(tmp_path, tiny_open_clip_name):
    import open_clip

    oc = randomize_(open_clip.create_model(tiny_open_clip_name), seed=7)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(oc.state_dict(), ckpt)
    model = HookedCLIP.from_open_clip(tiny_open_clip_name, pretrained=str(ckpt), device="cpu")
    tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.encode_text(tokens, normalize=False) - oc.encode_text(tokens)).abs().max() <= ATOL
        ref, _ = oc.get_logits(pixels, tokens)
        assert (model(tokens, pixels).T - ref).abs().max() <= 1e-4
    # safetensors too
    from safetensors.torch import save_file

    st = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, st)
    again = HookedCLIP.from_open_clip(tiny_open_clip_name, pretrained=str(st), device="cpu")
    with torch.no_grad():
        assert torch.equal(again.encode_text(tokens), model.encode_text(tokens))


def test_open_clip_checkpoint_of_wrong_architecture(tmp_path, tiny_open_clip_name):
    oc = open_clip_model("laion_gelu")  # width 256, not the tiny config's 64
    ckpt = tmp_path / "other.pt"
    torch.save(oc.state_dict(), ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"not a 'hc-tiny-test' checkpoint.*shape mismatches"):
        HookedCLIP.from_open_clip(tiny_open_clip_name, pretrained=str(ckpt))
    sd = open_clip_model("tiny_argmax").state_dict()
    del sd["transformer.resblocks.1.mlp.c_fc.weight"]
    sd["transformer.resblocks.1.ls_1.gamma"] = torch.ones(64)
    torch.save(sd, ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): transformer.resblocks.1.mlp.c_fc.weight.*unexpected keys \(1\): transformer.resblocks.1.ls_1.gamma"):
        HookedCLIP.from_open_clip(tiny_open_clip_name, pretrained=str(ckpt))


def test_converters_list_missing_and_unexpected_keys():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    sd = dict(hf_clip("tiny_eot").state_dict())
    sd.pop("text_model.final_layer_norm.bias")
    sd["text_model.encoder.layers.0.self_attn.q_norm.weight"] = torch.ones(4)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): text_model.final_layer_norm.bias.*unexpected keys \(1\): text_model.encoder.layers.0.self_attn.q_norm.weight"):
        hf_text_state_dict(sd, model.cfg)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        open_clip_text_state_dict(hf_clip("tiny_eot").state_dict(), model.cfg)


def test_hf_checkpoint_with_other_shapes_is_refused():
    from hooked_clip.loaders.convert import load_converted

    small = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    big_sd = hf_text_state_dict(hf_clip("laion_gelu").state_dict(), HookedCLIP.from_hf(hf_clip("laion_gelu")).cfg)
    with pytest.raises(CheckpointMismatchError, match=r"wrong architecture.*embed.W_E: checkpoint \(49408, 256\) vs model \(49408, 64\)"):
        load_converted(small.text, big_sd)


def test_non_clip_directory_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"a 'bert' model, class BertModel\) cannot be loaded: it is not a CLIP-family model"):
        HookedCLIP.from_pretrained(tmp_path)


def test_offline_hub_id_fails_at_once_with_instructions():
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"offline mode is on.*save_pretrained\(DIR\)"):
        HookedCLIP.from_pretrained("openai/clip-vit-base-patch32")
    with pytest.raises(WeightsUnavailableError, match=r"ViT-B-32/openai.*pretrained='ckpt.pt'"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="openai")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    """No HF_HUB_OFFLINE, but the endpoint does not answer: the probe gives up within its timeout."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    import hooked_clip.loaders.transformers as clip_mod

    monkeypatch.setattr(clip_mod, "_load_hf_dir", _raise_not_cached)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="Hub is not reachable"):
        HookedCLIP.from_pretrained("someone/some-clip")
    assert time.perf_counter() - start < 5


def _raise_not_cached(name, local_only):
    raise OSError(f"{name} is not in the cache")


def test_bad_loader_arguments(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; from_pretrained takes a directory"):
        HookedCLIP.from_pretrained(f)
    with pytest.raises(ValueError, match="open_clip has no model 'ViT-B-3'.*ViT-B-32"):
        HookedCLIP.from_open_clip("ViT-B-3")
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(TypeError, match="Linear cannot be loaded: it is not a CLIP-family model.*CLIPModel, CLIPTextModelWithProjection"):
        HookedCLIP.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="No shipped model 'tiny-negatio'"):
        load_model("tiny-negatio")


def test_a_state_dict_file_under_a_gelu_name_with_a_quickgelu_twin_warns(tmp_path):
    """A state-dict file does not record its activation: loading one under a GELU name that has a QuickGELU
    twin (ViT-B-32 / ViT-B-32-quickgelu) says so, naming the twin; the twin itself loads silently."""
    import warnings

    import open_clip
    from conftest import open_clip_text_cfg

    base = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
            "text_cfg": open_clip_text_cfg("tiny_argmax")}
    for name, quick in (("hc-twin", False), ("hc-twin-quickgelu", True)):
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, "quick_gelu": quick}))
        open_clip.add_model_config(tmp_path / f"{name}.json")
    ckpt = tmp_path / "weights.pt"
    torch.save(open_clip.create_model("hc-twin-quickgelu").state_dict(), ckpt)
    with pytest.warns(UserWarning, match=r"loaded as 'hc-twin', which uses GELU.*as 'hc-twin-quickgelu'"):
        HookedCLIP.from_open_clip("hc-twin", pretrained=str(ckpt), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        HookedCLIP.from_open_clip("hc-twin-quickgelu", pretrained=str(ckpt), device="cpu")


@pytest.mark.parametrize("name, why", [("nllb-clip-base", "M2M-100 encoder"), ("mt5-base-ViT-B-32", "T5 encoder")])
def test_open_clip_towers_that_would_be_refused_say_so_before_any_download(name, why, monkeypatch):
    """The refusal comes first: no model is built and nothing is fetched (the hub is made unreachable)."""
    import open_clip

    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(UnsupportedModelError, match=f"{why}.*Nothing was downloaded"):
        HookedCLIP.from_open_clip(name, pretrained=None)
