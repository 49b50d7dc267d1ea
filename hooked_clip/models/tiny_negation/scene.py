"""The symbolic image tower of the demo model: a scene (a set of object names) -> one embedding."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.vision.reference import ReferenceVisionTower


class SceneEncoder(nn.Module):
    """multi-hot [batch, n_objects] -> MLP -> [batch, d_proj]."""

    def __init__(self, objects: Sequence[str], d_hidden: int = 256, d_proj: int = 128):
        super().__init__()
        self.objects = list(objects)
        self.index = {o: i for i, o in enumerate(self.objects)}
        self.fc1 = nn.Linear(len(self.objects), d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_proj)

    def forward(self, multi_hot: Float[Tensor, "batch n_objects"]) -> Float[Tensor, "batch d_proj"]:
        return self.fc2(F.gelu(self.fc1(multi_hot)))

    def multi_hot(self, scenes: Sequence[Sequence[str]]) -> Float[Tensor, "batch n_objects"]:
        """Scenes -> multi-hot rows. An unknown object name is an error listing the nearest known names."""
        out = torch.zeros(len(scenes), len(self.objects))
        for row, scene in enumerate(scenes):
            for name in scene:
                if name not in self.index:
                    close = difflib.get_close_matches(str(name), self.objects, n=5, cutoff=0.5)
                    raise ValueError(
                        f"scene {row} names an unknown object {name!r}; the scene encoder knows "
                        f"{len(self.objects)} objects (singular names)" + (f", e.g. {close}." if close else ".")
                    )
                out[row, self.index[name]] = 1.0
        return out


class SceneTower(ReferenceVisionTower):
    """``encode_image`` for the demo model: a list of scenes, each a list of object names."""

    def __init__(self, encoder: SceneEncoder):
        super().__init__(encoder, encoder.multi_hot, image_size=None)

    def encode(self, scenes: Any) -> Float[Tensor, "batch d_proj"]:
        if isinstance(scenes, Tensor):
            if scenes.ndim != 2 or scenes.shape[1] != len(self.encoder.objects):
                raise ValueError(f"a scene tensor must be multi-hot [batch, {len(self.encoder.objects)}], got {tuple(scenes.shape)}.")
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
