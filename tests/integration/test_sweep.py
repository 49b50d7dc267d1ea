"""Sweeps: three random-weight checkpoints (two of them the same weights under different names) × two small
VALSE-format datasets, in-process and on a local Ray instance (2 CPUs) with a worker killed mid-unit.

References: each unit's records against the study run directly on the model (``run_items``, not the sweep),
one caption-foil cosine against transformers' own text features, and the Ray run against the uninterrupted
in-process run, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import VALSE, hf_clip

from hooked_clip.analyses.cli import main
from hooked_clip.analyses.sweep.manifest import ManifestError, ModelSpec, load_manifest, parse_manifest
from hooked_clip.analyses.sweep.report import collect
from hooked_clip.analyses.sweep.run import quickgelu_flags, run_sweep
from hooked_clip.analyses.valse_negation.data import load_items
from hooked_clip.analyses.valse_negation.study import Settings, run_items
from hooked_clip.fingerprint import Fingerprint

MANIFEST = """
[sweep]
threads = 1

[[models]]
name = "alpha"
path = "ckpt/alpha"
[[models]]
name = "beta"
path = "ckpt/beta"
[[models]]
name = "alpha-renamed"
path = "ckpt/alpha-copy"

[[datasets]]
name = "small"
path = "data/small.json"
[[datasets]]
name = "smaller"
path = "data/smaller.json"

[analyses.valse-negation]
chunk = 2
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """The manifest's folder: the checkpoints (alpha-copy = alpha's weights in another folder) and datasets."""
    root = tmp_path_factory.mktemp("sweep")
    alpha = hf_clip("tiny_argmax", seed=0)
    alpha.save_pretrained(root / "ckpt" / "alpha")
    alpha.save_pretrained(root / "ckpt" / "alpha-copy")
    hf_clip("tiny_argmax", seed=3).save_pretrained(root / "ckpt" / "beta")
    data = json.loads(VALSE.read_text())
    keys = list(data)
    (root / "data").mkdir()
    (root / "data" / "small.json").write_text(json.dumps({k: data[k] for k in keys[::20]}))  # both negation sides
    (root / "data" / "smaller.json").write_text(json.dumps({k: data[k] for k in keys[7::33]}))
    (root / "sweep.toml").write_text(MANIFEST)
    return root


@pytest.fixture(scope="module")
def in_process(sweep_dir):
    out = sweep_dir / "out-local"
    return run_sweep(load_manifest(sweep_dir / "sweep.toml"), out, progress=False), out


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def _unit_files(out: Path) -> dict[str, object]:
    """Every record and results file of every unit, read (the numbers a sweep produced)."""
    files = {}
    for path in sorted((out / "units").rglob("*.json")):
        rel = str(path.relative_to(out))
        if path.parent.name == "items" or path.name in ("results.json", "config.json"):
            files[rel] = json.loads(path.read_text())
    return files


def test_in_process_sweep_runs_each_fingerprint_once_and_matches_the_study_run_directly(sweep_dir, in_process):
    sweep, out = in_process
    assert sweep.plan.duplicates == {"alpha-renamed": "alpha"}
    assert sweep.plan.flags == []
    assert sorted(sweep.unit_status.values()) == ["ran"] * 4  # 2 distinct fingerprints × 2 datasets
    # the reference: the study run directly on beta (no sweep), in its own folder
    manifest = load_manifest(sweep_dir / "sweep.toml")
    beta = manifest.models[1].load("cpu")
    items = load_items(sweep_dir / "data" / "small.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the manifest's units (threads = 1): the same numbers, bit for bit
    try:
        direct = run_items(beta, sweep_dir / "direct", model_id=beta.fingerprint.short, settings=Settings(chunk=2),
                           items=items, progress=False)
    finally:
        torch.set_num_threads(threads)
    direct = json.loads(json.dumps(direct))  # as records are stored (NaN where a row has no token)
    unit = next(u for u in sweep.plan.units if u.model.name == "beta" and u.dataset.name == "small")
    run_dir = next((out / unit.folder).glob("valse-negation-*"))
    swept = {p.stem: json.loads(p.read_text()) for p in (run_dir / "items").glob("*.json")}
    assert swept == direct
    # one number against transformers itself: the caption-foil cosine of the first item
    hf = hf_clip("tiny_argmax", seed=3)
    ids = beta.text.as_tokens([items[0].caption, items[0].foil])
    with torch.no_grad():
        feats = hf.get_text_features(input_ids=ids)
        feats = getattr(feats, "pooler_output", feats)
    expected = torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=0).item()
    assert swept[items[0].id]["similarity"] == pytest.approx(expected, abs=1e-5)
    # the report: every name, the duplicate carrying its twin's numbers
    results = collect(out)
    df = results.to_dataframe()
    assert set(df.model) == {"alpha", "beta", "alpha-renamed"} and results.missing == []
    twin = df[df.model == "alpha-renamed"].drop(columns="model").reset_index(drop=True)
    assert twin.equals(df[df.model == "alpha"].drop(columns="model").reset_index(drop=True))
    assert (out / "report" / "report.md").exists() and (out / "report" / "sweep_metrics.png").exists()
    assert (out / "report" / "small" / "comparison.md").exists()


