"""``tiny-negation-pixels``: the ``tiny-negation`` text tower (the same weights file, frozen) with a small
hooked ViT (:class:`~hooked_clip.vision.HookedCLIPVision`) that reads rendered scenes (``render.py``)
instead of the symbolic scene encoder. Model card: docs/models/tiny-negation.md, "Pixel image tower".

Only the ViT is stored here (``tiny_negation_pixels.safetensors``); its metadata records the ViT's config,
the object list its glyphs index and the sha256 of the text weights it was trained against (loading
refuses a different text file: the two towers only agree as trained together)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
import torch

from hooked_clip.models.tiny_negation import WEIGHTS, load
from hooked_clip.models.tiny_negation import render
from hooked_clip.models.tiny_negation.world import OBJECTS

PIXEL_WEIGHTS = Path(__file__).parent / "tiny_negation_pixels.safetensors"

__all__ = ["PIXEL_WEIGHTS", "build_vision", "load_pixels", "save_vision", "vision_config", "with_vision"]


def vision_config(device: str = "cpu", **overrides):
    """The pixel tower's architecture: 3 blocks, d_model 128, 4 heads of 32, d_mlp 512, quick_gelu, a class
    token, ln_pre, class-token pooling, projection to the text tower's 128 dimensions; 32 x 32 pixels cut
    into 8 x 8 patches (one patch per canvas cell, 16 patches + the class token)."""
    from hooked_clip.vision.config import CLIPVisionConfig

    kw = dict(d_model=128, n_heads=4, d_head=32, n_layers=3, d_mlp=512, d_proj=128, act_fn="quick_gelu",
              image_size=render.IMAGE_SIZE, patch_size=render.CELL, model_name="tiny-negation-pixels",
              init_range=0.05, device=device)
    kw.update(overrides)
    return CLIPVisionConfig.for_image(**kw)


def build_vision(seed: int = 0, device: str = "cpu", **overrides):
    """A randomly initialised pixel tower (what ``train_pixels.py`` starts from), with its own preprocessing."""
    from hooked_clip.vision.tower import HookedCLIPVision

    tower = HookedCLIPVision(vision_config(device, seed=seed, **overrides), preprocess=render.preprocess)
    tower.preprocessing = render.PREPROCESSING
    return tower


def with_vision(text_model, vision):
    """A ``HookedCLIP`` of ``text_model``'s text tower and logit scale with ``vision`` as its image tower."""
    from hooked_clip.model import HookedCLIP

    model = HookedCLIP(text_model.text, vision, logit_scale=float(text_model.logit_scale.detach()))
    return model.to(text_model.logit_scale.device).eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_vision(vision, path: Path, text_weights: Path = WEIGHTS) -> None:
    """Write the pixel tower's weights with its config, the object list and the text weights' sha256."""
    from safetensors.torch import save_file

    cfg = vision.cfg
    fields = {k: getattr(cfg, k) for k in ("d_model", "n_heads", "d_head", "n_layers", "d_mlp", "d_proj", "act_fn",
                                            "image_size", "patch_size")}
    sd = {k: v.detach().cpu().contiguous() for k, v in vision.state_dict().items()}
    save_file(sd, str(path), metadata={"vision_config": json.dumps(fields), "objects": json.dumps(OBJECTS),
                                       "text_weights_sha256": sha256(text_weights)})


def load_pixels(path: Path = PIXEL_WEIGHTS, text_weights: Path = WEIGHTS, device: str = "cpu"):
    """The shipped pixel demo model as a ``HookedCLIP`` (offline): ``tiny-negation``'s text tower and logit
    scale (loaded from ``text_weights``, which must be the file the ViT was trained against) with the ViT
    from ``path``. ``encode_image`` takes
    PIL images of 32 x 32 (``render.render_images``), scenes (rendered on the way in) or pixel tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"pixel-tower weights not found at {path}; reinstall the package or run "
                                "`python -m hooked_clip.models.tiny_negation.train_pixels` to rebuild them.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    if json.loads(meta["objects"]) != OBJECTS:
        raise ValueError(f"{path} was trained on another object list than world.OBJECTS (its glyphs index that list); "
                         "retrain it with `python -m hooked_clip.models.tiny_negation.train_pixels`.")
    expected, actual = meta["text_weights_sha256"], sha256(text_weights)
    if actual != expected:
        raise ValueError(f"{path} was trained against text weights with sha256 {expected}, but {text_weights} has "
                         f"{actual}; retrain the pixel tower (`python -m hooked_clip.models.tiny_negation.train_pixels`).")
    fields = json.loads(meta["vision_config"])
    if (fields["image_size"], fields["patch_size"]) != (render.IMAGE_SIZE, render.CELL):
        raise ValueError(f"{path} reads {fields['image_size']}-pixel images in {fields['patch_size']}-pixel patches, but "
                         f"the renderer draws {render.IMAGE_SIZE} pixels in {render.CELL}-pixel cells; retrain it.")
    text_model = load(text_weights, device=device)
    vision = build_vision(device="cpu", **fields)
    vision.load_state_dict(load_file(str(path)), strict=True)  # names missing / unexpected keys
    return with_vision(text_model, vision.to(device).eval())
