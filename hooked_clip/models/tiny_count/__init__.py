"""``tiny-count``: a demo model of two phenomena, existence and counting (0-4), trained here on a synthetic world
so that the localisation atlas shows two learnt phenomena offline (model card: docs/models/tiny-count.md).

A smaller sibling of ``tiny-negation`` (its ``build``, tokenizer, file format and objects; :data:`ARCHITECTURE`)
whose scene tower reads how many of each object a scene holds (``scene.py``'s thermometer code, ``max_count=4``):
a scene is a list of object names, one entry per instance (``[["dog", "dog", "cat"]]``).

- ``world.py``: counting and existence statements, scenes with counts, and :func:`world.parse` (a sentence of
  the world's forms -> the statement it makes);
- ``train.py``: the training script that reproduces the shipped weights;
- ``evaluate.py``: the quality numbers of the card."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "tiny_count.safetensors"
NAME = "tiny-count"
#: ``tiny_negation.build``'s keywords: tiny-pair's text tower projecting to 128, a scene tower that counts to 4
ARCHITECTURE = dict(d_model=64, n_heads=4, d_head=16, n_layers=4, d_mlp=256, d_proj=128, d_hidden=256, max_count=4)

__all__ = ["ARCHITECTURE", "NAME", "WEIGHTS", "load"]


def load(path: Path = WEIGHTS, device: str = "cpu"):
    """``tiny-count`` as a ``HookedCLIP`` (offline); ``encode_image`` takes scenes with repeated names."""
    from hooked_clip.models.tiny_negation import load as load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"tiny-count weights not found at {path}; reinstall the package or run "
                                "`python -m hooked_clip.models.tiny_count.train` to rebuild them.")
    model = load_file(path, device=device)
    model.text.cfg.model_name = NAME
    return model
