"""Token and learned absolute position embeddings."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.config import CLIPTextConfig


class Embed(nn.Module):
    """Token embedding: ids [batch, pos] -> [batch, pos, d_model]."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned absolute position embedding for the first ``pos`` positions, broadcast over the batch."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, batch: int, n_pos: int) -> Float[Tensor, "batch pos d_model"]:
        return self.W_pos[:n_pos].unsqueeze(0).expand(batch, n_pos, self.cfg.d_model)
