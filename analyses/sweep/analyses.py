"""The analyses a sweep runs on each (model, dataset) unit, by the name a manifest gives them.

An analysis is ``settings(values, where)`` (the manifest table → a frozen settings object, every bad value one
error naming it) and ``run(model, run_dir, dataset, settings, model_id, label, progress)``, which writes the analysis' run directory
(its ``results.json`` among them), resuming from the records already in ``run_dir``. ``RESULT_KEYS`` lists the settings that change results
(the unit key hashes those; e.g. a chunk size does not).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Analysis:
    settings: Callable[[dict, str], Any]
    run: Callable[..., None]
    result_keys: tuple[str, ...]

    def key_settings(self, settings) -> dict:
        """The settings that change results (what a unit key hashes)."""
        return {k: v for k, v in asdict(settings).items() if k in self.result_keys}


# ------------------------------------------------------------------------------------------ valse-negation
@dataclass(frozen=True)
class ValseSettings:
    """The VALSE negation study's settings (``hooked_clip.analyses.valse_negation.study.Settings``) and the
    layer-zoom rule of its tables."""

    limit: Optional[int] = None
    chunk: int = 64
    batch_size: int = 1024
    rome: bool = False
    rome_samples: int = 10
    seed: int = 0
    zoom: str = "paper"

    def study(self):
        from hooked_clip.analyses.valse_negation.study import Settings

        return Settings(**{k: v for k, v in asdict(self).items() if k != "zoom"})


def _valse_settings(values: dict, where: str) -> ValseSettings:
    from hooked_clip.analyses.valse_negation.aggregate import ZOOM_RULES

    known = {f.name for f in fields(ValseSettings)}
    extra = sorted(set(values) - known)
    if extra:
        raise ValueError(f"{where}: unknown setting(s) {extra}; known: {sorted(known)}.")
    if values.get("rome") is not None and not isinstance(values["rome"], bool):
        raise ValueError(f"{where}: rome must be true or false, got {values['rome']!r}.")
    if "zoom" in values and values["zoom"] not in ZOOM_RULES:
        raise ValueError(f"{where}: zoom must be one of {sorted(ZOOM_RULES)}, got {values['zoom']!r}.")
    for name in ("seed",):
        if name in values and (isinstance(values[name], bool) or not isinstance(values[name], int)):
            raise ValueError(f"{where}: {name} must be an integer, got {values[name]!r}.")
    settings = ValseSettings(**values)
    try:
        settings.study()  # the study's own checks of limit, chunk, batch_size, rome_samples
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return settings


def _valse_run(model, run_dir: Path, dataset, settings: ValseSettings, model_id: str, label: str = "",
               progress: bool = False) -> None:
    """The study's run directory for one model and one dataset: records, ``results.json`` and its report."""
    from hooked_clip.analyses.valse_negation.aggregate import aggregate
    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages, preprocessing_name
    from hooked_clip.analyses.valse_negation.report import write_outputs
    from hooked_clip.analyses.valse_negation.study import run_items, select_items
    from hooked_clip.analyses.sweep.manifest import SCENES

    items = load_items(dataset.path)
    images = None
    if dataset.images == SCENES:
        images = SceneImages()
    elif dataset.images is not None:
        images = FolderImages(dataset.images)
        images.check(select_items(items, settings.limit))
    records = run_items(model, run_dir, model_id=model_id, images=images, settings=settings.study(), items=items,
                        progress=progress)
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads, zoom=settings.zoom)
    results["model"] = label or model_id
    note = "none (text-only parts)" if images is None else f"{images.describe()}; pixels: {preprocessing_name(model)}"
    write_outputs(run_dir, records, results, model=model, model_id=label or model_id, images_note=note, items=items)


ANALYSES: dict[str, Analysis] = {
    "valse-negation": Analysis(_valse_settings, _valse_run, ("limit", "rome", "rome_samples", "seed", "zoom")),
}
