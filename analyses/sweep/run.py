"""Plan and run a sweep: fingerprint every model, find duplicates and the QuickGELU trap, run each
(model, dataset) unit once, in-process (here) or as Ray tasks (``ray_backend``).

The output folder::

    OUT/plan.json                                      models, fingerprints, duplicates, flags, units
    OUT/fingerprints.json                              fingerprints of local checkpoints, by their files' stats
    OUT/units/<fingerprint>/<dataset>-<hash>/unit.json  a finished unit (its key); absent while it runs
    OUT/units/<fingerprint>/<dataset>-<hash>/running.json  the worker (host, pid) that last started it
    OUT/units/<fingerprint>/<dataset>-<hash>/<analysis>-<settings hash>/   the analysis' run directory
                                                       (config.json, items/<id>.json, results.json)
    OUT/report/                                        the cross-model report (``report.py``)

A unit is keyed by the checkpoint fingerprint (weights hash, activation, pooling, logit scale), the dataset's
content hash and each analysis' settings hash; a unit whose ``unit.json`` holds its key is skipped, and an
unfinished one resumes from its analyses' per-item records (the study's resumable run directories).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch

from hooked_clip.fingerprint import Fingerprint
from hooked_clip.analyses.run_dirs import atomic_write
from hooked_clip.analyses.sweep.analyses import ANALYSES
from hooked_clip.analyses.sweep.manifest import DatasetSpec, Manifest, ModelSpec
from hooked_clip.loaders.files import read_json

UNIT_VERSION = 1
HASH_CHARS = 12  # of a dataset's or settings' sha256 in a directory name


@dataclass(frozen=True)
class Unit:
    """One (model, dataset) pair: the model that runs (the first name of its duplicates), its fingerprint,
    the dataset, and the analyses with their settings hashes."""

    model: ModelSpec
    fingerprint: Fingerprint
    dataset: DatasetSpec
    dataset_hash: str
    analyses: tuple[tuple[str, str], ...]  # (analysis, settings hash)

    @property
    def key(self) -> dict:
        return {"unit_version": UNIT_VERSION, "fingerprint": self.fingerprint.digest, "dataset": self.dataset_hash,
                "analyses": {name: h for name, h in self.analyses}}

    @property
    def folder(self) -> Path:
        return Path("units") / self.fingerprint.short / f"{self.dataset.name}-{self.dataset_hash[:HASH_CHARS]}"

    @staticmethod
    def analysis_folder(name: str, settings_hash: str) -> str:
        return f"{name}-{settings_hash[:HASH_CHARS]}"

    @property
    def label(self) -> str:
        return f"{self.model.name} × {self.dataset.name}"


@dataclass
class Plan:
    """What a sweep runs: each model's fingerprint, the duplicates (name → the name that runs), the flags
    (QuickGELU trap, ...) and the units."""

    fingerprints: dict[str, Fingerprint]
    duplicates: dict[str, str]
    flags: list[dict]
    units: list[Unit]

    def to_json(self, manifest: Manifest) -> dict:
        return {"manifest": str(manifest.path),
                "models": {m.name: {"source": m.describe(), "fingerprint": self.fingerprints[m.name].as_dict(),
                                    "runs_as": self.duplicates.get(m.name, m.name)} for m in manifest.models},
                "duplicates": self.duplicates, "flags": self.flags,
                "datasets": {d.name: {"path": d.path, "images": d.images} for d in manifest.datasets},
                "units": [{"model": u.model.name, "dataset": u.dataset.name, "folder": str(u.folder), "key": u.key}
                          for u in self.units]}


@dataclass
class SweepRun:
    """A finished sweep: its plan, where it wrote, and what each unit did (``ran`` / ``skipped``)."""

    out: Path
    plan: Plan
    unit_status: dict[str, str] = field(default_factory=dict)  # unit folder -> "ran" | "skipped"


def model_fingerprint(spec: ModelSpec, device: Optional[str] = None) -> dict:
    """Load one model and return its fingerprint (as a dict: what a Ray task sends back)."""
    model = spec.load(device)
    return model.fingerprint.as_dict()


FINGERPRINTS = "fingerprints.json"  # OUT/: fingerprints of models read from local files, by their files' stats


def source_signature(spec: ModelSpec) -> Optional[str]:
    """What a model is read from, where that is local files only: the spec and each file's path, size and
    modification time (sha256). None for a hub id, a pretrained tag or a shipped model (fingerprinted afresh)."""
    if spec.open_clip is not None:
        if spec.pretrained is None or not os.path.isfile(spec.pretrained):
            return None
        files = [Path(spec.pretrained)]
    elif spec.path is not None and os.path.isdir(spec.path):
        files = sorted(p for p in Path(spec.path).rglob("*") if p.is_file())
    else:
        return None
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([spec.open_clip, spec.path, spec.pretrained, stats]).encode()).hexdigest()


def fingerprints(manifest: Manifest, out: Path, compute: Callable[[list[ModelSpec]], list[dict]]) -> dict[str, Fingerprint]:
    """Every model's fingerprint: from ``OUT/fingerprints.json`` where its local files are unchanged (a finished
    sweep run again loads no model), else by ``compute`` (loading the models: here or as Ray tasks). A unit
    checks the fingerprint of the model it loads against the plan's, so a stale entry cannot pass unnoticed."""
    path = out / FINGERPRINTS
    cache = read_json(path, "the sweep's fingerprint cache (JSON)", f"Delete {path}.") if path.exists() else {}
    signatures = {m.name: source_signature(m) for m in manifest.models}
    found: dict[str, dict] = {}
    todo = []
    for m in manifest.models:
        if signatures[m.name] is not None and signatures[m.name] in cache:
            found[m.name] = cache[signatures[m.name]]
        else:
            todo.append(m)
    for m, fp in zip(todo, compute(todo) if todo else []):
        found[m.name] = fp
        if signatures[m.name] is not None:
            cache[signatures[m.name]] = fp
    if todo:
        atomic_write(path, json.dumps(cache, indent=1))
    return {m.name: Fingerprint.from_dict(found[m.name]) for m in manifest.models}


