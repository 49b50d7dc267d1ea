"""A TransformerLens user's habits on HookedCLIP (issue #31): TL's weight accessors and FactoredMatrix circuits
on each tower, checked against the reference checkpoint's own state dict and against TL's utilities."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import composition_scores

from conftest import hf_clip, open_clip_model


def _heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """A torch Linear's weight [d_out, d_in] as TL's per-head [n_heads, d_in, d_head]: head h reads rows
    h*d_head..(h+1)*d_head of the output."""
    d_out, d_in = weight.shape
    return weight.reshape(n_heads, d_out // n_heads, d_in).transpose(1, 2)


@pytest.mark.parametrize("side", ["text", "vision"])
def test_weight_accessors_and_circuits_match_the_checkpoint(tiny_model, side):
    """Stacked W_Q.../b_out, W_pos, QK and OV (TL's shapes) equal the same weights read from the transformers
    state dict here: OV = v_proj then out_proj per head, QK = q_proj against k_proj per head."""
    hf = getattr(hf_clip("tiny_eot"), f"{side}_model")
    tower = getattr(tiny_model, side)
    n, h, m, d = tower.cfg.n_layers, tower.cfg.n_heads, tower.cfg.d_model, tower.cfg.d_head
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    layer = "encoder.layers.{}.{}"
    q = torch.stack([_heads(sd[layer.format(l, "self_attn.q_proj.weight")], h) for l in range(n)])
    k = torch.stack([_heads(sd[layer.format(l, "self_attn.k_proj.weight")], h) for l in range(n)])
    v = torch.stack([_heads(sd[layer.format(l, "self_attn.v_proj.weight")], h) for l in range(n)])
    o = torch.stack([sd[layer.format(l, "self_attn.out_proj.weight")].T.reshape(h, d, m) for l in range(n)])
    assert tower.W_Q.shape == (n, h, m, d) and tower.W_O.shape == (n, h, d, m) and tower.b_Q.shape == (n, h, d)
    assert torch.equal(tower.W_Q, q) and torch.equal(tower.W_K, k) and torch.equal(tower.W_V, v)
    assert torch.equal(tower.W_O, o)
    assert torch.equal(tower.b_V, torch.stack([sd[layer.format(l, "self_attn.v_proj.bias")].reshape(h, d) for l in range(n)]))
    assert torch.equal(tower.b_O, torch.stack([sd[layer.format(l, "self_attn.out_proj.bias")] for l in range(n)]))
    assert torch.equal(tower.W_in, torch.stack([sd[layer.format(l, "mlp.fc1.weight")].T for l in range(n)]))
    assert torch.equal(tower.b_out, torch.stack([sd[layer.format(l, "mlp.fc2.bias")] for l in range(n)]))
    assert torch.equal(tower.W_pos, sd["embeddings.position_embedding.weight"])
    if side == "text":
        assert torch.equal(tower.W_E, sd["embeddings.token_embedding.weight"])

    ov, qk = tower.OV, tower.QK
    assert isinstance(ov, FactoredMatrix) and ov.shape == qk.shape == (n, h, m, m)
    for l in range(n):
        for head in range(h):
            rows = slice(head * d, (head + 1) * d)
            W_V, W_O = sd[layer.format(l, "self_attn.v_proj.weight")][rows].T, sd[layer.format(l, "self_attn.out_proj.weight")][:, rows].T
            W_Qh, W_Kh = sd[layer.format(l, "self_attn.q_proj.weight")][rows].T, sd[layer.format(l, "self_attn.k_proj.weight")][rows].T
            assert (ov.AB[l, head] - W_V @ W_O).abs().max() <= 1e-6
            assert (qk.AB[l, head] - W_Qh @ W_Kh.T).abs().max() <= 1e-6
            assert (tower.blocks[l].attn.OV.AB[head] - W_V @ W_O).abs().max() <= 1e-6
    # TL's own utility takes our circuits unchanged: ||OV_0 QK_1|| / (||OV_0|| ||QK_1||), here by hand
    scores = composition_scores(tower.OV[0], tower.QK[1]).detach()
    a, b = ov.AB[0, 0].detach(), qk.AB[1, 1].detach()
    assert abs(float(scores[0, 1]) - float((a @ b).norm() / a.norm() / b.norm())) <= 1e-5


def test_tl_cache_helpers_read_the_accessors(tiny_model):
    """TL's ActivationCache.stack_head_results (which reads blocks[l].attn.W_O) works unchanged on a tower:
    each layer's heads plus b_O sum to that layer's attention output."""
    text = tiny_model.text
    tokens = text.to_tokens(["there is no dog.", "a cat"])
    with torch.no_grad(), text.options(use_attn_result=False):
        _, cache = text.run_with_cache(tokens)
        stack, labels = cache.stack_head_results(layer=-1, return_labels=True)
    assert labels[:2] == ["L0H0", "L0H1"]
    per_layer = stack.reshape(text.cfg.n_layers, text.cfg.n_heads, *stack.shape[1:]).sum(1)
    for l in range(text.cfg.n_layers):
        assert (per_layer[l] + text.b_O[l] - cache["attn_out", l]).abs().max() <= 1e-5


def test_hooked_clip_names_the_tower_for_weights(tiny_model):
    """The two towers have different weights: HookedCLIP does not guess one, it names both spellings."""
    for name in ("W_Q", "OV", "blocks", "W_pos"):
        with pytest.raises(AttributeError, match=rf"model\.text\.{name} or model\.vision\.{name}"):
            getattr(tiny_model, name)
    assert not hasattr(tiny_model, "QK") and hasattr(tiny_model.text, "QK")
    with pytest.raises(AttributeError, match="no attribute 'W_nonsense'"):
        tiny_model.W_nonsense


def _blip_text():
    import transformers

    return transformers.BlipTextModel.__new__(transformers.BlipTextModel)


def _relu_clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                                        hidden_act="relu"))


@pytest.mark.parametrize("build, words", [
    (lambda: torch.nn.Linear(2, 2), "Linear cannot be loaded: it is not a CLIP-family model"),
    (_blip_text, "BlipTextModel cannot be loaded: its text tower"),
    (_relu_clip_text, "hidden_act='relu' is not supported"),
])
def test_every_refusal_is_one_catchable_type(build, words):
    """from_hf's refusals (a class the family table refuses or lacks, an activation not reimplemented) are
    UnsupportedModelError, exported at the top; a refused class stays a TypeError, as it was. (The open_clip,
    from_pretrained and HF-text-tower refusals are checked as UnsupportedModelError in test_loading / test_post_ln,
    the image towers' UnsupportedImageTower in test_vision_parity.)"""
    from hooked_clip import HookedCLIP, UnsupportedModelError
    from hooked_clip.errors import CheckpointMismatchError, UnsupportedImageTower

    with pytest.raises(UnsupportedModelError, match=words) as err:
        HookedCLIP.from_hf(build(), device="cpu")
    assert isinstance(err.value, CheckpointMismatchError)
    if "cannot be loaded" in words:
        assert isinstance(err.value, TypeError)
    assert issubclass(UnsupportedImageTower, UnsupportedModelError)


NEG = ["There are no cats in the picture.", "There is no dog.", "There are no people.", "You see no red bus here."]
AFF = ["There are some cats in the picture.", "There is a dog.", "There are some people.", "You see a red bus here."]


def test_one_pair_order_and_default_direction_for_every_patching():
    """activation_patch, attribution_patch and path_patch take (clean, corrupt) in the same order with the same
    default direction (denoise: run corrupt, values from clean): the same pair passed the same way patches the
    same run. On a one-block tower a path from the MLP to the pooled residual is the MLP's whole effect, so
    path patching equals activation patching of mlp_out; the unpatched metrics are the two runs' own."""
    from hooked_clip import HookedCLIP
    from hooked_clip.analyses.attribution import attribution_patch
    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.path_patching import path_patch
    from hooked_clip.analyses.patching import activation_patch

    model = HookedCLIP.from_hf(hf_clip("one_layer"), device="cpu")
    target = torch.randn(4, model.cfg.d_proj, generator=torch.Generator().manual_seed(5))
    metric = cosine_to_target(target)
    act = activation_patch(model, NEG, AFF, metric, "mlp_out", index="layer", progress=False)
    atp = attribution_patch(model, NEG, AFF, metric, "mlp_out", "layer")
    path = path_patch(model, NEG, AFF, metric, "pooled", "L0_mlp", progress=False)
    assert act.direction == atp.direction == path.direction == "denoise"
    with torch.no_grad():
        own = {name: torch.nn.functional.cosine_similarity(model.encode_text(texts), target, dim=-1)
               for name, texts in (("clean", NEG), ("corrupt", AFF))}
    for res in (act, atp, path):
        assert (res.clean - own["clean"]).abs().max() <= 1e-5 and (res.corrupt - own["corrupt"]).abs().max() <= 1e-5
    assert (path.values[0] - act.values[0]).abs().max() <= 1e-5
    assert (act.values[0] - act.corrupt).abs().max() > 1e-3  # the patch moved the corrupt run


def test_data_frames_name_each_positions_token(tiny_model):
    """Results with a position axis over texts carry each run's token strings: to_dataframe's clean_token /
    corrupt_token are the tokens the model's own to_str_tokens gives at that position; image positions get no
    token columns."""
    from conftest import pixels
    from hooked_clip.analyses.attribution import attribution_patch
    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch, hidden_state_patch

    metric = cosine_to_target(torch.randn(4, tiny_model.cfg.d_proj, generator=torch.Generator().manual_seed(1)))
    results = [activation_patch(tiny_model, NEG, AFF, metric, layers=[0], progress=False),
               hidden_state_patch(tiny_model, NEG, AFF, metric, states=[1], direction="noise", progress=False),
               attribution_patch(tiny_model, NEG, AFF, metric, "resid_pre", "layer_pos")]
    checked = 0
    for res in results:
        frame = res.to_dataframe()
        for run, texts in (("clean", NEG), ("corrupt", AFF)):
            own = [tiny_model.to_str_tokens(t) for t in texts]
            for pos, ex, token in zip(frame["pos"], frame["example"], frame[f"{run}_token"]):
                if pos < len(own[ex]):
                    assert token == own[ex][pos], (res.act_name, run, pos, ex)
                    checked += 1
    assert checked > 100 and "no" in set(results[0].to_dataframe()["clean_token"])
    from hooked_clip.analyses.causal_tracing import rome_trace

    rome = rome_trace(tiny_model, NEG[:2], cosine_to_target(torch.randn(2, tiny_model.cfg.d_proj)), [3], n_samples=2,
                      progress=False).to_dataframe()
    own = [tiny_model.to_str_tokens(t) for t in NEG[:2]]
    assert len(rome) == 2 * (tiny_model.cfg.n_layers + 1) * rome["pos"].nunique() and "state" in rome
    assert all(token == own[ex][pos] for ex, pos, token in zip(rome["example"], rome["pos"], rome["token"])
               if pos < len(own[ex]))
    size = tiny_model.vision.cfg.image_size
    image = activation_patch(tiny_model, pixels(size, 2, seed=1), pixels(size, 2, seed=2),
                             cosine_to_target(torch.randn(2, tiny_model.vision.cfg.d_proj)), layers=[0], tower="vision",
                             progress=False)
    assert "clean_token" not in image.to_dataframe() and image.tokens is None


def test_every_result_object_prints_compactly():
    """Every result dataclass of the analyses prints its fields' shapes and lengths, not their numbers (the
    engine's internal plan objects aside): filled with large tensors and lists, each repr stays one short line."""
    import dataclasses
    import importlib
    import pkgutil

    import hooked_clip.analyses as analyses

    fills = {"Tensor": torch.zeros(64, 64), "list": [f"L{i}H0" for i in range(500)], "str": "resid", "float": 0.5,
             "int": 3, "dict": {"layer": list(range(500)), "pos": list(range(500))}, "tuple": ("layer", "pos")}
    seen = []
    for info in pkgutil.iter_modules(analyses.__path__):
        if info.name in ("engine", "cli") or info.ispkg:
            continue
        module = importlib.import_module(f"hooked_clip.analyses.{info.name}")
        for name, cls in vars(module).items():
            if not (dataclasses.is_dataclass(cls) and isinstance(cls, type) and cls.__module__ == module.__name__):
                continue
            kwargs = {}
            for f in dataclasses.fields(cls):
                kind = next((k for k in fills if str(f.type).removeprefix("Optional[").startswith(k)), None)
                assert kind is not None, (name, f.name, f.type)
                kwargs[f.name] = fills[kind]
            text = repr(cls(**kwargs))
            assert text.startswith(f"{name}(") and len(text) < 400 and "tensor(" not in text and "L499H0" not in text, text
            seen.append(name)
    assert {"PatchingResult", "Attribution", "RomeTraceResult", "NegatorHeadScores", "ImageDecomposition",
            "ImageSimilarityAttribution", "RunPair"} <= set(seen)


@pytest.mark.parametrize("source", ["transformers", "open_clip"])
def test_every_loader_sets_the_forward_options_on_both_towers(source):
    """As load_model for the shipped models: from_hf / from_open_clip (and from_pretrained, through from_hf) take
    TL's forward options and set them on the image tower too, so its hook_result fires."""
    from hooked_clip import HookedCLIP

    kw = dict(device="cpu", use_attn_result=True, use_split_qkv_input=True)
    model = (HookedCLIP.from_hf(hf_clip("tiny_eot"), **kw) if source == "transformers"
             else HookedCLIP.from_open_clip(open_clip_model("tiny_eot"), **kw))
    for tower in (model.text, model.vision):
        assert tower.cfg.use_attn_result and tower.cfg.use_split_qkv_input, tower.name
    size = model.vision.cfg.image_size
    with torch.no_grad():
        _, cache = model.vision.run_with_cache(torch.zeros(1, 3, size, size), names_filter=["blocks.0.attn.hook_result"])
    assert cache["blocks.0.attn.hook_result"].shape[2] == model.vision.cfg.n_heads
    with pytest.raises(ValueError, match="use_hook_mlp_in is a TransformerLens option .*hook_resid_mid"):
        HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", use_hook_mlp_in=True)