def test_a_finished_sweep_is_skipped_without_loading_a_model(sweep_dir, in_process, capsys, monkeypatch):
    _, out = in_process
    before = _unit_files(out)

    def no_load(self, device=None):
        raise AssertionError(f"{self.name} was loaded, though every unit is done and its files are unchanged")

    monkeypatch.setattr(ModelSpec, "load", no_load)
    main(["sweep", str(sweep_dir / "sweep.toml"), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "0 unit(s) run, 4 already done" in printed and "alpha-renamed" in printed
    assert _unit_files(out) == before


def test_ray_sweep_with_a_worker_killed_mid_unit_equals_the_in_process_run(sweep_dir, in_process, local_ray):
    _, reference = in_process
    out = sweep_dir / "out-ray"
    manifest = load_manifest(sweep_dir / "sweep.toml")
    result, error = {}, []

    def sweep():
        try:
            result["run"] = run_sweep(manifest, out, backend="ray", progress=False, report=False)
        except Exception as err:  # noqa: BLE001  (re-raised in the test's thread below)
            error.append(err)

    thread = threading.Thread(target=sweep)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for running in (out / "units").glob("*/*/running.json") if (out / "units").exists() else ():
            unit = running.parent
            records = list(unit.glob("valse-negation-*/items/*.json"))
            if records and not (unit / "unit.json").exists():
                pid = json.loads(running.read_text())["pid"]
                kept = {p: p.stat().st_ino for p in records}
                os.kill(pid, signal.SIGKILL)  # the worker dies mid-unit; Ray retries its task
                killed = (unit, pid, kept)
                break
        time.sleep(0.002)
    thread.join(timeout=180)
    assert not error, error
    assert killed is not None, "no unit was caught mid-way (the test could not kill a worker)"
    unit, pid, kept = killed
    assert json.loads((unit / "running.json").read_text())["pid"] != pid  # a new worker finished it
    assert all(p.stat().st_ino == ino for p, ino in kept.items())  # resumed: records written before the kill kept
    assert sorted(result["run"].unit_status.values()) == ["ran"] * 4
    assert _unit_files(out) == _unit_files(reference)  # bit for bit, every unit


def test_quickgelu_trap_is_flagged(tmp_path):
    fp = dict(weights="w" * 64, text_pooling="argmax", vision_act_fn=None, logit_scale=4.6, logit_bias=None)
    openai_file = tmp_path / "openai_vit_b32.pt"
    other_file = tmp_path / "finetuned.pt"
    openai_file.write_bytes(b"")
    other_file.write_bytes(b"")
    models = [ModelSpec("plain", open_clip="ViT-B-32", pretrained=str(openai_file)),
              ModelSpec("right", open_clip="ViT-B-32-quickgelu", pretrained=str(openai_file)),
              ModelSpec("unknown", open_clip="ViT-B-32", pretrained=str(other_file))]
    fps = {"plain": Fingerprint(text_act_fn="gelu", **fp), "right": Fingerprint(text_act_fn="quick_gelu", **fp),
           "unknown": Fingerprint(text_act_fn="gelu", **{**fp, "weights": "v" * 64})}
    flags = quickgelu_flags(models, fps)
    kinds = sorted((f["model"], f["kind"]) for f in flags)
    # plain: same weights as right under another activation, and an OpenAI file under the GELU name
    assert kinds == [("plain", "trap"), ("plain", "trap"), ("right", "trap"), ("unknown", "check")]
    assert any("ViT-B-32-quickgelu" in f["message"] for f in flags if f["model"] == "plain")


@pytest.mark.parametrize("change, words", [
    ({"models": [{"name": "a"}]}, "exactly one of path"),
    ({"models": [{"name": "a", "path": "./nowhere"}]}, "does not exist"),
    ({"models": [{"name": "a", "path": "x/y", "weights": 1}]}, "unknown field(s) ['weights']"),
    ({"models": [{"name": "a", "open_clip": "ViT-B-33", "pretrained": "openai"}]}, "open_clip has no model 'ViT-B-33'"),
    ({"models": [{"name": "a", "path": "x/y"}, {"name": "a", "path": "x/z"}]}, "names ['a'] more than once"),
    ({"datasets": [{"name": "d", "path": "missing.json"}]}, "does not exist"),
    ({"analyses": {"atlas": {}}}, "unknown analysis [analyses.atlas]"),
    ({"analyses": {"valse-negation": {"limt": 3}}}, "unknown setting(s) ['limt']"),
    ({"analyses": {"valse-negation": {"chunk": 0}}}, "chunk"),
    ({"analyses": {}}, "no [analyses.NAME] table"),
    ({"sweep": {"threads": 0}}, "threads must be a positive integer"),
    ({"models": [{"name": "a", "open_clip": "ViT-B-32"}]}, "needs pretrained"),
    ({"models": [{"name": "a", "path": "tiny-negation", "tokenizer": "."}]}, "carries its own tokenizer"),
    ({"datasets": [{"name": "d/1", "path": "d.json"}]}, "names the dataset's folders"),
])
def test_every_bad_manifest_field_is_one_clear_error(tmp_path, change, words):
    (tmp_path / "d.json").write_text(json.dumps({k: v for k, v in list(json.loads(VALSE.read_text()).items())[:2]}))
    good = {"models": [{"name": "a", "path": "tiny-negation"}], "datasets": [{"name": "d", "path": "d.json"}],
            "analyses": {"valse-negation": {}}}
    with pytest.raises(ManifestError) as err:
        parse_manifest({**good, **change}, tmp_path / "m.toml")
    assert words in str(err.value)


def test_cli_bad_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "m.toml").write_text("[[models]]\nname = 'a'\n")
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(tmp_path / "m.toml")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exactly one of path" in err


def test_ray_tasks_ask_for_a_gpu_only_where_the_cluster_has_one():
    from hooked_clip.analyses.sweep.ray_backend import task_options

    class FakeRay:  # only what task_options reads
        def __init__(self, resources):
            self.resources = resources

        def cluster_resources(self):
            return self.resources

    manifest = parse_manifest({"models": [{"name": "a", "path": "tiny-negation"}],
                               "datasets": [{"name": "d", "path": str(VALSE)}], "analyses": {"valse-negation": {}},
                               "sweep": {"threads": 2}}, VALSE.parent / "m.toml")
    assert task_options(FakeRay({"CPU": 8.0, "GPU": 2.0}), manifest)["num_gpus"] == 1
    cpu_only = task_options(FakeRay({"CPU": 8.0}), manifest)
    assert cpu_only["num_gpus"] == 0 and cpu_only["num_cpus"] == 2 and cpu_only["max_retries"] > 0


def test_cli_address_without_ray_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(tmp_path / "m.toml"), "--address", "auto"])
    assert exit_.value.code == 2 and "add --backend ray" in capsys.readouterr().err


def test_a_units_own_error_on_ray_is_one_line_not_a_ray_traceback(sweep_dir, local_ray, capsys):
    (sweep_dir / "no-images").mkdir(exist_ok=True)
    manifest = MANIFEST.replace('path = "data/smaller.json"', 'path = "data/smaller.json"\nimages = "no-images"')
    (sweep_dir / "bad.toml").write_text(manifest)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(sweep_dir / "bad.toml"), "--backend", "ray", "--out", str(sweep_dir / "out-bad"),
              "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "holds none of the" in err
    assert not any(ray_text in err for ray_text in ("RayTaskError", "ray::", 'File "'))  # the error, not Ray's wrapping
