"""`HookedCLIPVision`: a ViT image tower (CLIP, SigLIP, open_clip) as a TransformerLens ``HookedRootModule``,
built from the same components as the text tower (bidirectional attention).

    pixels -> hook_patch_embed (+ hook_cls_embed at position 0) + hook_pos_embed -> (ln_pre)
      -> blocks[0..L-1] -> pooling -> hook_pooled -> projection -> hook_image_embed
      -> (L2 normalise) -> hook_image_embed_normalized

Pooling (``cfg.pooling``): ``"cls"`` reads position 0 of ``ln_post``'s output; ``"avg"`` averages the patch
positions (before or after ``ln_post``: ``cfg.final_ln_after_pool``); ``"attn"`` runs ``ln_post`` on every
position and then SigLIP's attention-pooling head (``head.*``).

Hook names (TransformerLens / ViT-Prisma style; positions: 0 = class token when ``cfg.class_token``, then
the patches row by row)::

    hook_patch_embed [batch, patch, d_model]   hook_pos_embed [batch, pos, d_model]
    hook_cls_embed [batch, 1, d_model]                              (when cfg.class_token)
    ln_pre.hook_scale, ln_pre.hook_normalized                       (when cfg.ln_pre)
    blocks.{l}.hook_resid_pre / hook_resid_mid / hook_resid_post    [batch, pos, d_model]
    blocks.{l}.ln1.*, ln2.*, attn.hook_q/k/v/z, attn.hook_attn_scores/hook_pattern, attn.hook_result (opt-in)
    blocks.{l}.hook_attn_out, blocks.{l}.hook_mlp_out, blocks.{l}.mlp.hook_pre / hook_post
    ln_post.hook_scale, ln_post.hook_normalized   [batch, pos, ...] ([batch, ...] with final_ln_after_pool)
    head.attn.hook_pattern [batch, head, 1, pos], head.hook_attn_out, head.hook_mlp_out, head.hook_out  (pooling="attn")
    hook_pooled [batch, d_model], hook_image_embed [batch, d_proj], hook_image_embed_normalized [batch, d_proj]
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.config import resolve_dtype
from hooked_clip.devices import resolve_device
from hooked_clip.components import AttentionPool, KeyValuePrefix, LayerNorm, PatchEmbed, PosEmbed, TransformerBlock
from hooked_clip.errors import UnsupportedImageTower
from hooked_clip.hook_points import CheckedHookPoint
from hooked_clip.loaders.checkpoint import ReferenceVision, VisionCheckpoint
from hooked_clip.loaders.convert import load_converted
from hooked_clip.tower import HookedTower
from hooked_clip.vision.config import CLIPVisionConfig
from hooked_clip.vision.pixels import as_pixels

ReturnType = Literal["normalized", "embed", "pooled", None]
_RETURN_TYPES = ("normalized", "embed", "pooled", None)


class HookedCLIPVision(HookedTower):
    """A ViT image tower with a checked ``HookPoint`` on every activation; implements the
    :class:`~hooked_clip.tower.Tower` contract (``name = "vision"``).

    ``forward(pixels)`` returns the projected image embedding [batch, d_proj] (``return_type="embed"``,
    unnormalised, like HF's ``image_embeds`` and open_clip's ``encode_image``), ``"normalized"``,
    ``"pooled"`` [batch, d_model] or ``None``. ``preprocess`` is the checkpoint's own image pipeline (PIL
    images -> pixels); :meth:`encode` applies it to non-tensor input.
    """

    name = "vision"
    input_embed_hook = "hook_patch_embed"  # the input's own embedding (what integrated gradients interpolate)

    def __init__(self, cfg: CLIPVisionConfig, preprocess: Optional[Callable[[list], Tensor]] = None):
        super().__init__()
        self.cfg = cfg
        self.preprocess = preprocess
        self.preprocessing = "custom" if preprocess is not None else "none (pixel tensors only)"  # set by the loaders
        self.embed = PatchEmbed(cfg)
        self.hook_patch_embed = CheckedHookPoint()  # [batch, patch, d_model]
        self.W_cls = nn.Parameter(torch.empty(cfg.d_model, dtype=cfg.dtype)) if cfg.class_token else None
        self.hook_cls_embed = CheckedHookPoint() if cfg.class_token else None  # [batch, 1, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = CheckedHookPoint()  # [batch, pos, d_model]
        self.ln_pre = LayerNorm(cfg) if cfg.ln_pre else None
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_post = LayerNorm(cfg)
        self.head = AttentionPool(cfg) if cfg.pooling == "attn" else None
        if cfg.d_proj is not None:
            self.W_proj = nn.Parameter(torch.empty(cfg.d_model, cfg.d_proj, dtype=cfg.dtype))
            self.b_proj = nn.Parameter(torch.zeros(cfg.d_proj, dtype=cfg.dtype)) if cfg.proj_bias else None
        else:
            self.W_proj, self.b_proj = None, None
        self.hook_pooled = CheckedHookPoint()  # [batch, d_model]
        self.hook_image_embed = CheckedHookPoint()  # [batch, d_proj]
        self.hook_image_embed_normalized = CheckedHookPoint()  # [batch, d_proj]
        self.init_weights()
        self.setup()
        self.to(cfg.device)
        self.eval()

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input: Float[Tensor, "batch channel height width"] | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "embed",
        *,
        start_at_layer: Optional[int] = None,
        stop_at_layer: Optional[int] = None,
    ) -> Optional[Tensor]:
        """Run the tower on preprocessed pixels [batch, channel, H, W], or (with ``start_at_layer``) on the
        residual stream [batch, pos, d_model] entering that block. With ``stop_at_layer`` the residual
        entering that block is returned (as in TransformerLens)."""
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}.")
        self.check_layer_range(start_at_layer, stop_at_layer)
        if start_at_layer is None:
            resid = self.embed_pixels(self._check_pixels(input))
        else:
            resid = self._check_resid(input)
        resid = self.run_blocks(resid, start_at_layer or 0, stop_at_layer)
        if stop_at_layer is not None:
            return resid
        return self.read_out(resid, None, return_type)

    def read_out(self, resid: Float[Tensor, "batch pos d_model"], pool: Optional[Int[Tensor, " batch"]] = None,
                 return_type: ReturnType = "embed", key_mask: Optional[Tensor] = None) -> Optional[Tensor]:
        """The final residual stream -> pooling (with ``ln_post``; ``hook_pooled``) -> projection
        (``hook_image_embed``) -> L2 normalisation (``hook_image_embed_normalized``), up to ``return_type``.
        ``pool`` [batch] (class-token pooling only): the position of ``resid`` that holds the class token,
        where it is not position 0 (the text tower's ``read_out`` has the same signature; ``key_mask`` must be
        None: an image has no padding)."""
        if key_mask is not None:
            raise ValueError("the image tower has no padding to mask (every patch is real): pass key_mask=None.")
        if pool is not None:
            if self.cfg.pooling != "cls":
                raise ValueError(f"pool positions are meaningless for pooling={self.cfg.pooling!r} (it reads every position).")
            resid = resid[torch.arange(resid.shape[0], device=resid.device), pool].unsqueeze(1)
        pooled = self.hook_pooled(self.pool(resid))
        if return_type == "pooled":
            return pooled
        embed = pooled
        if self.W_proj is not None:
            embed = pooled @ self.W_proj
            if self.b_proj is not None:
                embed = embed + self.b_proj
        embed = self.hook_image_embed(embed)
        if return_type == "embed":
            return embed
        normalized = self.hook_image_embed_normalized(F.normalize(embed, dim=-1))
        return normalized if return_type == "normalized" else None

    def run_blocks(self, resid: Float[Tensor, "batch pos d_model"], start: int = 0, stop: Optional[int] = None,
                   prefix: Optional[Sequence[KeyValuePrefix]] = None,
                   key_mask: Optional[Tensor] = None) -> Float[Tensor, "batch pos d_model"]:
        """Blocks ``start`` .. ``stop - 1`` on the residual stream (the :class:`~hooked_clip.tower.Tower`
        contract). Every image position is real (no padding) and attention is bidirectional, so ``key_mask``
        must be None and ``prefix`` (a causal tower's key/value reuse) is refused."""
        if prefix is not None:
            raise ValueError("a key/value prefix needs a causal tower; the image tower attends bidirectionally.")
        if key_mask is not None:
            raise ValueError("the image tower has no padding to mask (every patch is real): pass key_mask=None.")
        for block in self.blocks[start:stop]:
            resid = block(resid)
        return resid

    def input_lengths(self, pixels: Tensor) -> None:
        """Positions of each row that hold input: all of them (the :class:`~hooked_clip.tower.Tower` contract)."""
        return None

    def key_mask(self, pixels: Tensor) -> None:
        """Keys attention may not read: none (the :class:`~hooked_clip.tower.Tower` contract)."""
        return None

    def pool_positions(self, pixels: Float[Tensor, "batch channel height width"]) -> Optional[Int[Tensor, " batch"]]:
        """The one position whose final residual becomes each row's pooled vector (class-token pooling: 0),
        or None when pooling reads every position (average or attention pooling)."""
        if self.cfg.pooling != "cls":
            return None
        return torch.zeros(pixels.shape[0], dtype=torch.long, device=pixels.device)

    def embed_pixels(self, pixels: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: patches (+ class token) + positions (-> ln_pre)."""
        x = self.hook_patch_embed(self.embed(pixels))
        if self.W_cls is not None:
            cls = self.hook_cls_embed(self.W_cls.view(1, 1, -1).expand(x.shape[0], 1, -1))
            x = torch.cat([cls, x], dim=1)
        x = x + self.hook_pos_embed(self.pos_embed(x.shape[0], x.shape[1]))
        return self.ln_pre(x) if self.ln_pre is not None else x

    def pool(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        """The final residual stream -> the pooled vector (``cfg.pooling``, with ``ln_post``)."""
        if self.head is not None:
            return self.head(self.ln_post(resid))
        if self.cfg.final_ln_after_pool:
            return self.ln_post(self.global_pool(resid))
        return self.global_pool(self.ln_post(resid))

    def global_pool(self, x: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "batch *rest"]:
        """Position 0 (``"cls"``) or the mean over the patch positions (``"avg"``)."""
        if self.cfg.pooling == "cls":
            return x[:, 0]
        return x[:, self.cfg.first_patch:].mean(dim=1)

    # ------------------------------------------------------------------------------------- positions
    def position_labels(self) -> list[str]:
        """One label per position: ``"CLS"`` (with a class token), then ``"r{row}c{col}"`` per patch."""
        g = self.cfg.grid_size
        return ["CLS"] * self.cfg.first_patch + [f"r{r}c{c}" for r in range(g) for c in range(g)]

    def to_patch_grid(self, x: Float[Tensor, "... pos"]) -> Float[Tensor, "... grid grid"]:
        """Values per position (last axis, all ``n_ctx`` positions) -> the patches' values laid out as the
        image [..., grid, grid] (the class token dropped)."""
        if x.shape[-1] != self.cfg.n_ctx:
            raise ValueError(f"the last axis must hold the {self.cfg.n_ctx} positions, got {x.shape[-1]}.")
        g = self.cfg.grid_size
        return x[..., self.cfg.first_patch:].reshape(*x.shape[:-1], g, g)

    # ---------------------------------------------------------------------------------------- inputs
    def as_input(self, images: Any) -> Float[Tensor, "batch channel height width"]:
        """The :class:`~hooked_clip.tower.Tower` contract's input: :meth:`as_pixels`."""
        return self.as_pixels(images)

    def embed_input(self, pixels: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The :class:`~hooked_clip.tower.Tower` contract's embedding: :meth:`embed_pixels`."""
        return self.embed_pixels(pixels)

    def as_pixels(self, images: Any) -> Float[Tensor, "batch channel height width"]:
        """Checked pixels on the model's device from PIL images (through ``preprocess``) or a pixel tensor."""
        return self._check_pixels(as_pixels(images, self.preprocess, self.cfg.image_size, self.cfg.n_channels))

    def encode(self, images: Any, normalize: bool = False) -> Float[Tensor, "batch d_proj"]:
        """Image embeddings from PIL images or preprocessed pixels (``ReferenceVisionTower.encode``'s contract)."""
        return self(self.as_pixels(images), return_type="normalized" if normalize else "embed")

    def _check_pixels(self, pixels: Any) -> Tensor:
        if not isinstance(pixels, Tensor):
            raise TypeError("the tower's forward takes preprocessed pixels [batch, channel, H, W]; for PIL images "
                            "use tower.encode(images) or tower(tower.as_pixels(images)).")
        pixels = as_pixels(pixels, None, self.cfg.image_size, self.cfg.n_channels)
        return pixels.to(device=self.embed.W_patch.device, dtype=self.embed.W_patch.dtype)

    def _check_resid(self, resid: Any) -> Tensor:
        if not isinstance(resid, Tensor) or not resid.dtype.is_floating_point:
            raise TypeError("with start_at_layer, input must be a float residual stream [batch, pos, d_model].")
        if resid.ndim != 3 or resid.shape[1:] != (self.cfg.n_ctx, self.cfg.d_model):
            raise ValueError(
                f"with start_at_layer, input must be [batch, pos={self.cfg.n_ctx}, d_model={self.cfg.d_model}], "
                f"got {tuple(resid.shape)}."
            )
        return resid

    # ------------------------------------------------------------------------------------------ loaders
    @classmethod
    def from_checkpoint(cls, checkpoint: VisionCheckpoint) -> "HookedCLIPVision":
        """The tower of what a loader read (:class:`~hooked_clip.loaders.checkpoint.VisionCheckpoint`)."""
        tower = cls(checkpoint.cfg, checkpoint.preprocess)
        load_converted(tower, checkpoint.state_dict)
        tower.preprocessing = checkpoint.preprocessing
        return tower

    @classmethod
    def from_hf(cls, hf_model: nn.Module, image_processor: Any = None, device: Optional[str] = None,
                dtype: torch.dtype = torch.float32, **cfg_overrides) -> "HookedCLIPVision":
        """From a transformers ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPVisionModel``,
        ``SiglipModel`` or ``SiglipVisionModel`` (the image tower and its projection); preprocessing is
        ``image_processor`` or the family's default processor at the model's image size. ``device=None``
        picks CUDA when available, else the CPU (:func:`hooked_clip.devices.resolve_device`);
        ``cfg_overrides`` set config fields such as ``use_attn_result``. A tower it does not reimplement is an
        :class:`~hooked_clip.errors.UnsupportedImageTower` naming the reason."""
        from hooked_clip.loaders.hf_vision import read_hf_vision

        return cls._from_read(read_hf_vision(hf_model, image_processor, device=resolve_device(device),
                                             dtype=resolve_dtype(dtype), **cfg_overrides))

    @classmethod
    def from_open_clip(cls, model: nn.Module, preprocess: Optional[Callable[[list], Tensor]] = None,
                       device: Optional[str] = None, dtype: torch.dtype = torch.float32,
                       **cfg_overrides) -> "HookedCLIPVision":
        """From an open_clip model (``CLIP``/``CustomTextCLIP``) or its ``visual`` ``VisionTransformer``.
        Unsupported variants (non-ViT towers, layer scale, custom attention blocks, CoCa's attentional
        pooler) raise :class:`~hooked_clip.errors.UnsupportedImageTower` naming the reason.
        ``device=None``: CUDA when available, else the CPU (:func:`hooked_clip.devices.resolve_device`)."""
        from hooked_clip.loaders.open_clip_vision import read_open_clip_vision

        return cls._from_read(read_open_clip_vision(model, preprocess=preprocess, device=resolve_device(device),
                                                    dtype=resolve_dtype(dtype), **cfg_overrides))

    @classmethod
    def _from_read(cls, read) -> "HookedCLIPVision":
        if isinstance(read, ReferenceVision):
            raise UnsupportedImageTower(read.reason)
        return cls.from_checkpoint(read)
