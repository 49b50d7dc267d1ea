"""The scene renderer of ``tiny-negation-pixels``: a scene (a set of object names) -> a small RGB image.

The canvas is a ``GRID`` x ``GRID`` grid of ``CELL`` x ``CELL``-pixel cells (32 x 32 pixels, 16 cells); a
cell is exactly one patch of the pixel model's ViT. Each of the world's objects has its own glyph: a fixed
binary RGB pattern filling its cell, read from the SHA-256 of ``"tiny-negation glyph <index>"`` (the
object's index in ``world.OBJECTS``), so glyphs are the same on every machine, Python and torch version.
Empty cells are black. A scene's objects go to distinct cells drawn by ``random.Random`` seeded with the
seed and the scene's sorted object names (string seeds are hashed with SHA-512, not Python's ``hash()``):
the same scene and seed always render the same image, whatever else is in the batch.

Pixels leave the renderer as ``uint8`` [3, 32, 32] (PIL images via :func:`to_pil`); :func:`preprocess` is
the pixel model's own pipeline (its ``vision.preprocessing``): PIL images of 32 x 32 -- or scenes, which it
renders first -- -> float pixels (value / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from hooked_clip.models.tiny_negation.world import OBJECTS

GRID, CELL = 4, 8
IMAGE_SIZE = GRID * CELL
MEAN, STD = 0.5, 0.5
PREPROCESSING = (f"tiny-negation-pixels renderer: scenes (lists of object names) are rendered to {IMAGE_SIZE}x"
                 f"{IMAGE_SIZE} RGB glyph images (hooked_clip/models/tiny_negation/render.py, seed 0); PIL images "
                 f"must be {IMAGE_SIZE}x{IMAGE_SIZE} RGB (no resize, no crop); pixels (value/255 - {MEAN})/{STD}")
EMPTY = -1  # a cell with no object


def glyph(index: int) -> UInt8[Tensor, "3 cell cell"]:
    """Object ``index``'s glyph: the first 3 * CELL * CELL bits of SHA-256("tiny-negation glyph <index>") as
    a channel-first pattern of 0 / 255."""
    digest = hashlib.sha256(f"tiny-negation glyph {index}".encode()).digest()
    bits = [(byte >> k) & 1 for byte in digest for k in range(8)][: 3 * CELL * CELL]
    return (torch.tensor(bits, dtype=torch.uint8) * 255).view(3, CELL, CELL)


GLYPHS: UInt8[Tensor, "n_objects 3 cell cell"] = torch.stack([glyph(i) for i in range(len(OBJECTS))])
_INDEX = {o: i for i, o in enumerate(OBJECTS)}


def object_index(name: str, row: int = 0) -> int:
    """The index of an object name; an unknown name is an error naming the nearest known ones."""
    if name not in _INDEX:
        import difflib

        close = difflib.get_close_matches(str(name), OBJECTS, n=5, cutoff=0.5)
        raise ValueError(f"scene {row} names an unknown object {name!r}; the renderer knows {len(OBJECTS)} objects "
                         "(singular names)" + (f", e.g. {close}." if close else "."))
    return _INDEX[name]


def place(scene: Sequence[str], rng: random.Random, row: int = 0) -> list[int]:
    """One scene -> the object index in each of the GRID * GRID cells (row by row; ``EMPTY`` where none)."""
    names = sorted(set(scene))
    if not 1 <= len(names) <= GRID * GRID:
        raise ValueError(f"scene {row} holds {len(names)} objects; the {GRID}x{GRID} canvas takes 1 to {GRID * GRID}.")
    cells = [EMPTY] * (GRID * GRID)
    for name, cell in zip(names, rng.sample(range(GRID * GRID), len(names))):
        cells[cell] = object_index(name, row)
    return cells


def layout(scenes: Sequence[Sequence[str]], seed: int = 0) -> Int[Tensor, "batch cells"]:
    """Each scene's cells, drawn from (seed, the scene's sorted names) alone."""
    _check_scenes(scenes)
    return torch.tensor([place(s, random.Random(f"{seed}:{'|'.join(sorted(set(s)))}"), row) for row, s in enumerate(scenes)])


def draw(cells: Int[Tensor, "batch cells"]) -> UInt8[Tensor, "batch 3 height width"]:
    """Cells (object index or ``EMPTY``) -> the canvas: glyph ``i`` fills cell ``i`` of the grid, row by row."""
    table = torch.cat([GLYPHS, torch.zeros(1, 3, CELL, CELL, dtype=torch.uint8)])  # last row: the empty cell
    tiles = table[torch.where(cells == EMPTY, len(GLYPHS), cells)]  # [batch, cells, 3, cell, cell]
    b = cells.shape[0]
    return tiles.view(b, GRID, GRID, 3, CELL, CELL).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, IMAGE_SIZE, IMAGE_SIZE)


def render(scenes: Sequence[Sequence[str]], seed: int = 0) -> UInt8[Tensor, "batch 3 height width"]:
    """Scenes -> uint8 RGB images [batch, 3, 32, 32] (deterministic by seed and scene)."""
    return draw(layout(scenes, seed))


def to_pil(pixels: UInt8[Tensor, "batch 3 height width"]) -> list:
    from PIL import Image

    return [Image.fromarray(p.permute(1, 2, 0).contiguous().numpy(), mode="RGB") for p in pixels]


def render_images(scenes: Sequence[Sequence[str]], seed: int = 0) -> list:
    """Scenes -> PIL images (what a user would hand to ``encode_image``)."""
    return to_pil(render(scenes, seed))


def normalize(pixels: UInt8[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch 3 height width"]:
    return (pixels.float() / 255 - MEAN) / STD


def preprocess(images: list) -> Float[Tensor, "batch 3 height width"]:
    """The pixel model's own pipeline: a list of PIL images (32 x 32 RGB) or of scenes (lists of object
    names, rendered with seed 0) -> normalised float pixels."""
    if all(isinstance(x, (str, list, tuple, set, frozenset)) for x in images):
        return normalize(render(images))  # scenes (render checks them: one unwrapped scene is named as such)
    out = []
    for i, im in enumerate(images):
        if not hasattr(im, "convert") or not hasattr(im, "size"):
            raise ValueError(f"image {i} is a {type(im).__name__}; tiny-negation-pixels takes PIL images of "
                             f"{IMAGE_SIZE}x{IMAGE_SIZE} (render_images(scenes)), scenes (lists of object names) or "
                             "preprocessed pixel tensors, not a mix.")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"image {i} is {im.size[0]}x{im.size[1]}; tiny-negation-pixels reads {IMAGE_SIZE}x"
                             f"{IMAGE_SIZE} glyph canvases as rendered by render_images(scenes) (it never resizes).")
        out.append(torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
                   .view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1))
    return normalize(torch.stack(out))



preprocess.reads_names = True  # scenes are lists of object names: its own errors word the fix

def reads_rendered_scenes(model) -> bool:
    """Whether ``model``'s image tower is a pixel tower whose own pipeline is this renderer's."""
    return getattr(getattr(model, "vision", None), "preprocess", None) is preprocess


def _is_scene(x: Any) -> bool:
    return isinstance(x, (list, tuple, set, frozenset)) and all(isinstance(o, str) for o in x)


def _check_scenes(scenes: Any) -> None:
    if isinstance(scenes, str) or not isinstance(scenes, (list, tuple)) or not scenes:
        raise ValueError(f"expected a non-empty list of scenes, each a list of object names, e.g. [['dog', 'tree']]; "
                         f"got {scenes!r}.")
    if all(isinstance(o, str) for o in scenes):
        raise ValueError(f"expected a list of scenes, each a list of object names; got one scene {list(scenes)!r} "
                         f"(wrap it in a list: [{list(scenes)!r}]).")
    for row, s in enumerate(scenes):
        if not _is_scene(s):
            raise ValueError(f"scene {row} is {s!r}; a scene is a list of object names, e.g. ['dog', 'tree'].")
