"""`TowerConfig`: the fields and checks every hooked tower shares (TransformerLens's names), and
:func:`resolve_dtype`. :class:`~hooked_clip.text.CLIPTextConfig` and :class:`~hooked_clip.vision.CLIPVisionConfig`
subclass it; the components (:mod:`hooked_clip.components`) are typed against it and read nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from transformer_lens.config import TransformerLensConfig

ACT_FNS = ("quick_gelu", "gelu", "gelu_tanh")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64, "double": torch.float64}


def resolve_dtype(dtype: Union[torch.dtype, str]) -> torch.dtype:
    """A floating ``torch.dtype`` from a dtype or its name (``"float16"``, ``"torch.bfloat16"``, ``"fp32"``)."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(
        f"dtype must be a floating-point torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}."
    )


@dataclass
class TowerConfig(TransformerLensConfig):
    """What every tower's blocks read: widths, depth, heads, activation (``quick_gelu``, ``gelu`` or
    ``gelu_tanh``), LayerNorm ``eps``, the causal mask, where the LayerNorms sit (``ln_position``: ``"pre"``,
    CLIP's blocks; ``"post"``, BERT's), ``use_fused_attn`` and the random init (``init_range``, ``seed``)."""

    d_model: int = 512
    d_head: int = 64
    n_layers: int = 12
    n_ctx: int = 77
    n_heads: int = 8
    d_mlp: Optional[int] = 2048
    act_fn: str = "quick_gelu"
    eps: float = 1e-5
    causal: bool = False
    ln_position: str = "pre"
    use_fused_attn: bool = False
    init_range: float = 0.02
    seed: Optional[int] = None
    model_name: str = "custom"

    def __post_init__(self):
        self.dtype = resolve_dtype(self.dtype)
        super().__post_init__()
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; use one of {ACT_FNS}.")
        if self.ln_position not in ("pre", "post"):
            raise ValueError(f"ln_position={self.ln_position!r} is not supported; use one of ('pre', 'post').")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"n_heads * d_head must equal d_model, got {self.n_heads} * {self.d_head} != {self.d_model}."
            )
        for name in ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
