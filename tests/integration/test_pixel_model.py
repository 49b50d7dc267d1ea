"""The shipped ``tiny-negation-pixels`` demo model: the scene renderer, offline loading with tiny-negation's
text tower unchanged, checksum and size, accuracy floors, input paths and bad input, a deterministic
training smoke run, and hooks on its ViT."""

from __future__ import annotations

import hashlib
import random
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_clip import HookedCLIP, load_model
from hooked_clip.analyses.valse_negation.demo_scenes import demo_model_accuracy, scene_input
from hooked_clip.models import tiny_negation as tn
from hooked_clip.models.tiny_negation import render, world
from hooked_clip.models.tiny_negation.evaluate import held_out_accuracy
from hooked_clip.models.tiny_negation.pixels import PIXEL_WEIGHTS, load_pixels, save_vision
from hooked_clip.models.tiny_negation.train_pixels import train
from hooked_clip.vision.tower import HookedCLIPVision

CARD = Path(__file__).parents[2] / "docs" / "models" / "tiny-negation.md"
# floors stated in the card's pixel section, on the fixed samples below (measured on the shipped weights:
# 0.983 and 0.993); they catch a broken model, renderer or loader, with room for float differences
HELD_OUT_FLOOR, VALSE_FLOOR = 0.95, 0.95


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-negation-pixels")


# ----------------------------------------------------------------------------------------- renderer
def test_glyphs_are_distinct_and_are_the_sha256_bits_of_the_object_index():
    assert render.GLYPHS.shape == (len(world.OBJECTS), 3, render.CELL, render.CELL)
    flat = render.GLYPHS.flatten(1)
    assert len({tuple(r.tolist()) for r in flat}) == len(world.OBJECTS)
    assert bool((flat.sum(-1) > 0).all())  # no glyph is the empty (black) cell
    for i in (0, 7, len(world.OBJECTS) - 1):  # independent recomputation: numpy's bit unpacking
        digest = np.frombuffer(hashlib.sha256(f"tiny-negation glyph {i}".encode()).digest(), dtype=np.uint8)
        bits = np.unpackbits(digest, bitorder="little")[: 3 * 64].reshape(3, 8, 8) * 255
        assert np.array_equal(render.GLYPHS[i].numpy(), bits)


