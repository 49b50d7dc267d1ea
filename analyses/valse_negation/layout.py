"""Where the study's rows sit in each aligned pair, read from the model's own tokenizer and pooling rule.

The paper's per-position rows (PAPER.md §5) are ``[SOT] there is/are a/some/no subj-1st subj-further . [EOT]``.
On CLIP's BPE they sit at fixed positions (start token at 0, negator at 3, "." just before the pooled EOT);
other tokenizers lay the same sentence out otherwise. SigLIP's SentencePiece, for one, has no start token,
its text clean-up (``canonicalize``) drops the ".", and the tower reads the last padded position, not the
sentence's end token. So every position is derived per pair:

- negator: the one position where the negated and affirmative ids differ (the authors' alignment swaps one
  word: "no" for "a"/"an"/"some"); a pair whose ids differ in length or at more than one position is refused;
- start token: position 0 where the tokenizer puts its start id there, else the row is absent;
- "there", "is/are": the two tokens before the negator (refused unless each word is one token);
- first subject token: the one after the negator; further subject tokens: those after it, up to "." (or up to
  the end token where there is no "." token);
- ".": the last token before the end token where it is a full stop, else absent;
- [EOT]: the tokenizer's end token at the end of the sentence, else absent;
- pooled: the position the tower reads (``HookedCLIPText.pool_positions``). Where the tower pools at the end
  token (EOT / argmax pooling: CLIP, OpenCLIP, MobileCLIP, MetaCLIP) [EOT] is that row; a tower that reads the
  last padded position (``pooling="last"``: SigLIP) gets its own ``[pooled]`` row after [EOT] (the padding
  between the two is not shown in the rows), a tower that reads its first token (``pooling="first"``: BERT's
  CLS in ChineseCLIP, AltCLIP, ALIGN) a ``[pooled]`` row at position 0 (the [SOT] row's own position, shown
  again under the name the reader knows it by), and a mean-pooled tower (open_clip's RoBERTa/XLM-R towers)
  none (it reads every token).

An absent row holds NaN and its label says "(absent)"; it is never filled with another token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

ROWS = ["[SOT]", "there", "is/are", "a/some/no", "subj 1st", "subj further", ".", "[EOT]"]
POOLED_ROW = "[pooled]"
NEGATOR_ROW, FURTHER_ROW = ROWS.index("a/some/no"), ROWS.index("subj further")
ABSENT = " (absent)"
_FIELDS = ("sot", "there", "is_are", "negator", "subject", "further", "dot", "eot", "pooled")  # in row order


class TokenLayoutError(ValueError):
    """Some pairs cannot be laid out on the study's rows with this model's tokenizer."""


@dataclass(frozen=True)
class PairLayout:
    """Token positions of one aligned pair's rows (the same in both sentences, which differ only at
    ``negator``). ``None``: the tokenizer has no such token (the row is absent). ``further``: [start, stop)
    of the further subject tokens (empty when start == stop). ``pooled``: only for towers that do not pool
    at the end token (its own row); ``None`` where the [EOT] row is the pooled one."""

    sot: Optional[int]
    there: int
    is_are: int
    negator: int
    subject: int
    further: tuple[int, int]
    dot: Optional[int]
    eot: Optional[int]
    pooled: Optional[int] = None
    n_tokens: int = 0  # tokens of the sentence with its special tokens, without padding

    @classmethod
    def clip(cls, eot: int) -> "PairLayout":
        """CLIP's BPE layout of a sentence whose EOT (the pooled token) is at ``eot``."""
        return cls(0, 1, 2, 3, 4, (5, eot - 1), eot - 1, eot, None, eot + 1)

    @classmethod
    def from_record(cls, aligned: dict) -> "PairLayout":
        """The layout stored in a pair's record (``aligned["positions"]``); a record written before positions
        were stored is CLIP's layout (the study refused every other layout then)."""
        if "positions" not in aligned:
            return cls.clip(aligned["n_tokens"] - 1)
        p = dict(aligned["positions"])
        return cls(**{**p, "further": tuple(p["further"]), "n_tokens": aligned["n_tokens"]})

    def to_record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "n_tokens"}

    @property
    def n_further(self) -> int:
        return self.further[1] - self.further[0]

    def rows(self) -> list:
        """One entry per row: a position, a range (further subject tokens) or ``None`` (absent)."""
        rows = [self.sot, self.there, self.is_are, self.negator, self.subject, range(*self.further), self.dot, self.eot]
        return rows + ([self.pooled] if self.pooled is not None else [])


def row_labels(layouts: list[PairLayout]) -> list[str]:
    """The rows' labels for pairs laid out by one model: ``ROWS``, plus ``[pooled]`` for a tower that does not
    pool at the end token; a row no pair has is labelled absent."""
    if not layouts:
        return list(ROWS)
    labels = ROWS + ([POOLED_ROW] if any(x.pooled is not None for x in layouts) else [])
    absent = [all(getattr(x, f) is None for x in layouts) for f in _FIELDS]
    return [label + ABSENT if gone else label for label, gone in zip(labels, absent)]


