"""``tiny-pair-base`` and ``tiny-pair-tuned``: a toy checkpoint and its negation fine-tune, for diffing
checkpoints offline (model card: docs/models/tiny-pair.md).

Both are smaller siblings of ``tiny-negation`` (its world, scene tower, tokenizer, file format and training
pieces; :data:`ARCHITECTURE`). ``tiny-pair-base`` is trained from scratch on affirmative captions only (it never
sees a negated sentence); ``tiny-pair-tuned`` is that model fine-tuned the NegCLIP way, with negated hard
negatives ("There is no X"), its text tower only (the scene tower and the logit scale stay the base's, so both
read texts against the same images). ``train.py`` reproduces both files."""

from __future__ import annotations

from pathlib import Path

BASE = Path(__file__).parent / "tiny_pair_base.safetensors"
TUNED = Path(__file__).parent / "tiny_pair_tuned.safetensors"
FILES = {"tiny-pair-base": BASE, "tiny-pair-tuned": TUNED}

#: ``tiny_negation.build``'s keywords: half the width of ``tiny-negation``, the same depth
ARCHITECTURE = dict(d_model=64, n_heads=4, d_head=16, n_layers=4, d_mlp=256, d_proj=64, d_hidden=128)


def load(name: str, device: str = "cpu"):
    """``tiny-pair-base`` or ``tiny-pair-tuned`` as a ``HookedCLIP`` (offline); ``encode_image`` takes scenes."""
    from hooked_clip.models.tiny_negation import load as load_file

    if name not in FILES:
        raise ValueError(f"no toy-pair model {name!r}; the pair is {sorted(FILES)}.")
    if not FILES[name].is_file():
        raise FileNotFoundError(f"{name} weights not found at {FILES[name]}; run "
                                "`python -m hooked_clip.models.tiny_pair.train` to rebuild them.")
    model = load_file(FILES[name], device=device)
    model.text.cfg.model_name = name
    return model
