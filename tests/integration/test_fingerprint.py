"""The checkpoint fingerprint: equal for the same weights whatever the source or file format, different for any
changed parameter, activation, pooling or logit scale, and untouched by weight processing."""

import copy

import pytest
import torch
from open_clip.model import CLIP

from hooked_clip import HookedCLIP
from hooked_clip.fingerprint import Fingerprint, fingerprint

from conftest import hf_clip, open_clip_text_cfg


def hf_to_open_clip(hf) -> CLIP:
    """The same weights in an open_clip CLIP, by a key mapping written here (it shares nothing with the loaders)."""
    tc, vc = hf.config.text_config, hf.config.vision_config
    oc = CLIP(embed_dim=hf.config.projection_dim, quick_gelu=True, text_cfg=open_clip_text_cfg("tiny_argmax"),
              vision_cfg=dict(image_size=vc.image_size, layers=vc.num_hidden_layers, width=vc.hidden_size,
                              patch_size=vc.patch_size, head_width=vc.hidden_size // vc.num_attention_heads,
                              mlp_ratio=vc.intermediate_size / vc.hidden_size))
    sd = hf.state_dict()
    out = {"logit_scale": sd["logit_scale"], "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T,
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
           "visual.proj": sd["visual_projection.weight"].T}
    for tower, ours, n in (("text_model", "transformer", tc.num_hidden_layers),
                           ("vision_model", "visual.transformer", vc.num_hidden_layers)):
        for i in range(n):
            a, b = f"{tower}.encoder.layers.{i}.", f"{ours}.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[b + f"attn.in_proj_{kind}"] = torch.cat([sd[a + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
                out[b + f"attn.out_proj.{kind}"] = sd[a + f"self_attn.out_proj.{kind}"]
                out[b + f"ln_1.{kind}"] = sd[a + f"layer_norm1.{kind}"]
                out[b + f"ln_2.{kind}"] = sd[a + f"layer_norm2.{kind}"]
                out[b + f"mlp.c_fc.{kind}"] = sd[a + f"mlp.fc1.{kind}"]
                out[b + f"mlp.c_proj.{kind}"] = sd[a + f"mlp.fc2.{kind}"]
    oc.load_state_dict(out, strict=True)
    return oc.eval()


@pytest.fixture(scope="module")
def hf():
    return hf_clip("tiny_argmax")


@pytest.fixture(scope="module")
def ours(hf):
    return HookedCLIP.from_hf(hf, device="cpu")


def test_same_weights_same_fingerprint_across_sources_and_formats(hf, ours, tmp_path):
    oc = hf_to_open_clip(hf)
    tokens = torch.tensor([[49406, 320, 1929, 49407] + [0] * 73])
    with torch.no_grad():
        reference = hf.get_text_features(input_ids=tokens)
        reference = getattr(reference, "pooler_output", reference)  # transformers 5 may return an output object
        assert torch.allclose(oc.encode_text(tokens), reference, atol=1e-5), "the test's own mapping is wrong"
    expected = fingerprint(ours)
    assert fingerprint(HookedCLIP.from_open_clip(oc, device="cpu")) == expected
    for safe in (True, False):  # model.safetensors and pytorch_model.bin
        hf.save_pretrained(tmp_path / str(safe), safe_serialization=safe)
        assert fingerprint(HookedCLIP.from_pretrained(tmp_path / str(safe), device="cpu")) == expected
    assert str(expected).startswith("fp-") and len(str(expected)) == 15


def test_weight_processing_keeps_the_fingerprint_of_the_weights_as_loaded(hf, ours):
    folded = HookedCLIP.from_hf(hf, device="cpu", fold_ln=True, center_writing_weights=True)
    assert folded.fingerprint == ours.fingerprint


def test_any_changed_parameter_changes_the_fingerprint(ours):
    expected = fingerprint(ours)
    names = [name for name, _ in ours.named_parameters()]
    assert any(n.startswith("vision.") for n in names) and "logit_scale" in names
    seen = {expected.digest}
    for name in names:
        edited = copy.deepcopy(ours)
        with torch.no_grad():
            edited.get_parameter(name).view(-1)[-1] += 1e-3
        fp = fingerprint(edited)
        assert fp.digest not in seen, f"changing {name} left the fingerprint unchanged"
        seen.add(fp.digest)


@pytest.mark.parametrize("tower, field, value", [("text", "act_fn", "gelu"), ("text", "pooling", "last"),
                                                  ("vision", "act_fn", "gelu")])
def test_the_computation_beside_the_weights_is_part_of_it(ours, tower, field, value):
    edited = copy.deepcopy(ours)
    setattr(getattr(edited, tower).cfg, field, value)
    assert fingerprint(edited) != fingerprint(ours)


def test_a_recorded_fingerprint_reads_back_and_refuses_an_edited_record(ours):
    record = fingerprint(ours).as_dict()
    assert Fingerprint.from_dict(record) == fingerprint(ours)
    with pytest.raises(ValueError, match="edited or corrupted"):
        Fingerprint.from_dict({**record, "logit_scale": 1.0})
