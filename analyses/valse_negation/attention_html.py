"""The run directory's offline attention view, ``attention.html``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from hooked_clip.analyses.run_dirs import atomic_write


def write_attention_html(run_dir: Path, model, records: dict[str, dict], model_id: str = "") -> Optional[str]:
    """Self-contained circuitsvis views (no CDN: ``local_src``) of the first layer for one example pair;
    returns the file name, or None without an aligned pair."""
    import circuitsvis.attention as cv

    pair = next((r for r in records.values() if "aligned" in r), None)
    if pair is None:
        return None
    a = pair["aligned"]
    negated = a["caption"] if pair["negation_in"] == "caption" else a["foil"]
    affirmative = a["foil"] if pair["negation_in"] == "caption" else a["caption"]
    title = html.escape(f"{model_id or 'model'}: attention patterns (hooked_clip)")
    parts = [f"<html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1>"]
    for sentence in (negated, affirmative):
        _, cache = model.text.run_with_cache(sentence)
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
            parts.append(f"<h3>{html.escape(repr(sentence))}: layer {layer + 1} (1-indexed)</h3>")
            parts.append(cv.attention_patterns(tokens=model.to_str_tokens(sentence), attention=pattern).local_src)
            if layer == 0:
                break  # one layer view per sentence keeps the file small; others via the API
    parts.append("</body></html>")
    atomic_write(run_dir / "attention.html", "\n".join(parts))
    return "attention.html"
