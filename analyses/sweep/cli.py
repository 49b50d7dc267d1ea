"""``hooked-clip sweep MANIFEST``: every model × dataset × analysis of a manifest, resumable, with a
cross-model report.

In this process by default; ``--backend ray`` runs each (model, dataset) unit as a Ray task on a local Ray
instance, or on a running cluster with ``--address`` (``auto``: the cluster this node belongs to; needs the
``sweep`` extra: pip install 'hooked_clip[sweep]'). Units already finished are skipped; an interrupted one
resumes from its records. Results land in ``--out`` (default ``runs/sweep-<manifest name>``): ``plan.json``,
``units/`` (one folder per checkpoint fingerprint and dataset) and ``report/report.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from hooked_clip.analyses.sweep.manifest import load_manifest
from hooked_clip.analyses.sweep.ray_backend import RAY_MISSING
from hooked_clip.analyses.sweep.run import run_sweep

SUBCOMMAND = "sweep"
HELP = "run many checkpoints × datasets × analyses (in-process or on Ray), with a cross-model report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="the sweep manifest (TOML: [[models]], [[datasets]], [analyses.NAME])")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default: in this process) or ray (each model × dataset unit a Ray task)")
    p.add_argument("--address", default=None,
                   help="with --backend ray: a running Ray cluster (e.g. 10.0.0.1:6379, or auto); default: a local Ray")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/sweep-<manifest name>)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> Path:
    if args.address is not None and args.backend != "ray":
        raise SystemExit("--address names a Ray cluster; add --backend ray, or drop --address.")
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise SystemExit(RAY_MISSING)
    manifest = load_manifest(args.manifest)
    out = args.out or Path("runs") / f"sweep-{args.manifest.stem}"
    sweep = run_sweep(manifest, out, backend=args.backend, address=args.address, progress=not args.no_progress)
    ran = sum(s == "ran" for s in sweep.unit_status.values())
    print(f"{ran} unit(s) run, {len(sweep.unit_status) - ran} already done; duplicates: "
          f"{sweep.plan.duplicates or 'none'}; flags: {len(sweep.plan.flags)}")
    for flag in sweep.plan.flags:
        print(f"  {flag['model']}: {flag['kind']}: {flag['message']}")
    print(f"wrote {sweep.out / 'report' / 'report.md'}")
    return sweep.out
