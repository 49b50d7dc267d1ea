"""Image sources for the study: synthesized scenes (the demo model) or a folder of VALSE images (real CLIP).

An image source gives, per item, the image embedding and, per foil-negated aligned pair, the subject's
size in the image (``subjects``: it adds the areas to the prompts the study found with its
:class:`~hooked_clip.analyses.valse_negation.data.SubjectParser`).

Pixels: :class:`FolderImages` hands each file, opened by PIL and otherwise untouched, to the model's own
preprocessing (``model.encode_image``): transformers' CLIP image processor on its PIL backend for a model
loaded from HF (what the authors' ``CLIPProcessor`` of transformers 4 does, including compositing transparency
onto white; transformers 5's default torchvision backend differs by up to one intensity level), open_clip's
``preprocess`` for a model loaded from open_clip. CLIPSeg's input goes through the same PIL backend. :func:`preprocessing_name` says which one ran.
"""

from __future__ import annotations

import hashlib

import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from hooked_clip.analyses.valse_negation.data import Item, Pair
from hooked_clip.loaders.files import unreadable
from hooked_clip.loaders.hf_vision import PIXEL_BACKEND
from hooked_clip.analyses.valse_negation.demo_scenes import scene_input, synthesize_scene


class SceneImages:
    """Synthesized scenes for the demo models: the subject is present iff the affirmative sentence is true,
    plus seeded distractors; for the pixel model (``tiny-negation-pixels``) each scene is rendered to a glyph
    image (cells drawn from the same seed) and the image goes through the model's own pipeline. Subject size = the subject's share of the scene's objects
    (1 / number of objects) where it is present: the toy analogue of the paper's CLIPSeg area."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> str:
        return f"synthesized scenes (seed {self.seed})"

    def identity(self, items: Sequence[Item]) -> Optional[str]:
        """What identifies the images of a run beyond :meth:`describe`: nothing (the scenes follow from the
        seed and the items)."""
        return None

    def scenes(self, items: Sequence[Item]) -> list[list[str]]:
        return [synthesize_scene(x, seed=self.seed) for x in items]

    @torch.no_grad()
    def embed(self, model, items: Sequence[Item]) -> Tensor:
        return model.encode_image(scene_input(model, self.scenes(items), seed=self.seed), normalize=False)

    def subjects(self, pairs: Sequence[Pair], prompts: Sequence[Optional[dict]] = ()) -> list[Optional[dict]]:
        """Foil-negated pairs: the toy scene's own subject (the object word after "no"; ``prompts`` are not
        used) and its share of the scene's objects (no binary area here)."""
        from hooked_clip.models.tiny_negation.world import object_of

        out = []
        for p, scene in zip(pairs, self.scenes([p.item for p in pairs])):
            word = re.search(r"\bno\s+([A-Za-z']+)", p.negated, re.I).group(1)
            present = p.negation_in == "foil" and object_of(word) in scene
            out.append({"subject": word, "subject_area": 1.0 / len(scene), "subject_area_binary": None} if present else None)
        return out


