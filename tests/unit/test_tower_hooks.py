"""Every hook point of every tower is checked (shape, dtype, device, naming the hook), created by the shared
base so a new tower cannot forget; hook names are validated the same way on a tower and on both towers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from hooked_clip import CLIPTextConfig, CLIPVisionConfig, HookedCLIPText, HookedCLIPVision
from hooked_clip.errors import HookReturnError, UnknownHookError
from hooked_clip.hook_points import CheckedHookPoint

TEXTS = ["there is a cat.", "there are no dogs here."]
VISION_CONFIGS = {  # every pooling and optional module of the image tower
    "cls": dict(pooling="cls"),
    "avg_final_ln": dict(pooling="avg", final_ln_after_pool=True, ln_pre=False),
    "siglip_attn": dict(pooling="attn", class_token=False, patch_bias=True, ln_pre=False, d_proj=None),
}
TEXT_CONFIGS = {
    "clip": dict(),
    "bert_post_ln": dict(ln_position="post", causal=False, pooling="first", n_token_types=2, ln_embed=True,
                         mask_padding=True, final_ln=False, proj_bias=True, proj_act="tanh", trim_after_pool=False),
    "mlp_projection": dict(causal=False, pooling="mean", d_proj_hidden=48, trim_after_pool=False),
}


def vision_tower(kind: str) -> HookedCLIPVision:
    kw = dict(d_model=64, n_heads=2, d_head=32, n_layers=2, d_mlp=128, d_proj=32, seed=0, device="cpu")
    kw.update(VISION_CONFIGS[kind])
    class_token = kw.pop("class_token", True)
    return HookedCLIPVision(CLIPVisionConfig.for_image(32, 16, class_token=class_token, **kw))


def text_tower(kind: str) -> HookedCLIPText:
    kw = dict(d_model=64, n_heads=2, d_head=32, n_layers=2, d_mlp=128, d_proj=32, n_ctx=16, seed=0, device="cpu")
    kw.update(TEXT_CONFIGS[kind])
    return HookedCLIPText(CLIPTextConfig(**kw))


@pytest.mark.parametrize("tower", [*(f"vision:{k}" for k in VISION_CONFIGS), *(f"text:{k}" for k in TEXT_CONFIGS)])
def test_every_hook_point_of_every_tower_is_checked(tower):
    side, kind = tower.split(":")
    model = vision_tower(kind) if side == "vision" else text_tower(kind)
    points = {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}
    assert len(points) > 10 and points.keys() == model.hook_dict.keys()
    assert [name for name, m in points.items() if not isinstance(m, CheckedHookPoint)] == []


def test_a_tower_that_declares_a_plain_hook_point_is_refused():
    class Careless(HookedCLIPVision):
        def __init__(self, cfg):
            nn.Module.__init__(self)  # skip the real tower's setup to plant a plain HookPoint first
            self.cfg = cfg
            self.hook_new = HookPoint()
            self.setup()

    with pytest.raises(TypeError, match="hook_new.*CheckedHookPoint"):
        Careless(vision_tower("cls").cfg)


def _run_vision(model, name, hook, pixels):
    with torch.no_grad():
        return model.run_with_hooks(pixels, fwd_hooks=[(name, hook)])


@pytest.mark.parametrize("name, hook", [
    ("hook_pooled", lambda x, hook: x[:1]),  # an image silently dropped
    ("hook_image_embed", lambda x, hook: x.double()),  # the embedding's dtype changed
    ("hook_patch_embed", lambda x, hook: x[:, 1:]),  # the tower would run on one patch fewer
    ("hook_cls_embed", lambda x, hook: x.expand(-1, 2, -1)),
    ("blocks.0.attn.hook_pattern", lambda x, hook: x[:, :1]),  # one head broadcast to all
])
def test_vision_hooks_returning_another_shape_or_dtype_raise_naming_the_hook(name, hook):
    model = vision_tower("cls")
    with pytest.raises(HookReturnError, match=name.replace(".", r"\.")):
        _run_vision(model, name, hook, torch.randn(2, 3, 32, 32))


def test_siglip_head_hook_returning_fewer_features_raises():
    model = vision_tower("siglip_attn")
    with pytest.raises(HookReturnError, match=r"head\.hook_out"):
        _run_vision(model, "head.hook_out", lambda x, hook: x[..., :3], torch.randn(2, 3, 32, 32))


def test_the_same_hooks_through_both_towers_raise_too(tiny_model):
    px = torch.randn(2, 3, 64, 64)
    with pytest.raises(HookReturnError, match=r"hook_pooled"):
        with torch.no_grad():
            tiny_model.run_with_hooks(TEXTS, px, fwd_hooks=[("vision.hook_pooled", lambda x, hook: x[:1])])


# ------------------------------------------------------------------------------------ names, both levels
def test_both_tower_cache_refuses_a_hook_that_cannot_fire(tiny_model):
    px = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="use_attn_result"):
        tiny_model.run_with_cache(TEXTS, px, names_filter=["text.blocks.0.attn.hook_result"])
    with pytest.raises(UnknownHookError, match="no hook 'blocks.0.hook_nothing'"):
        tiny_model.run_with_cache(TEXTS, px, names_filter=["vision.blocks.0.hook_nothing"])


def test_both_tower_runs_refuse_unprefixed_names(tiny_model):
    px = torch.randn(2, 3, 64, 64)
    keep = lambda x, hook: None  # noqa: E731
    for run in (lambda: tiny_model.run_with_hooks(TEXTS, px, fwd_hooks=[("blocks.0.hook_resid_pre", keep)]),
                lambda: tiny_model.run_with_cache(TEXTS, px, names_filter=["blocks.0.hook_resid_pre"])):
        with pytest.raises(UnknownHookError, match="names no tower.*'text.' or 'vision.'"):
            run()


def test_hook_dict_and_mod_dict_cover_both_towers_with_prefixes(tiny_model):
    hooks = tiny_model.hook_dict
    assert hooks["text.blocks.0.hook_resid_pre"] is tiny_model.text.hook_dict["blocks.0.hook_resid_pre"]
    assert hooks["vision.hook_pooled"] is tiny_model.vision.hook_dict["hook_pooled"]
    assert hooks["hook_image_embed"] is tiny_model.vision.hook_dict["hook_image_embed"]
    expected = len(tiny_model.text.hook_dict) + len(tiny_model.vision.hook_dict) + 4
    assert len(hooks) == expected
    assert tiny_model.mod_dict["vision.blocks.1.attn"] is tiny_model.vision.blocks[1].attn
    # every name in hook_dict can be cached in a run over both towers
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(TEXTS, torch.randn(2, 3, 64, 64),
                                             names_filter=lambda n: n in hooks)
    fired = set(cache.keys())
    assert {n for n in hooks if "hook_result" not in n and "_input" not in n} <= fired
