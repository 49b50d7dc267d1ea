"""`CLIPTextConfig`: every architectural choice of a CLIP text tower, in TransformerLens terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hooked_clip.config import TowerConfig

Pooling = Literal["eot", "argmax", "last", "first", "mean"]

_POOLINGS = ("eot", "argmax", "last", "first", "mean")
_POSITION_IDS = ("absolute", "roberta")
_PROJ_ACTS = (None, "tanh")


@dataclass
class CLIPTextConfig(TowerConfig):
    """Configuration of a CLIP text tower.

    Subclasses :class:`~hooked_clip.config.TowerConfig` (TransformerLens's config), so ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
    ``n_ctx``, ``d_vocab``, ``act_fn``, ``eps``, ``device``, ``use_attn_result`` and
    ``use_split_qkv_input`` mean what TL users expect. CLIP-specific fields:

    - ``act_fn``: ``"quick_gelu"`` (OpenAI checkpoints), ``"gelu"`` (exact erf GELU: LAION, most open_clip)
      or ``"gelu_tanh"`` (tanh-approximated GELU, transformers' ``gelu_pytorch_tanh``: transformers'
      SigLIP/SigLIP2, open_clip's SigLIP2).
    - ``pooling``: where the text embedding is read. ``"eot"`` = first position holding ``eot_token_id``
      (HF's newer configs, open_clip ``pool_type="eos"``); ``"argmax"`` = argmax of the token ids (OpenAI,
      open_clip default; for CLIP's vocabulary the same position, since EOT is the largest id);
      ``"last"`` = the last position of the input; ``"first"`` = position 0 (BERT's CLS token: ChineseCLIP,
      AltCLIP); ``"mean"`` = the mean over the non-padding positions (open_clip's ``mean_pooler``), for which
      :meth:`~hooked_clip.text.HookedCLIPText.pool_positions` returns ``None``.
    - ``d_proj``: width of ``text_projection``'s output; ``None`` means no projection (embeddings are the
      pooled ``ln_final`` output). ``proj_bias``: whether the projection has a bias.
    - ``causal``: causal attention mask on (CLIP) or off (bidirectional variants: SigLIP, MobileCLIP-S*,
      CLIPA). A bidirectional tower attends to its padding, so its texts are padded to the context length
      (as its reference pads them); see :attr:`pads_to_context`.
    - ``family``: which reference this tower reproduces (``"clip"``, ``"siglip"``, ``"metaclip_2"``, ...;
      see :mod:`hooked_clip.loaders.families`); informative only, the fields above define the computation.
    - ``trim_after_pool``: drop the positions after the batch's last pooling position before running the
      blocks. Applied only where exact (``causal`` and pooling at ``eot``/``argmax``); outputs are
      identical either way, caches then hold the trimmed length.
    - ``ln_position``: ``"pre"`` (CLIP's blocks: LayerNorm before attention and MLP,
      :class:`~hooked_clip.components.TransformerBlock`) or ``"post"`` (BERT/RoBERTa: LayerNorm after each
      residual sum, :class:`~hooked_clip.components.PostLNBlock`).
    - BERT-style embeddings: ``n_token_types`` (> 0: a token-type embedding ``token_type_embed.W_token_type``
      of that many rows, of which row 0 is added, as the references do without ``token_type_ids``);
      ``ln_embed`` (a LayerNorm ``ln_embed`` on the summed embeddings); ``position_ids``: ``"absolute"``
      (position i reads row i) or ``"roberta"`` (RoBERTa/XLM-R: non-padding tokens read rows
      ``pad_token_id + 1 + (count of non-padding tokens up to them)``, padding reads row ``pad_token_id``).
    - ``mask_padding``: attention never reads keys holding ``pad_token_id`` (the references' attention mask
      from their tokenizer), so a text's embedding does not depend on its padding. Only with
      ``ln_position="post"``. The mask comes from the token ids: a run started from a residual stream
      (``start_at_layer``) needs ``tokens=...`` to mask, and blocks called directly need ``key_mask=``.
    - ``final_ln``: whether ``ln_final`` exists (``False`` for BERT towers whose last block ends in a
      LayerNorm, e.g. ChineseCLIP; AltCLIP's ``pre_LN`` is its ``ln_final``).
    - ``proj_act``: ``None`` or ``"tanh"``, applied after the projection (BERT's pooler: tanh(W x + b)).
    - ``d_proj_hidden``: ``None`` (the projection is one linear map ``W_proj``) or the width of an MLP
      projection (open_clip's ``hf_proj_type="mlp"``): ``W_proj_in`` [d_model, d_proj_hidden], exact GELU
      (``hook_proj_hidden``), then ``W_proj`` [d_proj_hidden, d_proj]; no bias before the GELU.
    - ``append_cls``: a learned embedding ``W_cls`` [d_model] appended after the tokens (``hook_cls_embed``;
      open_clip's CoCa): the residual stream has one position more than the ids, ``n_ctx`` counts it, and
      ``pooling="last"`` reads it. ``pad_mask_shift``: 1 for the legacy CoCa mask open_clip keeps for existing
      CoCa weights (the key mask shifted right by one: key 0 always read, key j read where id j-1 is not
      padding), 0 for the plain one.
    - ``use_fused_attn`` (default ``False``): opt in to ``F.scaled_dot_product_attention`` for layers
      with no hook on ``hook_attn_scores``/``hook_pattern``. It differs from the explicit softmax path by
      float rounding (~1e-7), so a cached clean run (pattern hooked) and a patched run (not hooked) would
      no longer be bit-identical; the explicit path is as fast on CPU at CLIP's lengths (measured in
      ``benchmarks/forward.py``), so exactness is the default.
    """

    # the shared fields (widths, depth, heads, act_fn, eps, ...) and their defaults (CLIP ViT-B/32's text
    # tower) are TowerConfig's; only causal differs
    d_vocab: int = 49408
    d_proj: Optional[int] = 512
    proj_bias: bool = False
    pooling: str = "argmax"
    eot_token_id: int = 49407
    sot_token_id: int = 49406
    pad_token_id: int = 0
    family: str = "clip"
    causal: bool = True
    trim_after_pool: bool = True
    n_token_types: int = 0
    ln_embed: bool = False
    position_ids: str = "absolute"
    mask_padding: bool = False
    final_ln: bool = True
    proj_act: Optional[str] = None
    d_proj_hidden: Optional[int] = None
    append_cls: bool = False
    pad_mask_shift: int = 0
    ln_folded: bool = False  # weight-processing state (hooked_clip.weight_processing), set by those functions
    writing_weights_centered: bool = False
    value_biases_folded: bool = False
    default_prepend_bos: bool = True
    positional_embedding_type: str = "standard"

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of {_POOLINGS}.")
        if self.d_vocab <= 0:
            raise ValueError(f"d_vocab must be positive, got {self.d_vocab}.")
        if self.d_proj is not None and self.d_proj <= 0:
            raise ValueError(f"d_proj must be positive or None, got {self.d_proj}.")
        if self.proj_bias and self.d_proj is None:
            raise ValueError("proj_bias=True needs a projection; set d_proj.")
        if self.position_ids not in _POSITION_IDS:
            raise ValueError(f"position_ids={self.position_ids!r} is not supported; use one of {_POSITION_IDS}.")
        if self.proj_act not in _PROJ_ACTS:
            raise ValueError(f"proj_act={self.proj_act!r} is not supported; use one of {_PROJ_ACTS}.")
        if self.proj_act is not None and self.d_proj is None:
            raise ValueError(f"proj_act={self.proj_act!r} needs a projection; set d_proj.")
        if self.d_proj_hidden is not None and (isinstance(self.d_proj_hidden, bool) or not isinstance(self.d_proj_hidden, int)
                                               or self.d_proj_hidden <= 0 or self.d_proj is None):
            raise ValueError(f"d_proj_hidden must be None or a positive int with d_proj set, got "
                             f"d_proj_hidden={self.d_proj_hidden!r}, d_proj={self.d_proj!r}.")
        if isinstance(self.n_token_types, bool) or not isinstance(self.n_token_types, int) or self.n_token_types < 0:
            raise ValueError(f"n_token_types must be an int >= 0 (0: no token-type embedding), got {self.n_token_types!r}.")
        for name in ("ln_embed", "mask_padding", "final_ln"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}.")
        if self.append_cls and self.pooling != "last":
            raise ValueError("append_cls=True appends the embedding the tower reads at the end: set pooling='last'.")
        if self.pad_mask_shift not in (0, 1) or (self.pad_mask_shift and not (self.append_cls and self.mask_padding)):
            raise ValueError(f"pad_mask_shift must be 0, or 1 (open_clip's legacy CoCa mask) with append_cls and "
                             f"mask_padding, got {self.pad_mask_shift!r}.")
        if self.position_ids == "roberta" and self.causal:
            raise ValueError("position_ids='roberta' describes bidirectional towers; "
                             "set causal=False.")
        if self.position_ids == "roberta" and not 0 <= self.pad_token_id < self.n_ctx - 1:
            raise ValueError(f"position_ids='roberta' reads rows pad_token_id + 1 .., so pad_token_id "
                             f"({self.pad_token_id}) must lie in [0, n_ctx - 1 = {self.n_ctx - 1}).")

    @property
    def pads_to_context(self) -> bool:
        """Whether texts must be padded to ``n_ctx``: the embedding depends on the padding unless the tower
        is causal and pools at EOT/argmax (then positions after the pooling token are never read) or masks
        its padding (``mask_padding``) and does not pool at the last position."""
        if self.mask_padding and self.pooling != "last":
            return False
        return not (self.causal and self.pooling in ("eot", "argmax"))

    def describe(self) -> dict[str, str]:
        """The family, pooling and padding in words (reports name them): what a reader needs to place a
        tower's numbers next to CLIP's."""
        pooling = {"eot": f"at the first end token (id {self.eot_token_id})",
                   "argmax": "at the largest token id (CLIP's end token)",
                   "last": "at the last position of the padded input", "first": "at the first token (CLS / <s>)",
                   "mean": "the mean over the non-padding tokens"}[self.pooling]
        if self.mask_padding:
            padding = f"padded to the batch's longest text; attention never reads the padding (id {self.pad_token_id})"
        elif self.pads_to_context:
            padding = f"padded to the context length ({self.n_ctx}); the tower reads the padding, as it was trained"
        else:
            padding = "padded to the batch's longest text; the causal tower never reads positions after the pooled one"
        return {"family": self.family, "pooling": f"{self.pooling}: {pooling}", "padding": padding,
                "attention": "causal" if self.causal else "bidirectional",
                "blocks": f"{self.ln_position}-LN, {self.n_layers} x {self.n_heads} heads"}

    @property
    def max_text_tokens(self) -> int:
        """Most tokens a text may have: ``n_ctx``, less ``pad_token_id + 1`` with RoBERTa position ids (their
        rows start after the padding row: XLM-R's 514 rows hold 512 tokens)."""
        if self.position_ids == "roberta":
            return self.n_ctx - self.pad_token_id - 1
        return self.n_ctx - int(self.append_cls)

    @property
    def trims(self) -> bool:
        """Whether positions after the last pooling position are dropped (only where that is exact)."""
        return self.trim_after_pool and self.causal and self.pooling in ("eot", "argmax")
