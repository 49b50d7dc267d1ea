"""Quick start: hook, cache and patch CLIP's text tower, fully offline.

This builds a small random CLIP with transformers (no download) and loads it exactly as a real checkpoint
would be loaded. With network access, swap in ``HookedCLIP.from_pretrained("openai/clip-vit-base-patch32")``;
for a trained model offline, ``load_model("tiny-negation")`` (see docs/tutorials/).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import CLIPConfig, CLIPModel

from hooked_clip import HookedCLIP


def small_random_clip() -> CLIPModel:
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                           image_size=64, patch_size=16),
        projection_dim=64,
    )
    return CLIPModel(cfg).eval()


def main() -> None:
    torch.set_grad_enabled(False)
    model = HookedCLIP.from_hf(small_random_clip(), device="cpu")
    neg, aff = "There are no cats in the picture.", "There are some cats in the picture."
    print("string tokens:", model.to_str_tokens(neg))

    tokens = model.to_tokens([neg, aff])  # [2, pos]
    embeds, cache = model.run_with_cache(tokens, return_type="normalized")
    print("text embeddings:", tuple(embeds.shape), "| cached activations:", len(cache.cache_dict))
    print("resid_pre of block 2:", tuple(cache["resid_pre", 2].shape), "(trimmed after EOT)")

    image = model.encode_image(torch.randn(1, 3, 64, 64))
    print("similarity (logit_scale * cos):", model.similarity(embeds, image).flatten().tolist())

    # Patch the negator's residual from the negated run into the affirmative run, at block 2.
    negator = model.to_str_tokens(neg).index("no")

    def patch(resid, hook):
        resid = resid.clone()
        resid[1, negator] = cache[hook.name][0, negator]
        return resid

    patched = model.run_with_hooks(tokens, return_type="normalized",
                                   fwd_hooks=[("blocks.2.hook_resid_pre", patch)])
    print("cosine(patched affirmative, negated):",
          round(float(torch.nn.functional.cosine_similarity(patched[1], embeds[0], dim=0)), 4),
          "vs unpatched:", round(float(torch.nn.functional.cosine_similarity(embeds[1], embeds[0], dim=0)), 4))


if __name__ == "__main__":
    main()
