"""Half-precision forward passes on CPU stay close to fp32.

Tolerance: cosine similarity of each text embedding with its fp32 value >= 0.999 (bf16 has an 8-bit
mantissa, ~3e-3 relative error per op; 12 layers accumulate to ~1e-2 relative on each coordinate).
"""

from __future__ import annotations

import pytest
import torch
from conftest import MIXED_TEXTS, hf_clip

from hooked_clip import HookedCLIP


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", ["vitb32", "tiny_eot"])
def test_half_precision_close_to_fp32(dtype, spec):
    hf = hf_clip(spec, with_vision=False)
    ref = HookedCLIP.from_hf(hf, device="cpu")
    half = HookedCLIP.from_hf(hf, device="cpu", dtype=dtype)
    assert half.text.W_E.dtype == dtype
    tokens = ref.to_tokens(MIXED_TEXTS)
    with torch.no_grad():
        a = ref.encode_text(tokens)
        b = half.encode_text(tokens)
    assert b.dtype == dtype
    cos = torch.nn.functional.cosine_similarity(a, b.float(), dim=-1)
    assert cos.min() >= 0.999, f"{dtype}: min cosine to fp32 {cos.min():.5f}"
    assert (a - b.float()).abs().max() <= 0.05
