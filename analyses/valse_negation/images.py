"""Image sources for the study: synthesized scenes (the demo model) or a folder of VALSE images (real CLIP).

An image source gives, per item, the image embedding and optionally the subject's size in the image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from hooked_clip.analyses.valse_negation.data import Item
from hooked_clip.files import unreadable
from hooked_clip.analyses.valse_negation.demo_scenes import synthesize_scene


class SceneImages:
    """Synthesized scenes for the ``tiny-negation`` demo model: the subject is present iff the affirmative
    sentence is true, plus seeded distractors. Subject size = the subject's share of the scene's objects
    (1 / number of objects) where it is present: the toy analogue of the paper's CLIPSeg area."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> str:
        return f"synthesized scenes (seed {self.seed})"

    def scenes(self, items: Sequence[Item]) -> list[list[str]]:
        return [synthesize_scene(x.raw, seed=self.seed) for x in items]

    @torch.no_grad()
    def embed(self, model, items: Sequence[Item]) -> Tensor:
        return model.encode_image(self.scenes(items), normalize=False)

    def subject_sizes(self, items: Sequence[Item]) -> list[Optional[float]]:
        from hooked_clip.models.tiny_negation.world import object_of

        out = []
        for x, scene in zip(items, self.scenes(items)):
            subject = object_of(re.search(r"\bno\s+([A-Za-z']+)", x.negated, re.I).group(1))
            out.append(1.0 / len(scene) if subject in scene else None)
        return out


class FolderImages:
    """VALSE images (Visual7W) from a folder: ``item.image_file`` under ``root``. ``subject_size``: an
    optional callable (item, PIL image) -> area fraction in [0, 1] (e.g. :func:`clipseg_subject_size`)."""

    def __init__(self, root, subject_size: Optional[Callable] = None, batch_size: int = 32):
        self.root = Path(root).expanduser().resolve()  # relative or absolute: the same folder, the same run
        self.subject_size = subject_size
        self.batch_size = batch_size
        if not self.root.is_dir():
            raise FileNotFoundError(f"images folder {self.root} does not exist; pass the folder holding the "
                                    "Visual7W images (v7w_<id>.jpg).")

    def describe(self) -> str:
        return f"images from {self.root}"

    def check(self, items: Sequence[Item]) -> None:
        missing = [x.image_file for x in items if not (self.root / x.image_file).is_file()]
        if len(missing) == len(items):
            raise FileNotFoundError(f"the images folder {self.root} holds none of the {len(items)} expected files "
                                    f"(e.g. {missing[0]}); pass the folder with the Visual7W images (v7w_<id>.jpg).")
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(items)} image files are missing from {self.root}, e.g. "
                                    f"{missing[:5]}; add them or run with --limit on a subset you have.")

    def _open(self, item: Item):
        from PIL import Image

        path = self.root / item.image_file
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated, damaged or not an image
            raise unreadable(path, "an image", err, f"Replace it with an intact copy of {item.image_file}.") from None

    @torch.no_grad()
    def embed(self, model, items: Sequence[Item]) -> Tensor:
        self.check(items)
        out = []
        for i in range(0, len(items), self.batch_size):
            out.append(model.encode_image([self._open(x) for x in items[i:i + self.batch_size]], normalize=False))
        return torch.cat(out)

    def subject_sizes(self, items: Sequence[Item]) -> list[Optional[float]]:
        if self.subject_size is None:
            return [None] * len(items)
        return [float(self.subject_size(x, self._open(x))) if x.negation_in == "foil" else None for x in items]


def clipseg_subject_size(model_dir) -> Callable:
    """The paper's subject size: CLIPSeg (transformers, local weights such as ``CIDAS/clipseg-rd64-refined``
    saved with ``save_pretrained``) prompted with the first noun chunk of the affirmative caption, here
    approximated as the words after "There is/are" up to the first preposition; area = mean sigmoid of the
    output map."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    hint = "save CIDAS/clipseg-rd64-refined with save_pretrained (model and processor) where there is network and pass that folder."
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"no CLIPSeg folder at {model_dir}; {hint}")
    try:
        processor = CLIPSegProcessor.from_pretrained(model_dir, local_files_only=True)
        seg = CLIPSegForImageSegmentation.from_pretrained(model_dir, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"could not load CLIPSeg from {model_dir} ({e}); {hint}") from None

    def size(item: Item, image) -> float:
        m = re.match(r"There (?:is|are) (.+?)(?: (?:in|on|at|near|by|under|with|parked|sitting|standing)\b|\.|$)",
                     item.affirmative)
        prompt = m.group(1) if m else item.affirmative
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.no_grad():
            logits = seg(**inputs).logits
        return float(torch.sigmoid(logits).mean())

    return size
