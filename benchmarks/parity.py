"""Parity report: max |ours - reference| on final text embeddings and on every block's residual output,
for each config of the parity suite, against HF transformers and open_clip (random weights, fp32).

Reuses the reference-model builders of the test suite. Run: ``python benchmarks/parity.py``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch
from conftest import MIXED_TEXTS, SPECS, hf_clip, open_clip_model  # noqa: E402
from hooked_clip.parity import capture_block_outputs  # noqa: E402

from hooked_clip import HookedCLIP  # noqa: E402


def report(name: str, model: HookedCLIP, tokens, ref_embeds, ref_blocks) -> None:
    for trim in (True, False):
        names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
        with torch.no_grad():
            emb, cache = model.run_with_cache(tokens, names_filter=names, trim=trim)
        n = cache[names[0]].shape[1]
        e_emb = (emb - ref_embeds).abs().max().item()
        e_res = max((cache[names[l]] - r[:, :n]).abs().max().item() for l, r in enumerate(ref_blocks))
        print(f"{name:28s} trim={'on ' if trim else 'off'}  embeds {e_emb:.2e}  resid_post (all blocks) {e_res:.2e}")


def main() -> None:
    torch.set_grad_enabled(False)
    for spec in SPECS:
        hf = hf_clip(spec, with_vision=False)
        model = HookedCLIP.from_hf(hf, device="cpu")
        tokens = model.to_tokens(MIXED_TEXTS, padding="max_length")
        out, blocks = capture_block_outputs(hf.text_model.encoder.layers, lambda: hf(input_ids=tokens))
        report(f"HF        {spec}", model, tokens, out.text_embeds, blocks)
        oc = open_clip_model(spec)
        model = HookedCLIP.from_open_clip(oc, device="cpu")
        out, blocks = capture_block_outputs(oc.transformer.resblocks, lambda: oc.encode_text(tokens))
        report(f"open_clip {spec}", model, tokens, out, blocks)


if __name__ == "__main__":
    main()
