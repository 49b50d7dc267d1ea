"""The clean/corrupt pair: the two runs every paired analysis compares, checked once (texts for the text
tower, images for the image tower).

Vocabulary (the same in activation patching, attribution patching and path patching): ``clean`` and
``corrupt`` are the two inputs, example b of one paired with example b of the other. ``direction``
chooses which run is patched: ``"denoise"`` runs *corrupt* with activations from *clean* (TransformerLens's
default), ``"noise"`` runs *clean* with activations from *corrupt*. The run being patched is the
``base``; the run the activations come from is the ``source``. Every paired analysis (``activation_patch``,
``hidden_state_patch``, ``attribution_patch``, ``path_patch``) takes ``(model, clean, corrupt, metric, ...)`` in
that order and defaults to ``"denoise"``, so one pair passed the same way patches the same run from the same
source in each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from hooked_clip.analyses.results import CompactRepr
from hooked_clip.errors import TokenizerUnavailableError
from hooked_clip.tower import Tower, check_same_architecture, get_tower

Tokens = Union[str, Sequence[str], Int[Tensor, "batch pos"]]
Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True, repr=False)
class RunPair(CompactRepr):
    """Inputs of both runs — token ids [batch, pos] cut after the last pooling position they need, or pixels
    [batch, channel, H, W] — as ``base`` / ``source``, their pooling positions (None for an image tower
    whose pooling reads every position), and the ``direction`` that assigned them."""

    base: Tensor
    source: Tensor
    base_pool: Optional[Tensor]
    source_pool: Optional[Tensor]
    direction: str

    @classmethod
    def build(cls, tower: Tower, clean: Tokens, corrupt: Tokens,
              direction: Direction = "denoise", *,
              same_pooling: bool = True, names: tuple[str, str] = ("clean", "corrupt"),
              hint: Optional[str] = None) -> "RunPair":
        """Check and assign the runs. ``same_pooling``: both runs must pool at the same position per example
        (positions then correspond one to one); ``names`` and ``hint`` word the errors in the caller's terms
        (e.g. ``("negated", "affirmative")``)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}.")
        clean_t, corrupt_t = tower.as_input(clean), tower.as_input(corrupt)
        if clean_t.shape[0] != corrupt_t.shape[0]:
            raise ValueError(f"{clean_t.shape[0]} {names[0]} examples but {corrupt_t.shape[0]} {names[1]} ones; "
                             "give one of each per example.")
        clean_t, corrupt_t = _common_width(tower, clean_t, corrupt_t)
        clean_pool, corrupt_pool = tower.pool_positions(clean_t), tower.pool_positions(corrupt_t)
        if same_pooling:
            clean_len, corrupt_len = tower.input_lengths(clean_t), tower.input_lengths(corrupt_t)
            if clean_len is not None and not torch.equal(clean_len, corrupt_len):
                bad = (clean_len != corrupt_len).nonzero().flatten().tolist()
                raise ValueError(
                    f"{names[0]} and {names[1]} differ in token length at examples {bad[:10]} ({names[0]} "
                    f"{int(clean_len[bad[0]])} vs {names[1]} {int(corrupt_len[bad[0]])} tokens for example "
                    f"{bad[0]}); positions do not correspond. "
                    + (hint or "Align the sentences first (the same number of tokens per example).")
                )
        if getattr(tower.cfg, "trims", False):
            clean_t = clean_t[:, : int(clean_pool.max()) + 1]
            corrupt_t = corrupt_t[:, : int(corrupt_pool.max()) + 1]
        if direction == "denoise":
            return cls(corrupt_t, clean_t, corrupt_pool, clean_pool, direction)
        return cls(clean_t, corrupt_t, clean_pool, corrupt_pool, direction)

    def str_tokens(self, tower: Tower, *, patched_only: bool = False) -> Optional[dict[str, list[list[str]]]]:
        """Each run's token strings [example][pos] by its name (``"clean"``, ``"corrupt"``) where the runs are
        texts; None for images or a tokenizer that cannot be built here (the model then runs on ids).
        ``patched_only``: the patched run's alone (under an alignment the other run's positions do not
        correspond)."""
        clean, corrupt = self.clean_and_corrupt(self.base, self.source)
        runs = {"clean": clean, "corrupt": corrupt}
        if patched_only:
            runs = {name: ids for name, ids in runs.items() if ids is self.base}
        strings = {name: str_tokens(tower, ids) for name, ids in runs.items()}
        return None if any(s is None for s in strings.values()) else strings

    def clean_and_corrupt(self, base_value, source_value):
        """(clean's, corrupt's) of a pair of per-run values given as (base's, source's)."""
        return (source_value, base_value) if self.direction == "denoise" else (base_value, source_value)


def source_tower(patched: Tower, source_model) -> Tower:
    """The tower the source run is recorded on: ``patched`` itself, or the same tower (text or image) of
    ``source_model``, another checkpoint that must differ from it only in its weights
    (:class:`~hooked_clip.errors.ArchitectureMismatchError` naming the differing config fields)."""
    if source_model is None:
        return patched
    source = get_tower(source_model, patched.name)
    check_same_architecture(patched, source)
    return source


def same_inputs(clean: Tokens, corrupt: Optional[Tokens], source_model) -> Tokens:
    """``corrupt``, or ``clean`` again where ``corrupt`` is None: the same inputs in both runs, which only
    patching across checkpoints (``source_model=``) makes a comparison."""
    if corrupt is not None:
        return corrupt
    if source_model is None:
        raise ValueError("corrupt is None: give the corrupt inputs, or pass source_model= to patch the same inputs "
                         "from another checkpoint.")
    return clean


def str_tokens(tower: Tower, ids: Tensor) -> Optional[list[list[str]]]:
    """Token strings [example][pos] of a batch of ids through the tower's own tokenizer; None for pixels, or
    a tokenizer that cannot be built here (the model then runs on ids)."""
    if ids.ndim != 2 or not hasattr(tower, "to_str_tokens"):
        return None
    try:
        return [tower.to_str_tokens(row) for row in ids.cpu()]
    except TokenizerUnavailableError:
        return None


def _common_width(tower: Tower, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Token ids of both runs at one width: the narrower padded with the tower's pad id, which is exact only
    where padding is never read (a masked or causal EOT-pooled tower; towers that read their padding pad to
    the context length already, so both runs have its width)."""
    if a.shape[1:] == b.shape[1:] or a.ndim != 2:
        return a, b
    if tower.cfg.pads_to_context:
        raise ValueError(f"the two runs have {a.shape[1]} and {b.shape[1]} positions, and this tower reads its padding; "
                         "tokenize both with model.to_tokens(...) (it pads to the context length).")
    width = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=tower.cfg.pad_token_id)  # noqa: E731
    return pad(a), pad(b)


__all__ = ["DIRECTIONS", "Direction", "RunPair", "Tokens", "same_inputs", "source_tower", "str_tokens"]
