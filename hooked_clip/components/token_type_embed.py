"""BERT's token-type (segment) embedding: the references add row 0 to every position when no
``token_type_ids`` are given, which is how their text towers are run (one segment)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hooked_clip.config import TowerConfig


class TokenTypeEmbed(nn.Module):
    """``W_token_type`` [n_token_types, d_model], all rows loaded from the checkpoint; row 0 is added."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_token_type = nn.Parameter(torch.empty(cfg.n_token_types, cfg.d_model, dtype=cfg.dtype))

    def forward(self, batch: int, n_pos: int) -> Float[Tensor, "batch pos d_model"]:
        return self.W_token_type[0].expand(batch, n_pos, self.cfg.d_model)
