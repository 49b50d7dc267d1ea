"""`CLIPTextConfig`: every architectural choice of a CLIP text tower, in TransformerLens terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from transformer_lens.config import TransformerLensConfig

ActFn = Literal["quick_gelu", "gelu", "gelu_tanh"]
Pooling = Literal["eot", "argmax", "last"]

_ACT_FNS = ("quick_gelu", "gelu", "gelu_tanh")
_POOLINGS = ("eot", "argmax", "last")
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
class CLIPTextConfig(TransformerLensConfig):
    """Configuration of a CLIP text tower.

    Subclasses TransformerLens's config, so ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
    ``n_ctx``, ``d_vocab``, ``act_fn``, ``eps``, ``device``, ``use_attn_result`` and
    ``use_split_qkv_input`` mean what TL users expect. CLIP-specific fields:

    - ``act_fn``: ``"quick_gelu"`` (OpenAI checkpoints), ``"gelu"`` (exact erf GELU: LAION, most open_clip)
      or ``"gelu_tanh"`` (tanh-approximated GELU, transformers' ``gelu_pytorch_tanh``: transformers'
      SigLIP/SigLIP2, open_clip's SigLIP2).
    - ``pooling``: where the text embedding is read. ``"eot"`` = first position holding ``eot_token_id``
      (HF's newer configs, open_clip ``pool_type="eos"``); ``"argmax"`` = argmax of the token ids (OpenAI,
      open_clip default; for CLIP's vocabulary the same position, since EOT is the largest id);
      ``"last"`` = the last position of the input.
    - ``d_proj``: width of ``text_projection``'s output; ``None`` means no projection (embeddings are the
      pooled ``ln_final`` output). ``proj_bias``: whether the projection has a bias.
    - ``causal``: causal attention mask on (CLIP) or off (bidirectional variants: SigLIP, MobileCLIP-S*,
      CLIPA). A bidirectional tower attends to its padding, so its texts are padded to the context length
      (as its reference pads them); see :attr:`pads_to_context`.
    - ``family``: which reference this tower reproduces (``"clip"``, ``"siglip"``, ``"metaclip_2"``, ...;
      see :mod:`hooked_clip.families`); informative only, the fields above define the computation.
    - ``trim_after_pool``: drop the positions after the batch's last pooling position before running the
      blocks. Applied only where exact (``causal`` and pooling at ``eot``/``argmax``); outputs are
      identical either way, caches then hold the trimmed length.
    - ``use_fused_attn`` (default ``False``): opt in to ``F.scaled_dot_product_attention`` for layers
      with no hook on ``hook_attn_scores``/``hook_pattern``. It differs from the explicit softmax path by
      float rounding (~1e-7), so a cached clean run (pattern hooked) and a patched run (not hooked) would
      no longer be bit-identical; the explicit path is as fast on CPU at CLIP's lengths (measured in
      ``benchmarks/forward.py``), so exactness is the default.
    """

    d_model: int = 512
    d_head: int = 64
    n_layers: int = 12
    n_ctx: int = 77
    n_heads: int = 8
    d_mlp: Optional[int] = 2048
    d_vocab: int = 49408
    act_fn: str = "quick_gelu"
    eps: float = 1e-5
    d_proj: Optional[int] = 512
    proj_bias: bool = False
    pooling: str = "argmax"
    eot_token_id: int = 49407
    sot_token_id: int = 49406
    pad_token_id: int = 0
    family: str = "clip"
    causal: bool = True
    trim_after_pool: bool = True
    use_fused_attn: bool = False
    init_range: float = 0.02
    ln_folded: bool = False  # weight-processing state (hooked_clip.processing), set by those functions
    writing_weights_centered: bool = False
    value_biases_folded: bool = False
    seed: Optional[int] = None
    model_name: str = "custom"
    default_prepend_bos: bool = True
    positional_embedding_type: str = "standard"

    def __post_init__(self):
        self.dtype = resolve_dtype(self.dtype)
        super().__post_init__()
        if self.act_fn not in _ACT_FNS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; use one of {_ACT_FNS}.")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of {_POOLINGS}.")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"n_heads * d_head must equal d_model, got {self.n_heads} * {self.d_head} != {self.d_model}."
            )
        for name in ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.d_proj is not None and self.d_proj <= 0:
            raise ValueError(f"d_proj must be positive or None, got {self.d_proj}.")
        if self.proj_bias and self.d_proj is None:
            raise ValueError("proj_bias=True needs a projection; set d_proj.")

    @property
    def pads_to_context(self) -> bool:
        """Whether texts must be padded to ``n_ctx``: the embedding depends on the padding unless the tower
        is causal and pools at EOT/argmax (then positions after the pooling token are never read)."""
        return not (self.causal and self.pooling in ("eot", "argmax"))

    @property
    def trims(self) -> bool:
        """Whether positions after the last pooling position are dropped (only where that is exact)."""
        return self.trim_after_pool and self.causal and self.pooling in ("eot", "argmax")