def make_plan(manifest: Manifest, fingerprints: dict[str, Fingerprint]) -> Plan:
    """The units of ``manifest`` given each model's fingerprint: one model per fingerprint (the first name in
    the manifest; the others are its duplicates), every dataset, every analysis."""
    runs_as: dict[str, str] = {}
    duplicates = {}
    for m in manifest.models:
        first = runs_as.setdefault(fingerprints[m.name].digest, m.name)
        if first != m.name:
            duplicates[m.name] = first
    hashes = [(name, manifest.settings_hash(name)) for name in manifest.analyses]
    units = [Unit(m, fingerprints[m.name], d, d.content_hash, tuple(hashes))
             for m in manifest.models if m.name not in duplicates for d in manifest.datasets]
    return Plan(fingerprints, duplicates, quickgelu_flags(manifest.models, fingerprints), units)


def quickgelu_flags(models, fingerprints: dict[str, Fingerprint]) -> list[dict]:
    """Where a checkpoint may run with the wrong activation. OpenAI's weights use QuickGELU; open_clip's
    ``ViT-B-32`` (no ``-quickgelu``) builds GELU, and a weights file does not record which it needs, so OpenAI
    weights loaded from a file under the plain name run -- silently -- with the wrong activation. Flagged:

    - ``trap``: the same weights run with two activations in this sweep (one of them is wrong);
    - ``trap``: an open_clip weights file whose name says OpenAI loaded under a name that has a ``-quickgelu``
      twin (e.g. ``ViT-B-32`` + ``openai_b32.pt``);
    - ``check``: any other weights file under such a name (whether it is OpenAI-derived cannot be told).
    """
    flags = []
    by_weights: dict[str, list] = {}
    for m in models:
        by_weights.setdefault(fingerprints[m.name].weights, []).append(m)
    for group in by_weights.values():
        acts = {(fingerprints[m.name].text_act_fn, fingerprints[m.name].vision_act_fn) for m in group}
        if len(acts) > 1:
            desc = "; ".join(f"{m.name!r} with {fingerprints[m.name].text_act_fn}" for m in group)
            for m in group:
                flags.append({"model": m.name, "kind": "trap", "message":
                              f"the same weights run with different activations ({desc}): at most one is right; "
                              "OpenAI-derived weights need QuickGELU (open_clip's NAME-quickgelu)."})
    for m in models:
        if m.open_clip is None or m.open_clip.endswith("-quickgelu") or m.pretrained is None:
            continue
        twin = f"{m.open_clip}-quickgelu"
        if twin not in open_clip.list_models() or not os.path.isfile(m.pretrained):
            continue  # a pretrained tag: the loader takes the activation from the tag's config
        act = fingerprints[m.name].text_act_fn
        if act == "quick_gelu":
            continue
        if "openai" in Path(m.pretrained).name.lower():
            flags.append({"model": m.name, "kind": "trap", "message":
                          f"the file {Path(m.pretrained).name!r} looks OpenAI-derived but runs as {m.open_clip!r} "
                          f"with {act}; OpenAI weights need QuickGELU: write open_clip = {twin!r}."})
        else:
            flags.append({"model": m.name, "kind": "check", "message":
                          f"a weights file under {m.open_clip!r} runs with {act}; if the weights are OpenAI-derived "
                          f"(e.g. fine-tuned from pretrained='openai') write open_clip = {twin!r}."})
    return flags


