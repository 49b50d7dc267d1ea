"""`HookedCLIPText`: CLIP's text tower as a TransformerLens ``HookedRootModule``.

    tokens -> hook_embed + hook_pos_embed -> blocks[0..L-1] -> ln_final -> hook_pooled (at the pooling
    position) -> text_projection -> hook_text_embed -> (L2 normalise) -> hook_text_embed_normalized

BERT/RoBERTa towers (``cfg.ln_position == "post"``: ChineseCLIP, AltCLIP) add, by config,
``hook_token_type_embed`` (to the sum) and ``ln_embed`` (``ln_embed.hook_scale``/``ln_embed.hook_normalized``,
whose output enters block 0), use :class:`~hooked_clip.components.PostLNBlock` blocks, mask attention to
padding (``cfg.mask_padding``), and may have no ``ln_final`` (``cfg.final_ln``), pool at the first token or
the mean, and apply ``tanh`` after the projection (``cfg.proj_act``).

Every activation passes through a ``HookPoint`` with TransformerLens's name, so ``run_with_hooks``,
``run_with_cache``, ``hooks()``, ``utils.get_act_name`` and ``transformer_lens.patching`` work unchanged.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.components import (Embed, KeyValuePrefix, LayerNorm, PosEmbed, PostLNBlock, TokenTypeEmbed,
                                    TransformerBlock)
from hooked_clip.hook_points import CheckedHookPoint
from hooked_clip.text.config import CLIPTextConfig
from hooked_clip.text.pooling import mean_over_positions, pool_positions
from hooked_clip.tokenizers.base import Padding, Text, TextTokenizer, padding_for
from hooked_clip.tokenizers.rules import default_tokenizer
from hooked_clip.tower import HookedTower

ReturnType = Literal["normalized", "embed", "pooled", None]
_RETURN_TYPES = ("normalized", "embed", "pooled", None)


class HookedCLIPText(HookedTower):
    """CLIP's text tower with a checked ``HookPoint`` on every activation; implements the
    :class:`~hooked_clip.tower.Tower` contract (``name = "text"``).

    ``forward(tokens)`` returns the projected text embedding [batch, d_proj] (``return_type="embed"``,
    unnormalised, like HF's ``text_embeds`` and open_clip's ``encode_text``), ``"normalized"`` (unit L2
    norm), ``"pooled"`` (``ln_final`` output at the pooling position, [batch, d_model]) or ``None``.
    """

    name = "text"
    input_embed_hook = "hook_embed"  # the input's own embedding (what integrated gradients interpolate)

    def __init__(self, cfg: CLIPTextConfig, tokenizer: Optional[TextTokenizer] = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(cfg)
        self.embed = Embed(cfg)
        self.hook_embed = CheckedHookPoint()  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = CheckedHookPoint()  # [batch, pos, d_model]
        if cfg.append_cls:  # CoCa: a learned embedding after the tokens, the position the tower reads
            self.W_cls = nn.Parameter(torch.empty(cfg.d_model, dtype=cfg.dtype))
            self.hook_cls_embed = CheckedHookPoint()  # [batch, 1, d_model]
        if cfg.n_token_types:
            self.token_type_embed = TokenTypeEmbed(cfg)
            self.hook_token_type_embed = CheckedHookPoint()  # [batch, pos, d_model]
        self.ln_embed = LayerNorm(cfg) if cfg.ln_embed else None
        block = PostLNBlock if cfg.ln_position == "post" else TransformerBlock
        self.blocks = nn.ModuleList([block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg) if cfg.final_ln else None
        if cfg.d_proj_hidden is not None:  # an MLP projection: W_proj_in -> GELU -> W_proj
            self.W_proj_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_proj_hidden, dtype=cfg.dtype))
            self.hook_proj_hidden = CheckedHookPoint()  # [batch, d_proj_hidden], after the GELU
        else:
            self.W_proj_in = None
        if cfg.d_proj is not None:
            d_in = cfg.d_model if cfg.d_proj_hidden is None else cfg.d_proj_hidden
            self.W_proj = nn.Parameter(torch.empty(d_in, cfg.d_proj, dtype=cfg.dtype))
            self.b_proj = nn.Parameter(torch.zeros(cfg.d_proj, dtype=cfg.dtype)) if cfg.proj_bias else None
        else:
            self.W_proj, self.b_proj = None, None
        self.hook_pooled = CheckedHookPoint()  # [batch, d_model]
        self.hook_text_embed = CheckedHookPoint()  # [batch, d_proj]
        self.hook_text_embed_normalized = CheckedHookPoint()  # [batch, d_proj]
        self.init_weights()
        self.setup()
        self.to(cfg.device)
        self.eval()  # no dropout anywhere; eval mode is what TL's analysis helpers require

    # -------------------------------------------------------------------------------------- tokenizing
    def to_tokens(
        self, text: Text, *, truncate: bool = False, padding: Optional[Padding] = None
    ) -> Int[Tensor, "batch pos"]:
        """Token ids [batch, pos] on the model's device, from the model's own tokenizer. ``padding``
        defaults to the model's rule (:func:`hooked_clip.tokenizers.base.padding_for`)."""
        padding = padding_for(self.cfg, padding)
        return self.tokenizer(text, truncate=truncate, padding=padding, context_length=self.cfg.max_text_tokens).to(
            self.cfg.device
        )

    def to_str_tokens(self, text: Union[str, Tensor, Sequence[int]], *, truncate: bool = False) -> list[str]:
        """String tokens of one text (or one row of ids), up to and including EOT."""
        if isinstance(text, str):
            ids = self.tokenizer(text, truncate=truncate, context_length=self.cfg.max_text_tokens)[0]
        elif isinstance(text, (list, tuple)) and any(isinstance(t, str) for t in text):
            raise TypeError(
                f"to_str_tokens takes one text, got a {type(text).__name__} of {len(text)}; for several use "
                "[model.to_str_tokens(t) for t in texts]."
            )
        else:
            ids = torch.as_tensor(text)
            if ids.ndim == 2 and ids.shape[0] == 1:
                ids = ids[0]
            if ids.ndim != 1:
                raise ValueError(f"to_str_tokens takes one text or one row of ids, got shape {tuple(ids.shape)}.")
        return self.tokenizer.to_str_tokens(ids)

    def to_single_token(self, word: str) -> int:
        """The id of a text that is exactly one token (between SOT and EOT)."""
        ids = self.tokenizer.encode(word, special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens, not one: {self.tokenizer.to_str_tokens(ids)}")
        return ids[0]

    def pool_positions(self, tokens: Int[Tensor, "batch pos"]) -> Optional[Int[Tensor, "batch"]]:
        """Position whose final residual becomes each row's text embedding (``cfg.pooling``, see
        :func:`hooked_clip.text.pooling.pool_positions`); ``None`` for mean pooling, which reads every
        (non-padding) position."""
        return pool_positions(tokens, self.cfg, [getattr(self.tokenizer, "eot_token_id", None)])

    def as_tokens(self, input: Union[Text, Tensor]) -> Int[Tensor, "batch pos"]:
        """Validated token ids on the model's device, from texts or from ids [batch, pos]."""
        if isinstance(input, str) or (isinstance(input, (list, tuple)) and (not input or isinstance(input[0], str))):
            input = self.to_tokens(input)
        elif isinstance(input, (list, tuple)):  # e.g. images given to the text tower
            raise TypeError(f"the text tower takes texts or token ids, got a {type(input).__name__} of "
                            f"{type(input[0]).__name__}; images go to the image tower (tower='vision', encode_image).")
        return self._check_tokens(input)

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a tensor of ids or text, got {type(tokens).__name__}.")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(
                f"tokens must be integer ids, got dtype {tokens.dtype}; use model.to_tokens(texts). "
                "To feed a residual stream instead, pass start_at_layer=..."
            )
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}"
                + ("; add a batch dimension with tokens[None]." if tokens.ndim == 1 else ".")
            )
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(
                f"tokens of shape {tuple(tokens.shape)} hold no text; every row needs at least SOT and EOT "
                "(model.to_tokens(texts) builds them)."
            )
        if tokens.shape[1] > self.cfg.max_text_tokens:
            raise ValueError(
                f"tokens have {tokens.shape[1]} positions, over the context length {self.cfg.max_text_tokens}; "
                "shorten the text or tokenize with truncate=True."
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.d_vocab}), got range [{int(tokens.min())}, "
                f"{int(tokens.max())}]."
            )
        return tokens.to(device=self.W_E.device, dtype=torch.long)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input: Union[Text, Int[Tensor, "batch pos"], Float[Tensor, "batch pos d_model"]],
        return_type: ReturnType = "embed",
        *,
        start_at_layer: Optional[int] = None,
        stop_at_layer: Optional[int] = None,
        tokens: Optional[Int[Tensor, "batch pos"]] = None,
        pool_positions: Optional[Int[Tensor, "batch"]] = None,
        trim: Optional[bool] = None,
        prefix: Optional[Sequence[KeyValuePrefix]] = None,
        attention_mask: Optional[Int[Tensor, "batch pos"]] = None,
    ) -> Optional[Tensor]:
        """Run the tower: embed, find the pooling positions, run the blocks, read out.

        Args:
            input: texts, token ids [batch, pos], or (with ``start_at_layer``) the residual stream
                [batch, pos, d_model] entering block ``start_at_layer``.
            return_type: ``"embed"`` [batch, d_proj] | ``"normalized"`` | ``"pooled"`` [batch, d_model] | None.
            start_at_layer / stop_at_layer: as in TransformerLens. With ``stop_at_layer`` the residual
                stream entering that block is returned [batch, pos, d_model] (no ``ln_final``).
            tokens / pool_positions: with ``start_at_layer``, where to pool (one of them is needed unless
                ``cfg.pooling == "last"``); with token input they are computed from the ids.
            trim: drop positions after the batch's last pooling position (default ``cfg.trim_after_pool``;
                only ever applied where exact, see ``cfg.trims``).
            prefix: with ``start_at_layer`` in a causal tower, one :class:`KeyValuePrefix` per block run:
                the keys and values of the positions *before* the input, which then holds only the later
                positions (pool positions count from the input's first position). The patching engine
                uses it to skip an unchanged prefix.
            attention_mask: as in TransformerLens / transformers, [batch, pos], 1 at tokens and 0 at padding:
                attention never reads the 0 positions (and mean pooling skips them). Default: the tower's own
                padding mask from the ids where it masks padding (``cfg.mask_padding``), else none.
        """
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}.")
        if prefix is not None and start_at_layer is None:
            raise ValueError("a key/value prefix needs start_at_layer: the input is then the residual stream of "
                             "the positions after the prefix.")
        self.check_layer_range(start_at_layer, stop_at_layer)
        if start_at_layer is None:
            tokens = self.as_tokens(input)
            pool = self.pool_positions(tokens) if pool_positions is None else torch.as_tensor(pool_positions, device=tokens.device)
            tokens = tokens[:, : self._kept_positions(pool, tokens.shape[1] + int(self.cfg.append_cls), trim)]
            resid = self.embed_tokens(tokens)
        else:
            resid = self._check_resid(input)
            pool = self._resid_pool_positions(resid, tokens, pool_positions, stop_at_layer)
            resid = resid[:, : self._kept_positions(pool, resid.shape[1], trim)]
            if tokens is not None:
                tokens = self._check_tokens(tokens)[:, : resid.shape[1]]
            elif self.cfg.mask_padding and attention_mask is None:
                raise ValueError("this tower masks its padding (cfg.mask_padding), which it reads from the token "
                                 "ids; with start_at_layer, pass tokens=... (the ids of the input's rows).")
        key_mask = self.padding_mask(tokens) if attention_mask is None else self._from_attention_mask(attention_mask, resid)
        resid = self.run_blocks(resid, start_at_layer or 0, stop_at_layer, prefix, key_mask)
        if stop_at_layer is not None:
            return resid
        return self.read_out(resid, pool, return_type, key_mask)

    def embed_tokens(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: token + position embeddings (``hook_embed``,
        ``hook_pos_embed``; with ``cfg.append_cls`` the CLS embedding ``hook_cls_embed`` after the tokens),
        + token-type row 0 (``hook_token_type_embed``) and through ``ln_embed`` where the config has them."""
        batch, n_pos = tokens.shape
        ids = self.pos_embed.roberta_position_ids(tokens) if self.cfg.position_ids == "roberta" else None
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.append_cls:
            resid = torch.cat([resid, self.hook_cls_embed(self.W_cls.view(1, 1, -1).expand(batch, 1, -1))], dim=1)
            n_pos += 1
        if self.cfg.n_token_types:
            resid = resid + self.hook_token_type_embed(self.token_type_embed(batch, n_pos))
        resid = resid + self.hook_pos_embed(self.pos_embed(batch, n_pos, ids))
        return resid if self.ln_embed is None else self.ln_embed(resid)

    def as_input(self, input: Union[Text, Tensor]) -> Int[Tensor, "batch pos"]:
        """The :class:`~hooked_clip.tower.Tower` contract's input: :meth:`as_tokens`."""
        return self.as_tokens(input)

    def embed_input(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """The :class:`~hooked_clip.tower.Tower` contract's embedding: :meth:`embed_tokens`."""
        return self.embed_tokens(tokens)

    def key_mask(self, tokens: Optional[Int[Tensor, "batch pos"]]) -> Optional[Tensor]:
        """The :class:`~hooked_clip.tower.Tower` contract's key mask: :meth:`padding_mask`."""
        return self.padding_mask(tokens)

    def input_lengths(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch"]:
        """Positions of each row that hold its text (the :class:`~hooked_clip.tower.Tower` contract): the
        unmasked positions where the tower masks padding, up to the EOT where a causal tower pools there, else
        every position (a tower that reads its padding, padded to its context length)."""
        mask = self.padding_mask(tokens)
        if mask is not None:
            return (~mask).sum(-1)
        if self.cfg.causal and self.cfg.pooling in ("eot", "argmax"):  # nothing after the EOT is read
            return self.pool_positions(tokens) + 1
        return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)

    def padding_mask(self, tokens: Optional[Int[Tensor, "batch pos"]]) -> Optional[Tensor]:
        """[batch, pos] True at padding (``pad_token_id``) where the tower masks it (``cfg.mask_padding``);
        ``None`` where it does not, where no tokens are known, or where a batch has no padding."""
        if not self.cfg.mask_padding or tokens is None:
            return None
        mask = tokens == self.cfg.pad_token_id
        if self.cfg.append_cls:  # the appended embedding is read; the legacy CoCa mask is shifted right by one
            read = mask.new_zeros(mask.shape[0], 1)
            mask = torch.cat([read, mask] if self.cfg.pad_mask_shift else [mask, read], dim=1)
        return mask if bool(mask.any()) else None

    def run_blocks(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        start: int = 0,
        stop: Optional[int] = None,
        prefix: Optional[Sequence[KeyValuePrefix]] = None,
        key_mask: Optional[Tensor] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Blocks ``start`` .. ``stop - 1`` on the residual stream (``prefix``: one per block run;
        ``key_mask`` [batch, pos]: True at keys no query may read, e.g. :meth:`padding_mask`)."""
        blocks = self.blocks[start:stop]
        if prefix is not None:
            if not self.cfg.causal:
                raise ValueError("a key/value prefix needs a causal tower.")
            if len(prefix) != len(blocks):
                raise ValueError(f"prefix has {len(prefix)} entries for {len(blocks)} blocks.")
        for i, block in enumerate(blocks):
            block_prefix = None if prefix is None else KeyValuePrefix(*prefix[i])
            resid = block(resid, block_prefix, key_mask=key_mask)
        return resid

    def read_out(
        self, resid: Float[Tensor, "batch pos d_model"], pool: Optional[Int[Tensor, "batch"]],
        return_type: ReturnType = "embed", key_mask: Optional[Tensor] = None,
    ) -> Optional[Tensor]:
        """``ln_final`` (if the tower has one) -> the row at each pooling position, or with ``pool=None`` the
        mean over positions (those not hidden by ``key_mask``) (``hook_pooled``) -> ``text_projection``
        (an MLP with ``cfg.d_proj_hidden``: ``hook_proj_hidden``; then ``tanh`` with ``cfg.proj_act``)
        (``hook_text_embed``) -> L2 normalisation
        (``hook_text_embed_normalized``), up to ``return_type``."""
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        if return_type is None:
            return None
        if pool is None:
            pooled = self.hook_pooled(mean_over_positions(resid, key_mask))
        else:
            pooled = self.hook_pooled(resid[torch.arange(resid.shape[0], device=resid.device), pool])
        if return_type == "pooled":
            return pooled
        if self.W_proj_in is not None:
            pooled = self.hook_proj_hidden(F.gelu(pooled @ self.W_proj_in))
        embed = pooled if self.W_proj is None else pooled @ self.W_proj
        if self.b_proj is not None:
            embed = embed + self.b_proj
        if self.cfg.proj_act == "tanh":
            embed = torch.tanh(embed)
        embed = self.hook_text_embed(embed)
        if return_type == "embed":
            return embed
        return self.hook_text_embed_normalized(F.normalize(embed, dim=-1))

    def _from_attention_mask(self, attention_mask: Tensor, resid: Tensor) -> Optional[Tensor]:
        """A TL/transformers ``attention_mask`` (1 = token, 0 = padding) as a key mask (True = never read)."""
        mask = torch.as_tensor(attention_mask, device=resid.device)
        if mask.ndim != 2 or mask.shape[0] != resid.shape[0] or mask.shape[1] < resid.shape[1]:
            raise ValueError(f"attention_mask must be [batch, pos] = [{resid.shape[0]}, {resid.shape[1]}] (1 = token, "
                             f"0 = padding), got {tuple(mask.shape)}.")
        if mask.dtype.is_floating_point or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold 1 (token) and 0 (padding) only, as an integer or bool tensor.")
        if self.cfg.causal and not bool(mask[:, 0].all()):
            raise ValueError("attention_mask: a causal tower's first position must be a token (left padding would "
                             "leave a query with nothing to read).")
        key_mask = mask[:, : resid.shape[1]] == 0
        return key_mask if bool(key_mask.any()) else None

    def _resid_pool_positions(self, resid: Tensor, tokens: Optional[Tensor], pool_positions: Optional[Tensor],
                              stop_at_layer: Optional[int]) -> Optional[Tensor]:
        if self.cfg.pooling in ("first", "mean") and pool_positions is None:
            return self.pool_positions(resid[..., 0])
        if pool_positions is not None:
            return torch.as_tensor(pool_positions, device=resid.device)
        if tokens is not None:
            return self.pool_positions(self._check_tokens(tokens))
        if self.cfg.pooling == "last" or stop_at_layer is not None:
            return torch.full((resid.shape[0],), resid.shape[1] - 1, device=resid.device)
        raise ValueError(
            "with start_at_layer, pass tokens=... or pool_positions=... so the tower knows where "
            f"to pool (cfg.pooling={self.cfg.pooling!r})."
        )

    def _kept_positions(self, pool: Tensor, n_pos: int, trim: Optional[bool]) -> int:
        do_trim = self.cfg.trim_after_pool if trim is None else trim
        if pool is None:
            return n_pos
        if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= n_pos):
            raise ValueError(f"pool_positions must lie in [0, {n_pos}), got {pool.tolist()}.")
        if do_trim and self.cfg.trims and pool.numel():
            return int(pool.max()) + 1
        return n_pos

    def _check_resid(self, resid: Tensor) -> Tensor:
        if not isinstance(resid, Tensor) or not resid.dtype.is_floating_point:
            raise TypeError("with start_at_layer, input must be a float residual stream [batch, pos, d_model].")
        if resid.ndim != 3 or resid.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"with start_at_layer, input must be [batch, pos, d_model={self.cfg.d_model}], got "
                f"{tuple(resid.shape)}."
            )
        if resid.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"residual has {resid.shape[1]} positions, over the context length {self.cfg.n_ctx}.")
        return resid

    # ------------------------------------------------------------------------ TL weight accessors
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    def tokens_to_residual_directions(self, tokens):
        raise NotImplementedError(
            "CLIP has no unembedding, so tokens have no residual directions; use the text/image "
            "embedding directions through ln_final and text_projection instead."
        )
