"""Token and learned absolute position embeddings."""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.config import TowerConfig


class Embed(nn.Module):
    """Token embedding: ids [batch, pos] -> [batch, pos, d_model]."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned absolute position embedding for the first ``pos`` positions, broadcast over the batch; or, with
    ``position_ids`` [batch, pos] (RoBERTa's, from :meth:`roberta_position_ids`), those rows."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, batch: int, n_pos: int, position_ids: Optional[Tensor] = None) -> Float[Tensor, "batch pos d_model"]:
        if position_ids is not None:
            return self.W_pos[position_ids]
        return self.W_pos[:n_pos].unsqueeze(0).expand(batch, n_pos, self.cfg.d_model)

    def roberta_position_ids(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
        """RoBERTa/XLM-R position ids, as transformers computes them from the ids: a non-padding token reads
        row ``pad_token_id`` + (number of non-padding tokens up to and including it), padding reads row
        ``pad_token_id``. Ids past the table (a text too long for this tower) are an error."""
        not_pad = (tokens != self.cfg.pad_token_id).long()
        ids = torch.cumsum(not_pad, dim=1) * not_pad + self.cfg.pad_token_id
        if ids.numel() and int(ids.max()) >= self.cfg.n_ctx:
            raise ValueError(
                f"a row has {int(ids.max()) - self.cfg.pad_token_id} non-padding tokens but this tower's position "
                f"table holds {self.cfg.n_ctx - self.cfg.pad_token_id - 1}; shorten the text or tokenize with "
                "truncate=True.")
        return ids
