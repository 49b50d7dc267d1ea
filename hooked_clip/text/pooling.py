"""Where a text tower reads its output: the pooling rules of ``cfg.pooling`` as free functions (as open_clip's
``text_global_pool``), used by the tower's forward and by every analysis through ``pool_positions``."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor


def pool_positions(tokens: Int[Tensor, "batch pos"], cfg, eot_ids: Iterable[int] = ()) -> Optional[Int[Tensor, "batch"]]:
    """The position whose final residual becomes each row's embedding, by ``cfg.pooling``: ``"first"`` 0,
    ``"last"`` the last position, ``"eot"`` the first ``cfg.eot_token_id``, ``"argmax"`` the largest id (checked
    to be an EOT id: ``cfg.eot_token_id``, ``eot_ids`` or the vocabulary's last id); None for ``"mean"``, which
    reads every (non-padding) position. A row without the token its rule reads is an error."""
    if cfg.pooling == "mean":
        return None
    if cfg.pooling == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    if cfg.pooling == "argmax":
        pool = tokens.argmax(dim=-1)
        _check_argmax_pools_at_eot(tokens, pool, cfg, eot_ids)
        return pool
    if cfg.pooling == "last":  # the residual's last position: the appended CLS embedding where there is one
        last = tokens.shape[1] - 1 + int(getattr(cfg, "append_cls", False))
        return torch.full((tokens.shape[0],), last, dtype=torch.long, device=tokens.device)
    is_eot = tokens == cfg.eot_token_id
    missing = (~is_eot.any(dim=-1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"rows {missing[:10]} have no EOT token ({cfg.eot_token_id}), which pooling='eot' "
            "reads; build tokens with model.to_tokens(...)."
        )
    return is_eot.int().argmax(dim=-1)


def _check_argmax_pools_at_eot(tokens: Tensor, pool: Tensor, cfg, eot_ids: Iterable[int]) -> None:
    """Argmax pooling reads the largest id, which is EOT only where the row has one; a row without
    EOT would silently pool at SOT (or another token). Skipped for a vocabulary without the EOT id
    (reduced random test configs), where argmax is all there is."""
    if not tokens.numel() or cfg.eot_token_id >= cfg.d_vocab:
        return
    # CLIP's vocabulary ends with EOT, the id argmax pooling is built to find
    allowed = sorted({cfg.eot_token_id, cfg.d_vocab - 1, *(i for i in eot_ids if i is not None)})
    pooled_ids = tokens.gather(-1, pool[:, None])[:, 0]
    wrong = (~torch.isin(pooled_ids, torch.tensor(allowed, device=tokens.device))).nonzero().flatten().tolist()
    if wrong:
        raise ValueError(
            f"rows {wrong[:10]} have no EOT token ({cfg.eot_token_id}), so pooling='argmax' would "
            "read another position; build tokens with model.to_tokens(...), or pass pool_positions=... "
            "to say where to pool."
        )


def mean_over_positions(resid: Float[Tensor, "batch pos d"], key_mask: Optional[Tensor]) -> Float[Tensor, "batch d"]:
    """Mean pooling as open_clip's ``MeanPooler``: sum over kept positions (``key_mask`` False) / their count."""
    if key_mask is None:
        return resid.mean(dim=1)
    keep = (~key_mask).unsqueeze(-1).to(resid.dtype)
    return (resid * keep).sum(dim=1) / keep.sum(dim=1)
