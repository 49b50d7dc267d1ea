"""Run directories (``hooked_clip.analyses.run_dirs``): default names carry the model's name and fingerprint (two
weights under one name never share one; one model under two names has one fingerprint), an explicit ``--out``
is used as given and refused when it holds a run of other weights, and files get into a run atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hooked_clip import load_model
from hooked_clip.analyses.run_dirs import (ChunkStore, RunDirMismatchError, atomic_save, atomic_write, claim,
                                           default_run_dir, final_name, model_dir_name, models_record, safe_name)
from hooked_clip.fingerprint import fingerprint

ROOT = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    """Raised by a stub in place of the measuring, once the run directory is chosen."""


@pytest.fixture(scope="module")
def demo():
    return load_model("tiny-negation", device="cpu")


def test_names_carry_the_fingerprint_so_weights_never_share_a_directory(demo):
    other = load_model("tiny-pair-base", device="cpu")
    fp, fp_other = fingerprint(demo), fingerprint(other)
    assert fp != fp_other
    # one name, two weights: two directories; the same weights under two names: one fingerprint in both
    assert model_dir_name("m", fp) != model_dir_name("m", fp_other)
    assert model_dir_name("a b", fp).endswith(fp.short) and model_dir_name("a_b", fp).endswith(fp.short)
    assert model_dir_name("open_clip:ViT-B-32:openai", fp) == f"open_clip_ViT-B-32_openai-{fp.short}"
    assert safe_name("/data/ckpt/") == "data_ckpt" and safe_name("//") == "model"
    assert default_run_dir("valse-negation", ("tiny-negation", fp)) == Path("runs") / f"valse-negation-tiny-negation-{fp.short}"
    assert default_run_dir("checkpoint-diff", ("a", fp), ("b", fp_other)) == \
        Path("runs") / f"checkpoint-diff-a-{fp.short}-vs-b-{fp_other.short}"
    assert re.fullmatch(r"fp-[0-9a-f]{12}", fp.short)


def test_valse_negation_default_run_dir(demo, tmp_path, monkeypatch):
    """The default run directory and a comparison's sub-directories: <name>-<fingerprint>, the name first."""
    from hooked_clip.analyses.cli import main

    seen = []

    def stop(model, out, **kwargs):
        seen.append(Path(out))
        raise _Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hooked_clip.analyses.valse_negation.cli.run_items", stop)
    fp = fingerprint(demo).short
    with pytest.raises(_Stop):
        main(["valse-negation", "--model", "tiny-negation", "--no-progress"])
    with pytest.raises(_Stop):
        main(["valse-negation", "--model", "tiny-negation", "--model", "tiny-pair-base", "--no-progress"])
    with pytest.raises(_Stop):
        main(["valse-negation", "--model", "tiny-negation", "--out", "mine", "--no-progress"])
    assert seen == [Path("runs") / f"valse-negation-tiny-negation-{fp}",
                    Path("runs") / "valse-negation-comparison" / f"tiny-negation-{fp}", Path("mine")]


def test_localize_default_run_dir(demo, tmp_path, monkeypatch):
    from hooked_clip.analyses.cli import main

    seen = []

    def stop(model, pairs, run_dir, **kwargs):
        seen.append(Path(run_dir))
        raise _Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hooked_clip.analyses.localize.study.run_model", stop)
    fp = fingerprint(demo).short
    argv = ["localize", "--dataset", "valse:existence", "--limit", "2", "--no-progress"]
    with pytest.raises(_Stop):
        main(argv)
    with pytest.raises(_Stop):
        main([*argv, "--model", "tiny-negation", "--model", "tiny-negation-pixels"])
    with pytest.raises(_Stop):
        main([*argv, "--out", "mine"])
    assert seen == [Path("runs") / f"localize-tiny-negation-{fp}" / f"tiny-negation-{fp}",
                    Path("runs") / "localize-atlas" / f"tiny-negation-{fp}", Path("mine") / f"tiny-negation-{fp}"]


def test_readme_and_tutorial_name_the_shipped_models_real_default_directories():
    """The README's "the report lands in runs/..." is the directory the command writes (the fingerprint of the
    shipped weights, not a placeholder)."""
    pixels = load_model("tiny-negation-pixels", device="cpu")
    want = default_run_dir("valse-negation", ("tiny-negation-pixels", fingerprint(pixels)))
    assert f"`{want}/`" in (ROOT / "README.md").read_text()
    assert f"`{want}/`" in (ROOT / "docs" / "tutorials" / "05-valse-study.md").read_text()


def test_claim_refuses_other_weights_naming_both_and_other_settings_naming_the_fields(demo, tmp_path):
    other = load_model("tiny-pair-base", device="cpu")
    config = {"version": 1, "chunk": 4, "models": models_record(model=("demo", fingerprint(demo)))}
    claim(tmp_path / "run", config)
    claim(tmp_path / "run", config)  # the same run: accepted
    renamed = {**config, "models": models_record(model=("demo-copy", fingerprint(demo)))}
    claim(tmp_path / "run", renamed)  # the same weights under another name: one model
    with pytest.raises(RunDirMismatchError, match=rf"other weights \(fingerprint differs: model 'demo' "
                                                  rf"\({fingerprint(demo).short}\)\), not of model 'demo' "
                                                  rf"\({fingerprint(other).short}\)"):
        claim(tmp_path / "run", {**config, "models": models_record(model=("demo", fingerprint(other)))})
    with pytest.raises(RunDirMismatchError, match=r"differs in \['chunk'\]: \{'chunk': 4\} vs \{'chunk': 8\}"):
        claim(tmp_path / "run", {**config, "chunk": 8})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == config  # never overwritten
    (tmp_path / "loose" / "chunks").mkdir(parents=True)
    (tmp_path / "loose" / "chunks" / "00000.pt").write_bytes(b"x")
    with pytest.raises(RunDirMismatchError, match="no config.json"):
        claim(tmp_path / "loose", config, has_results=lambda d: any((d / "chunks").glob("*.pt")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        claim(tmp_path / "file", config)


def test_chunk_store_reuses_only_its_own_key_and_recomputes_a_damaged_chunk(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    fields = {"a": torch.arange(3.0), "ids": ["x", "y"]}
    store.save(0, "k0", fields)
    loaded = store.load(0, "k0")
    assert torch.equal(loaded["a"], fields["a"]) and loaded["ids"] == ["x", "y"]
    assert store.load(0, "other key") is None and store.load(1, "k0") is None
    store.path(0).write_bytes(store.path(0).read_bytes()[:20])  # cut short, as by a full disk
    assert store.load(0, "k0") is None
    assert ChunkStore(None).load(0, "k0") is None  # nothing kept: always computed
    ChunkStore(None).save(0, "k0", fields)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, "old")

    def half(tmp):
        tmp.write_text("ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    names = []
    atomic_save(tmp_path / "fig.png", lambda tmp: names.append(tmp.name), suffix=".tmp.png")
    atomic_save(tmp_path / "a.b.json", lambda tmp: names.append(tmp.name))
    assert [final_name(n) for n in names] == ["fig.png", "a.b.json"] and final_name("x/report.md") == "report.md"
