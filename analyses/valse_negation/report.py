"""The outputs of a run directory, composed from the study's parts: ``results.json`` (the aggregated
tables, ``aggregate.py``), ``per_item.json`` (the authors' per-item format, ``reference.py``), one CSV per
table (``tables.py``), PNG figures (``figures.py``), an offline HTML attention view (``attention_html.py``)
and ``report.md`` (``markdown.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from hooked_clip.fingerprint import hash_tensors

from hooked_clip.analyses.valse_negation.attention_html import write_attention_html
from hooked_clip.analyses.valse_negation.data import dropped_items, load_items
from hooked_clip.analyses.valse_negation.figures import write_figures
from hooked_clip.analyses.valse_negation.formatting import json_safe
from hooked_clip.analyses.valse_negation.markdown import report_markdown
from hooked_clip.analyses.valse_negation.output_cache import inputs_digest, outputs_current, record_outputs
from hooked_clip.analyses.valse_negation.reference import to_reference_format
from hooked_clip.analyses.run_dirs import atomic_write
from hooked_clip.analyses.valse_negation.tables import write_tables


def tower_weights(model) -> dict:
    """A hash of each tower's weights (``fingerprint.hash_tensors``), so a comparison can say when two models share
    a tower (the two demo models share their text tower)."""
    vision = getattr(model, "vision", None)
    return {"text": hash_tensors(model.text.state_dict().items())[:16],
            "vision": None if vision is None else hash_tensors(vision.state_dict().items())[:16]}


def write_outputs(run_dir, records: dict[str, dict], results: dict, *, model=None, model_id: str = "",
                  images_note: str = "", items=None) -> bool:
    """Write every output of a run: ``results`` from :func:`~hooked_clip.analyses.valse_negation.aggregate.aggregate`
    of ``records``; ``model`` (optional) adds its logit scale, its towers' weight hashes and the attention view;
    ``items`` (default the shipped VALSE items) give per_item.json its ``image_file`` and ``dataset_idx``, and
    name the items the validity filter dropped. Every dropped item (validity filter, alignment) is named with its
    reason in ``results["dropped"]``, ``dropped.csv`` and the report. Returns False (nothing written) when the
    outputs are already those of these inputs (``output_cache``)."""
    run_dir = Path(run_dir)
    if items is None:
        items = load_items()
    if "dropped" not in results:
        results = {**results, "dropped": dropped_items(items, records)}
    if model is not None and getattr(model, "logit_scale", None) is not None and "logit_scale" not in results:
        results = {**results, "logit_scale": float(model.logit_scale.detach().exp())}
    if model is not None and "text_tower" not in results:
        results = {**results, "text_tower": model.text.cfg.describe()}
    if model is not None and "tower_weights" not in results:
        results = {**results, "tower_weights": tower_weights(model)}
    digest = inputs_digest(run_dir, records, results, model_id, images_note)
    if outputs_current(run_dir, digest):
        return False
    atomic_write(run_dir / "results.json", json.dumps(json_safe(results), indent=1, allow_nan=False))
    atomic_write(run_dir / "per_item.json", json.dumps(json_safe(to_reference_format(records, items)), indent=1, allow_nan=False))
    write_tables(run_dir, records, results)
    figures = write_figures(run_dir, records, results, model_id)
    html = write_attention_html(run_dir, model, records, model_id) if model is not None else None
    atomic_write(run_dir / "report.md", report_markdown(results, model_id, images_note, figures, html, records))
    record_outputs(run_dir, digest)
    return True
