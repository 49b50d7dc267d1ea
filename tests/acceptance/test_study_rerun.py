"""A rerun of the study rebuilds no output (report, tables, figures, attention view) when nothing it is built from
changed, and rebuilds them all when an input changed (an item record) or an output was removed
(analyses/valse_negation/output_cache.py). Behaviour, not timing: benchmarks/README.md has the times."""

from __future__ import annotations

import json

import pytest

from hooked_clip.analyses.cli import main

OUTPUTS = ("report.md", "results.json", "per_item.json", "items.csv", "heads.png", "attention.html")


def _stamps(run):
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}


def _run(run, capsys, *extra):
    main(["valse-negation", "--limit", "8", "--out", str(run), "--no-progress", *extra])
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rerun") / "run"
    main(["valse-negation", "--limit", "8", "--out", str(run), "--no-progress"])
    return run


def test_rerun_with_nothing_changed_rebuilds_nothing(first_run, capsys):
    before = _stamps(first_run)
    assert set(OUTPUTS) <= set(before) and ".outputs.json" in before
    out = _run(first_run, capsys)
    assert "up to date" in out and "wrote" not in out
    assert _stamps(first_run) == before  # not one file rewritten, the digest file included


def test_changed_input_or_missing_output_rebuilds(first_run, capsys):
    (first_run / "heads.png").unlink()  # an output removed
    assert "wrote" in _run(first_run, capsys) and (first_run / "heads.png").is_file()

    record = next((first_run / "items").glob("*.json"))  # a measured input changed on disk
    rec = json.loads(record.read_text())
    rec["caption"] = rec["caption"] + " (edited)"
    record.write_text(json.dumps(rec))
    before = _stamps(first_run)
    assert "wrote" in _run(first_run, capsys)
    assert all(_stamps(first_run)[name] != before[name] for name in OUTPUTS)
    assert "(edited)" in (first_run / "items.csv").read_text()
    assert "up to date" in _run(first_run, capsys)


def test_threads_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["valse-negation", "--threads", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "--threads must be a positive number of CPU threads, got 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_demo_run_puts_torch_threads_back(first_run, capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _run(first_run, capsys)  # runs on 1 thread (the demo models' default), then restores
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
