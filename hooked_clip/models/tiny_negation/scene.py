"""The symbolic image tower of the demo models: a scene (a list of object names) -> one embedding.

A scene lists each object once per instance: ``["dog", "dog", "cat"]`` holds two dogs and a cat. The existence
models (``max_count=1``) read only which objects are present (a repeated name is the same object, as in a set);
a counting model (``tiny-count``, ``max_count=4``) reads how many of each, as a thermometer code: one input per
(level, object), 1 where the object's count is at least the level (1..``max_count``). Its first ``n_objects``
inputs (level 1) are the existence models' multi-hot, so the code only adds columns."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.vision.reference import ReferenceVisionTower


class SceneEncoder(nn.Module):
    """scene code [batch, max_count * n_objects] -> MLP -> [batch, d_proj] (the code: the module docstring;
    ``max_count=1``: the multi-hot of the objects present)."""

    def __init__(self, objects: Sequence[str], d_hidden: int = 256, d_proj: int = 128, max_count: int = 1):
        super().__init__()
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}.")
        self.objects = list(objects)
        self.max_count = max_count
        self.index = {o: i for i, o in enumerate(self.objects)}
        self.fc1 = nn.Linear(len(self.objects) * max_count, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_proj)

    @property
    def n_inputs(self) -> int:
        return len(self.objects) * self.max_count

    def forward(self, multi_hot: Float[Tensor, "batch n_inputs"]) -> Float[Tensor, "batch d_proj"]:
        return self.fc2(F.gelu(self.fc1(multi_hot)))

    def counts(self, scenes: Sequence[Sequence[str]]) -> Float[Tensor, "batch n_objects"]:
        """How many of each object every scene holds (capped at 1 for an existence model: a set). An unknown
        object name is an error listing the nearest known names; more than ``max_count`` of one object in a
        counting model is an error."""
        out = torch.zeros(len(scenes), len(self.objects))
        for row, scene in enumerate(scenes):
            for name in scene:
                if name not in self.index:
                    close = difflib.get_close_matches(str(name), self.objects, n=5, cutoff=0.5)
                    raise ValueError(
                        f"scene {row} names an unknown object {name!r}; the scene encoder knows "
                        f"{len(self.objects)} objects (singular names)" + (f", e.g. {close}." if close else ".")
                    )
                out[row, self.index[name]] += 1.0
        if self.max_count == 1:
            return out.clamp(max=1.0)
        over = (out > self.max_count).nonzero().tolist()
        if over:
            row, obj = over[0]
            raise ValueError(f"scene {row} holds {int(out[row, obj])} x {self.objects[obj]!r}; this scene encoder "
                             f"counts up to {self.max_count} of an object: list it at most {self.max_count} times.")
        return out

    def code(self, counts: Float[Tensor, "batch n_objects"]) -> Float[Tensor, "batch n_inputs"]:
        """Counts -> the thermometer code [batch, max_count * n_objects] (level-major: columns
        ``l * n_objects + o`` are 1 where object o's count is at least l + 1)."""
        levels = torch.arange(1, self.max_count + 1, dtype=counts.dtype, device=counts.device)
        return (counts[:, None, :] >= levels[None, :, None]).to(counts.dtype).flatten(1)

    def multi_hot(self, scenes: Sequence[Sequence[str]]) -> Float[Tensor, "batch n_inputs"]:
        """Scenes -> rows of the scene code (for ``max_count=1`` the multi-hot of the objects present)."""
        return self.code(self.counts(scenes))


class SceneTower(ReferenceVisionTower):
    """``encode_image`` for the demo model: a list of scenes, each a list of object names."""

    def __init__(self, encoder: SceneEncoder):
        super().__init__(encoder, encoder.multi_hot, image_size=None)

    def encode(self, scenes: Any) -> Float[Tensor, "batch d_proj"]:
        if isinstance(scenes, Tensor):
            if scenes.ndim != 2 or scenes.shape[1] != self.encoder.n_inputs:
                what = "multi-hot" if self.encoder.max_count == 1 else "a thermometer code (SceneEncoder.code)"
                raise ValueError(f"a scene tensor must be {what} [batch, {self.encoder.n_inputs}], got {tuple(scenes.shape)}.")
            hot = scenes.float()
        else:
            if isinstance(scenes, str) or (isinstance(scenes, (list, tuple)) and scenes and isinstance(scenes[0], str)):
                raise ValueError(
                    "encode_image takes a list of scenes, each a list of object names, e.g. [['dog', 'tree']]; "
                    f"got {scenes!r} (for one scene, wrap it in a list: [{scenes!r}])."
                )
            if not isinstance(scenes, (list, tuple)):
                raise ValueError(
                    f"the demo model's encode_image takes scenes (lists of object names), not a "
                    f"{type(scenes).__name__}: it has no pixel tower. Pass e.g. [['dog', 'tree']]."
                )
            if len(scenes) == 0:
                raise ValueError("encode_image got no scenes; pass a non-empty list of scenes.")
            hot = self.encoder.multi_hot(scenes)
        param = next(self.encoder.parameters())
        return self.encoder(hot.to(param.device, param.dtype))
