"""Token-level alignment of two sentences of possibly unequal length: the edit script that turns the foil's
tokens into the caption's (equal runs, substitutions, insertions, deletions), and from it the position map the
patching engine takes as ``alignment=`` (each position of the patched run -> its counterpart, -1 = none).

The script is a minimum edit distance alignment (Levenshtein: substitution, insertion and deletion cost 1), with
ties broken towards keeping tokens equal as late as possible and towards substitutions over an insertion plus
a deletion. Direction: ops read from the *foil* (the run patched) to the *caption* (the source):

- ``equal``: the same tokens at both sides;
- ``substitute``: foil tokens ``foil[a:b]`` stand where the caption has ``caption[c:d]`` (same count, one by one);
- ``insert``: foil tokens with no counterpart in the caption (the foil adds them: SugarCrepe's add-obj);
- ``delete``: caption tokens with no counterpart in the foil.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor

OPS = ("equal", "substitute", "insert", "delete")


@dataclass(frozen=True)
class Op:
    """One run of the edit script: ``kind`` over ``foil[foil_start:foil_end]`` and ``caption[caption_start:caption_end]``."""

    kind: str
    foil_start: int
    foil_end: int
    caption_start: int
    caption_end: int


@dataclass(frozen=True)
class Alignment:
    """The edit script of one pair (``ops``) and the lengths it covers."""

    ops: tuple[Op, ...]
    n_foil: int
    n_caption: int

    def foil_to_caption(self) -> list[int]:
        """For each foil position, its counterpart in the caption (equal or substituted token), else -1."""
        out = [-1] * self.n_foil
        for op in self.ops:
            if op.kind in ("equal", "substitute"):
                for k in range(op.foil_end - op.foil_start):
                    out[op.foil_start + k] = op.caption_start + k
        return out

    def changed_foil(self) -> list[int]:
        """Foil positions that differ from the caption (substituted or inserted)."""
        return [p for op in self.ops if op.kind in ("substitute", "insert") for p in range(op.foil_start, op.foil_end)]

    def changed_caption(self) -> list[int]:
        """Caption positions that differ from the foil (substituted or deleted)."""
        return [p for op in self.ops if op.kind in ("substitute", "delete")
                for p in range(op.caption_start, op.caption_end)]

    def counts(self) -> dict[str, int]:
        """Tokens per kind: ``substitute`` (foil tokens), ``insert``, ``delete``, ``equal``."""
        n = dict.fromkeys(OPS, 0)
        for op in self.ops:
            n[op.kind] += max(op.foil_end - op.foil_start, op.caption_end - op.caption_start)
        return n

    def reversed(self) -> "Alignment":
        """The same alignment read from the caption to the foil (``foil`` and ``caption`` swap, so do inserts and
        deletes): what patching the foil's states into the caption run needs."""
        swap = {"insert": "delete", "delete": "insert"}
        return Alignment(tuple(Op(swap.get(op.kind, op.kind), op.caption_start, op.caption_end, op.foil_start, op.foil_end)
                               for op in self.ops), self.n_caption, self.n_foil)

    @property
    def kind(self) -> str:
        """``substitution`` (equal lengths, only substitutions), ``insertion``/``deletion`` (only those besides
        substitutions), or ``mixed``."""
        c = self.counts()
        if c["insert"] and c["delete"]:
            return "mixed"
        return "insertion" if c["insert"] else "deletion" if c["delete"] else "substitution"


def align_tokens(foil: Sequence[Hashable], caption: Sequence[Hashable]) -> Alignment:
    """The minimum edit script from ``foil`` to ``caption`` (token ids or strings); see the module docstring."""
    n, m = len(foil), len(caption)
    # cost[i][j]: edit distance of foil[i:] and caption[j:] (suffixes: the backtrace then runs forwards and
    # prefers equal tokens early, which keeps a shared prefix aligned)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n or j == m:
                cost[i][j] = (n - i) + (m - j)
            else:
                same = foil[i] == caption[j]
                cost[i][j] = min(cost[i + 1][j + 1] + (0 if same else 1), cost[i + 1][j] + 1, cost[i][j + 1] + 1)
    steps, i, j = [], 0, 0
    while i < n or j < m:
        if i < n and j < m and foil[i] == caption[j] and cost[i][j] == cost[i + 1][j + 1]:
            steps.append("equal"); i += 1; j += 1  # noqa: E702
        elif i < n and j < m and cost[i][j] == cost[i + 1][j + 1] + 1:
            steps.append("substitute"); i += 1; j += 1  # noqa: E702
        elif i < n and cost[i][j] == cost[i + 1][j] + 1:
            steps.append("insert"); i += 1  # noqa: E702
        else:
            steps.append("delete"); j += 1  # noqa: E702
    ops, i, j = [], 0, 0
    for k, kind in enumerate(steps):
        di, dj = int(kind != "delete"), int(kind != "insert")
        if ops and ops[-1].kind == kind:
            last = ops[-1]
            ops[-1] = Op(kind, last.foil_start, last.foil_end + di, last.caption_start, last.caption_end + dj)
        else:
            ops.append(Op(kind, i, i + di, j, j + dj))
        i, j = i + di, j + dj
    return Alignment(tuple(ops), n, m)


def alignment_tensor(alignments: Sequence[Alignment], width: int) -> Tensor:
    """The engine's ``alignment=`` [pairs, width]: each foil position's caption position, -1 where it has none
    (inserted tokens, and the positions after the foil's text)."""
    out = torch.full((len(alignments), width), -1, dtype=torch.long)
    for b, a in enumerate(alignments):
        row = a.foil_to_caption()[:width]
        out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


__all__ = ["Alignment", "OPS", "Op", "align_tokens", "alignment_tensor"]
