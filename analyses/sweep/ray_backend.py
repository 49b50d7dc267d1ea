"""``--backend ray``: every model's fingerprint, then every (model, dataset) unit, as one Ray task each.

Ray does the scheduling, the resources and the retries: a task asks for one CPU, and one GPU when the cluster
has any; a worker that dies (killed, out of memory, node lost) has its task retried by Ray (``max_retries``),
and the retried task resumes from the unit's per-item records. A unit that raises (a bad checkpoint, a bad
file) is not retried: the error is the user's to fix. On a multi-node cluster the manifest's files and the
output folder must be at the same path on every node (a shared file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hooked_clip.analyses.sweep.manifest import Manifest
from hooked_clip.analyses.sweep.run import SweepRun, fingerprints, model_fingerprint, plan_sweep, run_unit

RAY_MISSING = ("--backend ray needs Ray: pip install 'hooked_clip[sweep]' (or pip install 'ray>=2.40'); or run "
               "without --backend ray (in this process).")
MAX_RETRIES = 3  # Ray's retries of a task whose worker died


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def task_options(ray, manifest: Manifest) -> dict:
    """``[sweep] threads`` CPUs per task, and one GPU where the cluster has GPUs; retried by Ray when its worker
    dies."""
    gpus = ray.cluster_resources().get("GPU", 0)
    return {"num_cpus": manifest.threads, "num_gpus": 1 if gpus > 0 else 0, "max_retries": MAX_RETRIES, "retry_exceptions": False}


def run_ray(manifest: Manifest, out: Path, address: Optional[str] = None) -> SweepRun:
    """Run the sweep on Ray: an existing cluster at ``address`` (``"auto"``: the one this node belongs to), or
    the Ray instance this process already started, or a new local one (shut down again at the end)."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        started = True
    elif address is not None:
        raise ValueError(f"--address {address!r}: this process is already connected to Ray; drop --address.")
    try:
        options = task_options(ray, manifest)
        fingerprint_task = ray.remote(model_fingerprint).options(**options)
        unit_task = ray.remote(run_unit).options(**options)
        fps = fingerprints(manifest, out, lambda todo: ray.get([fingerprint_task.remote(m, manifest.device)
                                                                 for m in todo]))
        plan = plan_sweep(manifest, fps, out)
        refs = [unit_task.remote(unit, manifest, str(out)) for unit in plan.units]
        run = SweepRun(out, plan)
        for unit, status in zip(plan.units, ray.get(refs)):
            run.unit_status[str(unit.folder)] = status
        return run
    except ray.exceptions.RayTaskError as err:  # a unit's own error (not retried): raised as itself, not wrapped
        if isinstance(err.cause, Exception):
            raise err.cause from None
        raise
    finally:
        if started:
            ray.shutdown()