def unit_done(out: Path, unit: Unit) -> bool:
    path = out / unit.folder / "unit.json"
    if not path.exists():
        return False
    record = read_json(path, "a finished unit's record (JSON)", f"Delete {path} to run the unit again.")
    return record.get("key") == unit.key


def run_unit(unit: Unit, manifest: Manifest, out, device: Optional[str] = None, progress: bool = False) -> str:
    """Run one unit (every analysis of the manifest on one model and one dataset), resuming from its records;
    ``"skipped"`` where it was already done. What a Ray task runs, unchanged."""
    out = Path(out)
    folder = out / unit.folder
    if unit_done(out, unit):
        return "skipped"
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(manifest.threads)  # the same in-process and on Ray: the same numbers, bit for bit
    try:
        return _run_unit(unit, manifest, folder, device, progress, start)
    finally:
        torch.set_num_threads(threads)


def _run_unit(unit: Unit, manifest: Manifest, folder: Path, device: Optional[str], progress: bool, start: float) -> str:
    atomic_write(folder / "running.json", json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                      "started": time.time()}))
    model = unit.model.load(device if device is not None else manifest.device)
    if model.fingerprint != unit.fingerprint:
        raise ValueError(f"{unit.model.name} ({unit.model.describe()}) changed since the sweep was planned (its "
                         f"fingerprint is now {model.fingerprint.short}, was {unit.fingerprint.short}); run the sweep "
                         "again to plan it anew.")
    for name, settings_hash in unit.analyses:
        run_dir = folder / unit.analysis_folder(name, settings_hash)
        ANALYSES[name].run(model, run_dir, unit.dataset, manifest.analyses[name],
                           model_id=unit.fingerprint.short, label=unit.model.name, progress=progress)  # not a name: a unit is its weights
    atomic_write(folder / "unit.json", json.dumps({
        "key": unit.key, "model": unit.model.name, "source": unit.model.describe(), "dataset": unit.dataset.name,
        "fingerprint": unit.fingerprint.as_dict(), "analyses": {n: unit.analysis_folder(n, h) for n, h in unit.analyses},
        "elapsed_s": time.perf_counter() - start}, indent=1))
    return "ran"


def plan_sweep(manifest: Manifest, fingerprints: dict[str, Fingerprint], out: Path) -> Plan:
    plan = make_plan(manifest, fingerprints)
    atomic_write(out / "plan.json", json.dumps(plan.to_json(manifest), indent=1))
    return plan


def run_sweep(manifest: Manifest, out, *, backend: str = "local", address: Optional[str] = None,
              progress: bool = True, report: bool = True) -> SweepRun:
    """Run every unit of ``manifest`` into ``out`` (``backend``: ``"local"`` in this process, ``"ray"`` as Ray
    tasks on ``address`` or a local Ray instance) and write the cross-model report."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; a sweep writes a folder there.")
    if backend == "ray":
        from hooked_clip.analyses.sweep.ray_backend import run_ray

        run = run_ray(manifest, out, address=address)
    elif backend == "local":
        if address is not None:
            raise ValueError("--address names a Ray cluster; add --backend ray, or drop --address.")
        fps = fingerprints(manifest, out, lambda todo: [model_fingerprint(m, manifest.device) for m in todo])
        plan = plan_sweep(manifest, fps, out)
        run = SweepRun(out, plan)
        for unit in plan.units:
            run.unit_status[str(unit.folder)] = run_unit(unit, manifest, out, progress=progress)
    else:
        raise ValueError(f"backend {backend!r}: use 'local' (in this process) or 'ray'.")
    if report:
        from hooked_clip.analyses.sweep.report import write_report

        write_report(out)
    return run
