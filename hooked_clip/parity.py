"""Parity against a reference implementation: the check every model family must pass (fp32, ≤1e-5).

Used by the test suite, ``benchmarks/support.py`` (the support table) and tutorial 6 (adding a family)::

    ref_embeds, ref_blocks = capture_block_outputs(hf.text_model.encoder.layers, lambda: hf.get_text_features(tokens))
    errors = parity_errors(model.text, tokens, ref_embeds, ref_blocks)   # {"blocks": ..., "output": ...}
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn


def capture_block_outputs(blocks: Sequence[nn.Module], run: Callable[[], object]) -> tuple[object, list[Tensor]]:
    """Run ``run()`` with forward hooks on each reference block; returns (its result, [block outputs])."""
    outs: list[Tensor] = []

    def hook(_module, _inp, out):
        outs.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in handles:
            h.remove()
    return result, outs


def parity_errors(text: nn.Module, tokens: Tensor, ref_embeds: Tensor, ref_blocks: Sequence[Tensor],
                  trim: bool = False) -> dict[str, float]:
    """Max |ours - reference| of the unnormalised text embeddings (``"output"``) and of every block's
    residual output (``"blocks"``, over positions both computed) for a ``HookedCLIPText``."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(text.cfg.n_layers)]
    if len(ref_blocks) != len(names):
        raise ValueError(f"the reference ran {len(ref_blocks)} blocks, ours has {len(names)}.")
    with torch.no_grad():
        emb, cache = text.run_with_cache(tokens, names_filter=names, trim=trim, return_type="embed")
    n_pos = cache[names[0]].shape[1]
    blocks = max((cache[n] - r[:, :n_pos].to(cache[n].dtype)).abs().max().item() for n, r in zip(names, ref_blocks))
    return {"blocks": blocks, "output": (emb - ref_embeds.to(emb.dtype)).abs().max().item()}