class FolderImages:
    """VALSE images (Visual7W) from a folder: ``item.image_file`` under ``root``. ``segmenter``: an optional
    callable (prompt, PIL image) -> (mean area, binary area) such as :func:`clipseg_subject_size`."""

    def __init__(self, root, segmenter: Optional[Callable] = None, batch_size: int = 32):
        self.root = Path(root).expanduser().resolve()  # relative or absolute: the same folder, the same run
        self.segmenter = segmenter
        self.batch_size = batch_size
        if not self.root.is_dir():
            raise FileNotFoundError(f"images folder {self.root} does not exist; pass the folder holding the "
                                    "Visual7W images (v7w_<id>.jpg).")

    def describe(self) -> str:
        parts = [f"images from {self.root}"]
        if self.segmenter is not None:
            parts.append(f"subject size: {getattr(self.segmenter, 'name', 'custom segmenter')}")
        return "; ".join(parts)

    def identity(self, items: Sequence[Item]) -> str:
        """sha256 over the names and bytes of the items' image files: a run is keyed by the images' content,
        so replacing the files under the same folder is a new run, never the old scores."""
        h = hashlib.sha256()
        for name in sorted({x.image_file for x in items}):
            path = self.root / name
            h.update(name.encode())
            h.update(path.read_bytes() if path.is_file() else b"(missing)")
        return h.hexdigest()[:16]

    def check(self, items: Sequence[Item]) -> None:
        missing = [x.image_file for x in items if not (self.root / x.image_file).is_file()]
        if len(missing) == len(items):
            raise FileNotFoundError(f"the images folder {self.root} holds none of the {len(items)} expected files "
                                    f"(e.g. {missing[0]}); pass the folder with the Visual7W images (v7w_<id>.jpg).")
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(items)} image files are missing from {self.root}, e.g. "
                                    f"{missing[:5]}; add them or run with --limit on a subset you have.")

    def open(self, item: Item):
        """The file as PIL opens it (mode kept: the model's preprocessing converts, as its reference does)."""
        from PIL import Image

        path = self.root / item.image_file
        try:
            with Image.open(path) as im:
                im.load()
                return im
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated, damaged or not an image
            raise unreadable(path, "an image", err, f"Replace it with an intact copy of {item.image_file}.") from None

    @torch.no_grad()
    def embed(self, model, items: Sequence[Item]) -> Tensor:
        self.check(items)
        out = []
        for i in range(0, len(items), self.batch_size):
            out.append(model.encode_image([self.open(x) for x in items[i:i + self.batch_size]], normalize=False))
        return torch.cat(out)

    def subjects(self, pairs: Sequence[Pair], prompts: Sequence[Optional[dict]]) -> list[Optional[dict]]:
        """``prompts``: per pair None or {"subject": prompt or None} (the study's, foil-negated pairs only).
        Adds ``subject_area`` (mean sigmoid) and ``subject_area_binary`` (share > 0.25) where there is a
        prompt and a segmenter (None otherwise)."""
        out: list[Optional[dict]] = []
        for p, rec in zip(pairs, prompts):
            if rec is not None:
                rec = {**rec, "subject_area": None, "subject_area_binary": None}
                if rec["subject"] is not None and self.segmenter is not None:
                    rec["subject_area"], rec["subject_area_binary"] = self.segmenter(rec["subject"], self.open(p.item))
            out.append(rec)
        return out


def clipseg_subject_size(model_dir, threshold: float = 0.25) -> Callable:
    """The authors' subject size: CLIPSeg (transformers, local weights such as ``CIDAS/clipseg-rd64-refined``
    saved with ``save_pretrained``) prompted with the subject; returns ``(prompt, image) -> (mean of the
    sigmoid map, share of the map above threshold)``. Grayscale images become 3 equal channels."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    hint = "save CIDAS/clipseg-rd64-refined with save_pretrained (model and processor) where there is network and pass that folder."
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"no CLIPSeg folder at {model_dir}; {hint}")
    try:
        processor = CLIPSegProcessor.from_pretrained(model_dir, local_files_only=True, backend=PIXEL_BACKEND)
        seg = CLIPSegForImageSegmentation.from_pretrained(model_dir, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"could not load CLIPSeg from {model_dir} ({e}); {hint}") from None

    def size(prompt: str, image) -> tuple[float, float]:
        inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            p = torch.sigmoid(seg(**inputs).logits)
        return float(p.mean()), float((p > threshold).float().mean())

    size.name = f"CLIPSeg from {model_dir} (mean sigmoid; share > {threshold})"
    return size


def preprocessing_name(model) -> str:
    """Which pixel pipeline ``model.encode_image`` runs on PIL images (every image tower records it)."""
    vision = getattr(model, "vision", None)
    return "none (no image tower)" if vision is None else vision.preprocessing
