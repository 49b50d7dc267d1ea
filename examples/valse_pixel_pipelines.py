"""How far d moves between pixel pipelines, on a random ViT-B/32-sized CLIP (no download, ~1 min on 2 CPUs).

The study feeds each VALSE image to the model's own preprocessing: transformers' CLIP image processor on its PIL
backend for a model loaded from HF (equal to the authors' CLIPProcessor of transformers 4,
tests/acceptance/test_valse_study.py), open_clip's
preprocess for a model loaded from open_clip. This script scores 70 VALSE items with synthetic JPEG/PNG
images (modes RGB, L, CMYK, RGBA, P; several sizes) through three pipelines and prints max |Δd| against the
one the study uses for HF models:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python examples/valse_pixel_pipelines.py
"""

import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from hooked_clip import HookedCLIP
from hooked_clip.analyses.valse_negation.data import load_items
from hooked_clip.analyses.valse_negation.study import select_items


def d_of(model, e_c, e_f, img):
    """d = S(caption, image) - S(foil, image), the model's own similarity."""
    return model.paired_similarity(e_c, img) - model.paired_similarity(e_f, img)


MODES = [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG")]
SIZES = [(50, 70), (300, 200), (64, 64), (17, 90), (640, 480)]

torch.manual_seed(0)
hf = CLIPModel(CLIPConfig())  # ViT-B/32-sized, random weights
with torch.no_grad():
    hf.logit_scale.fill_(float(np.log(100.0)))  # logits = 100 x cosine, as OpenAI's checkpoint
model = HookedCLIP.from_hf(hf, device="cpu")
items = select_items(load_items(), 70)
folder = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
for k, x in enumerate(items):
    mode, fmt = MODES[k % len(MODES)]
    w, h = SIZES[k % len(SIZES)]
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    im = rgba if mode == "RGBA" else rgba.convert("RGB").convert("P", palette=Image.ADAPTIVE) if mode == "P" else rgba.convert(mode)
    if mode == "P":
        im.info["transparency"] = 0
    im.save(folder / x.image_file, format=fmt)
images = [Image.open(folder / x.image_file) for x in items]
modes = np.array([im.mode for im in images])
pipelines = {
    "CLIPImageProcessorPil (PIL backend, as transformers 4.x; what the study uses)":
        lambda: CLIPImageProcessorPil()(images=images, return_tensors="pt")["pixel_values"],
    "CLIPImageProcessor (transformers 5's default, torchvision backend)":
        lambda: CLIPImageProcessor()(images=images, return_tensors="pt")["pixel_values"],
    "open_clip preprocess": lambda: torch.stack([open_clip.image_transform(224, is_train=False)(im) for im in images]),
}
with torch.no_grad():
    e_c, e_f = model.encode_text([x.caption for x in items]), model.encode_text([x.foil for x in items])
    d = {name: d_of(model, e_c, e_f, model.encode_image(f(), normalize=False)) for name, f in pipelines.items()}
base = next(iter(d))
print(f"d over {len(items)} items: {float(d[base].min()):.2f} .. {float(d[base].max()):.2f} logits")
for name in list(d)[1:]:
    gap = (d[name] - d[base]).abs().numpy()
    opaque = np.isin(modes, ["RGB", "L", "CMYK"])
    print(f"{name}: max |Δd| {gap.max():.4f} logits (median {np.median(gap):.5f}); "
          f"opaque files (RGB, L, CMYK) {gap[opaque].max():.4f}, transparent (RGBA, P) {gap[~opaque].max():.4f}")