def test_rendered_images_show_each_object_once_in_its_own_cell():
    rng = random.Random(5)
    scenes = [sorted(world.random_scene(rng, 1, 7)) for _ in range(50)]
    images = render.render(scenes, seed=3)
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.uint8
    for scene, image in zip(scenes, images):
        found = []
        for r in range(render.GRID):
            for c in range(render.GRID):
                tile = image[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
                if tile.any():
                    match = [i for i, g in enumerate(render.GLYPHS) if torch.equal(g, tile)]
                    assert len(match) == 1
                    found.append(world.OBJECTS[match[0]])
        assert sorted(found) == scene


def test_rendering_is_deterministic_by_seed_and_scene():
    scenes = [["dog", "tree"], ["cat"], ["bus", "car", "man", "woman", "kite", "dog"]]
    a = render.render(scenes, seed=0)
    assert torch.equal(a, render.render(scenes, seed=0))
    assert torch.equal(a[1:2], render.render([["cat"]], seed=0))  # a scene's image does not depend on the batch
    assert torch.equal(a[0], render.render([["tree", "dog"]], seed=0)[0])  # nor on the order of its names
    assert not torch.equal(a, render.render(scenes, seed=1))


def test_renderer_refuses_bad_scenes():
    with pytest.raises(ValueError, match=r"unknown object 'dgo'.*'dog'"):
        render.render([["dgo"]])
    with pytest.raises(ValueError, match="wrap it in a list"):
        render.render(["dog", "tree"])
    with pytest.raises(ValueError, match="1 to 16"):
        render.render([world.OBJECTS[:17]])


# ------------------------------------------------------------------------------------------- model
def test_loads_offline_with_tiny_negations_text_tower_unchanged(monkeypatch):
    symbolic = load_model("tiny-negation")

    def no_network(*args, **kwargs):
        raise AssertionError("the demo model tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    m = load_model("tiny-negation-pixels")
    assert isinstance(m, HookedCLIP) and isinstance(m.vision, HookedCLIPVision)
    assert m.vision.cfg.n_ctx == 17 and m.vision.preprocessing == render.PREPROCESSING
    text_a, text_b = symbolic.text.state_dict(), m.text.state_dict()
    assert text_a.keys() == text_b.keys() and all(torch.equal(text_a[k], text_b[k]) for k in text_a)
    assert torch.equal(symbolic.logit_scale, m.logit_scale)


def test_weights_are_small_and_match_the_card_checksum():
    data = PIXEL_WEIGHTS.read_bytes()
    assert len(data) <= 3_000_000
    package = sum(p.stat().st_size for p in PIXEL_WEIGHTS.parent.glob("*.safetensors"))
    assert package <= 8_000_000
    m = re.search(r"pixel tower sha256[^0-9a-f]*([0-9a-f]{64})", CARD.read_text())
    assert m, "the card's pixel section must record the ViT file's sha256"
    assert hashlib.sha256(data).hexdigest() == m.group(1)


def test_accuracy_above_the_card_floors(model):
    assert held_out_accuracy(model, n=300) >= HELD_OUT_FLOOR
    acc, n = demo_model_accuracy(model, limit=150)
    assert n == 150 and acc >= VALSE_FLOOR


def test_scenes_pil_images_and_pixel_tensors_give_the_same_embedding(model):
    scenes = [["dog", "tree"], ["cat", "bus", "kite"]]
    a = model.encode_image(scenes)
    b = model.encode_image(render.render_images(scenes))
    c = model.encode_image(render.normalize(render.render(scenes)))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(model.encode_image(scene_input(model, scenes, seed=2)),
                       model.encode_image(render.render_images(scenes, seed=2)))
    assert scene_input(load_model("tiny-negation"), scenes) is scenes  # the symbolic tower takes the scenes


def test_bad_images_are_refused_with_the_fix(model):
    from PIL import Image

    with pytest.raises(ValueError, match="32x32"):
        model.encode_image([Image.new("RGB", (64, 64))])
    with pytest.raises(ValueError, match=r"unknown object 'dgo'.*'dog'"):
        model.encode_image([["dgo", "tree"]])
    with pytest.raises(ValueError, match="wrap it in a list"):
        model.encode_image(["dog", "tree"])


def test_training_smoke_run_is_deterministic_and_round_trips(tmp_path):
    a = train(steps=2, batch=8, pool=1, log_every=0)
    b = train(steps=2, batch=8, pool=1, log_every=0)
    for (k, va), vb in zip(a.vision.state_dict().items(), b.vision.state_dict().values()):
        assert torch.equal(va, vb), k
    shipped_text = load_model("tiny-negation").text.state_dict()
    assert all(torch.equal(v, shipped_text[k]) for k, v in a.text.state_dict().items())  # the text tower is frozen
    save_vision(a.vision, tmp_path / "v.safetensors")
    c = load_pixels(tmp_path / "v.safetensors")
    assert torch.equal(a.encode_image([["dog", "tree"]]), c.encode_image([["dog", "tree"]]))


def test_refuses_text_weights_it_was_not_trained_with(tmp_path):
    other = tmp_path / "text.safetensors"
    other.write_bytes(tn.WEIGHTS.read_bytes() + b" ")
    with pytest.raises(ValueError, match="trained against text weights"):
        load_pixels(text_weights=other)
    with pytest.raises(FileNotFoundError, match="train_pixels"):
        load_pixels(tmp_path / "absent.safetensors")


def test_hooks_cover_the_pixel_tower(model):
    sim, cache = model.run_with_cache(["There is no dog."], [["dog", "tree"]])
    assert sim.shape == (1, 1)
    assert cache["vision.blocks.2.attn.hook_pattern"].shape == (1, 4, 17, 17)
    assert model.vision.to_patch_grid(cache["vision.blocks.0.attn.hook_pattern"][:, :, 0]).shape == (1, 4, 4, 4)
