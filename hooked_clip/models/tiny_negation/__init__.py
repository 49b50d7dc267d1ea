"""``tiny-negation``: a small CLIP trained here on synthetic existence scenes, shipped as the offline demo
model (``load_model("tiny-negation")``), and its pixel sibling ``tiny-negation-pixels``. Model card: docs/models/tiny-negation.md.

- ``world.py``: objects, statement templates, random scenes;
- ``vocabulary.txt``: extra words the demo model knows beyond its world (every word of the VALSE
  existence sentences, so the study runs on it);
- ``scene.py``: the symbolic image tower (scenes = lists of object names);
- ``train.py``: the training script that reproduces the shipped weights;
- ``evaluate.py``: the quality numbers of the card.

``tiny-negation-pixels`` (``load_model("tiny-negation-pixels")``): the same text tower with a hooked ViT
that reads rendered scenes:

- ``render.py``: the scene renderer (each object a fixed glyph in one cell of a 4 x 4 grid) and the pixel
  model's preprocessing;
- ``pixels.py``: the ViT's architecture, loading and saving (``tiny_negation_pixels.safetensors``);
- ``train_pixels.py``: the training script of the ViT (text tower frozen)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hooked_clip.models.tiny_negation.scene import SceneEncoder, SceneTower

WEIGHTS = Path(__file__).parent / "tiny_negation.safetensors"
VOCABULARY = Path(__file__).parent / "vocabulary.txt"

__all__ = ["VOCABULARY", "WEIGHTS", "build", "load", "save"]


def text_config(device: str = "cpu", **overrides):
    from hooked_clip.text.config import CLIPTextConfig

    kw = dict(d_model=128, n_heads=4, d_head=32, n_layers=4, d_mlp=512, n_ctx=77, d_proj=128,
              act_fn="quick_gelu", pooling="argmax", model_name="tiny-negation", device=device,
              init_range=0.1)  # 0.02 (GPT-2's) leaves attention uniform and training stalls at this width
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def build(objects, seed: int = 0, device: str = "cpu", d_hidden: int = 256, max_count: int = 1, **text_overrides):
    """A randomly initialised demo-model architecture (what ``train.py`` starts from); ``d_hidden`` and
    ``text_overrides`` (``text_config``'s fields) make a smaller sibling (the ``tiny-pair`` models);
    ``max_count`` > 1 a scene tower that reads counts (``tiny-count``; see ``scene.py``)."""
    from hooked_clip.model import HookedCLIP
    from hooked_clip.text.tower import HookedCLIPText

    torch.manual_seed(seed)
    text = HookedCLIPText(text_config(device, seed=seed, **text_overrides))
    tower = SceneTower(SceneEncoder(objects, d_hidden=d_hidden, d_proj=text.cfg.d_proj, max_count=max_count)).to(device)
    return HookedCLIP(text, tower, logit_scale=float(torch.log(torch.tensor(10.0))))


def save(model, path: Path, used_token_ids, architecture: dict | None = None) -> None:
    """Write the weights as safetensors: token-embedding rows only for the ids the model was trained on
    (every other row is zero), the rest of the state dict as is, the object vocabulary (and ``architecture``,
    :func:`build`'s keywords, for a sibling of another size) in the metadata."""
    from safetensors.torch import save_file

    ids = torch.tensor(sorted(set(int(i) for i in used_token_ids)), dtype=torch.long)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "text.embed.W_E"}
    sd["text.embed.W_E_rows"] = model.text.embed.W_E.detach()[ids].cpu().contiguous()
    sd["text.embed.W_E_ids"] = ids
    metadata = {"objects": json.dumps(model.vision.encoder.objects)}
    if architecture:
        metadata["architecture"] = json.dumps(architecture)
    save_file(sd, str(path), metadata=metadata)


def load(path: Path = WEIGHTS, device: str = "cpu"):
    """The shipped demo model as a ``HookedCLIP`` (offline); ``encode_image`` takes scenes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"demo-model weights not found at {path}; reinstall the package or run "
                                "`python -m hooked_clip.models.tiny_negation.train` to rebuild them.")
    with safe_open(str(path), "pt") as f:
        objects = json.loads(f.metadata()["objects"])
        architecture = json.loads(f.metadata().get("architecture", "{}"))
    sd = load_file(str(path))
    model = build(objects, device=device, **architecture)
    ids, rows = sd.pop("text.embed.W_E_ids"), sd.pop("text.embed.W_E_rows")
    w_e = torch.zeros_like(model.text.embed.W_E, device="cpu")
    w_e[ids] = rows
    sd["text.embed.W_E"] = w_e
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()