def to_rows(values: torch.Tensor, layout: Union[PairLayout, int, None] = None, further: str = "mean", *,
            eot: Optional[int] = None) -> tuple[list, int]:
    """Map [..., pos] values of one pair onto its rows ([..., 8], or 9 with a ``[pooled]`` row): each row the
    value at its position, "subj further" the ``mean`` or ``max`` over the further subject tokens, NaN for an
    absent row or no further tokens. ``layout``: the pair's :class:`PairLayout`, or an int for CLIP's layout
    with the EOT at that position (``eot=``, the former signature, says the same). Returns (rows, number of
    further tokens)."""
    if (layout is None) == (eot is None):
        raise TypeError("give the pair's layout (a PairLayout, or CLIP's EOT position) once: to_rows(values, layout).")
    layout = eot if layout is None else layout
    layout = PairLayout.clip(layout) if isinstance(layout, int) else layout
    nan = torch.full(values.shape[:-1], float("nan"), dtype=values.dtype, device=values.device)
    cols = []
    for pos in layout.rows():
        if pos is None:
            cols.append(nan)
        elif isinstance(pos, range):
            fur = values[..., pos.start: pos.stop]
            cols.append(nan if not len(pos) else fur.mean(-1) if further == "mean" else fur.amax(-1))
        else:
            cols.append(values[..., pos])
    return torch.stack(cols, -1).tolist(), layout.n_further


def _is_full_stop(piece: str) -> bool:
    return piece.replace("</w>", "").strip().lstrip("▁Ġ") == "."


def _lay_out_one(tok, neg_ids: list[int], aff_ids: list[int], pooled: int, pools_at_end: bool) -> Union[PairLayout, str]:
    """The pair's layout, or why it cannot be laid out."""
    if len(neg_ids) != len(aff_ids):
        return (f"the negated sentence is {len(neg_ids)} tokens and the affirmative one {len(aff_ids)}, so positions "
                "do not correspond (the negator and its counterpart must be one token each)")
    differ = [i for i, (a, b) in enumerate(zip(neg_ids, aff_ids)) if a != b]
    if len(differ) != 1:
        return f"the sentences differ at positions {differ}, not at one negator position"
    n = differ[0]
    sot = 0 if tok.sot_token_id is not None and neg_ids[0] == tok.sot_token_id else None
    start = 0 if sot is None else 1
    if n - start != 2:
        return (f"{n - start} tokens ({tok.to_str_tokens(neg_ids[start:n])}) precede the negator, not 'there' and "
                "'is/are' as one token each")
    eot = len(neg_ids) - 1 if tok.eot_token_id is not None and neg_ids[-1] == tok.eot_token_id else None
    end = len(neg_ids) if eot is None else eot  # one past the last content token
    if n + 1 >= end:
        return "no token follows the negator before the end of the sentence (no subject)"
    dot = end - 1 if end - 1 > n + 1 and _is_full_stop(tok.to_str_tokens([neg_ids[end - 1]])[0]) else None
    if pools_at_end and pooled != eot:
        return f"the tower pools at position {pooled}, not at the end token ({eot})"
    return PairLayout(sot, start, start + 1, n, n + 1, (n + 2, end if dot is None else dot), dot, eot,
                      None if pools_at_end else pooled, len(neg_ids))


def check_token_layout(text, negated: list[str], affirmative: list[str]) -> list[PairLayout]:
    """Lay every aligned pair out on the study's rows with the model's own tokenizer and pooling rule (see the
    module docstring), or raise :class:`TokenLayoutError` naming every pair that cannot be laid out and why."""
    tok = text.tokenizer
    pools_at_end = text.cfg.pooling in ("eot", "argmax")
    pool = text.pool_positions(text.as_tokens(negated))
    pooled = [None] * len(negated) if pool is None else pool.tolist()  # mean pooling reads every token
    out = [_lay_out_one(tok, tok.encode(a), tok.encode(b), p, pools_at_end)
           for a, b, p in zip(negated, affirmative, pooled)]
    bad = [(s, why) for s, why in zip(negated, out) if isinstance(why, str)]
    if bad:
        shown = "; ".join(f"{s!r}: {why}" for s, why in bad[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise TokenLayoutError(
            f"{len(bad)} of {len(negated)} aligned pairs cannot be laid out on the study's per-position rows with "
            f"this model's tokenizer: {shown}{more}. The rows need the negator and its counterpart as one token each "
            "at the only differing position, preceded by 'there' and 'is/are' as one token each; run the generic "
            "analyses (hooked_clip.analyses) on these sentences instead.")
    return out


def is_absent(label: str) -> bool:
    return label.endswith(ABSENT)


__all__ = ["ABSENT", "FURTHER_ROW", "NEGATOR_ROW", "POOLED_ROW", "ROWS", "PairLayout", "TokenLayoutError",
           "check_token_layout", "is_absent", "row_labels", "to_rows"]
