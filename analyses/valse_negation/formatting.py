"""Numbers as the study's outputs print them (the report, the figures' titles, the model comparison), and
results made JSON-safe (NaN and infinities become null)."""

from __future__ import annotations

import math

from hooked_clip.names import head_label, paper_head_label, parse_head_label


def fmt(x, digits: int = 2) -> str:
    """A number with ``digits`` decimals; "–" for None or NaN."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def head_name(layer: int, head: int) -> str:
    """A head as the study's outputs print it: the code's 0-indexed :func:`~hooked_clip.names.head_label` (as every
    analysis writes it) with the paper's 1-indexed label beside it: ``head_name(3, 1) == "L3H1 (Layer 4 Head 2)"``."""
    return f"{head_label(layer, head)} ({paper_head_label(layer, head)})"


def labelled_head(label: str) -> str:
    """:func:`head_name` of a head label read back from results (``"L3H1"``)."""
    return head_name(*parse_head_label(label))


def pct(x) -> str:
    """A fraction in percent with one decimal; "–" for None."""
    return "–" if x is None else f"{100 * x:.1f}%"


def segs(counts) -> str:
    """Segment counts (a dict or a sequence) as "correct / ambiguous / incorrect"."""
    return " / ".join(str(v) for v in (counts.values() if isinstance(counts, dict) else counts))


def row(label: str, values, digits: int = 2) -> str:
    """One markdown table row."""
    return f"| {label} | " + " | ".join(fmt(v, digits) for v in values) + " |"


def header(first: str, columns) -> list[str]:
    """A markdown table's header and rule lines."""
    columns = [str(c) for c in columns]
    return ["| " + " | ".join([first, *columns]) + " |", "|---" * (len(columns) + 1) + "|"]


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
