"""``hooked-clip localize`` end to end on the shipped demo model: every shipped dataset and a user's pairs file (a
few pairs each), the atlas report, resuming, and one-line user errors."""

from __future__ import annotations

import json

import pytest

from hooked_clip.analyses.cli import main
from hooked_clip.analyses.localize.pairs_file import dataset_names


def _run(argv, capsys):
    main(argv)
    return capsys.readouterr()


def test_list_shows_every_dataset_with_counts(capsys):
    out = _run(["localize", "--list"], capsys).out
    for name in dataset_names():
        assert name in out
    assert "valse:counting-hard          868" in out


def test_atlas_of_datasets_and_a_pairs_file_resumes_bit_for_bit(tmp_path, capsys):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"id": "m1", "caption": "There are two dogs.", "foil": "There are three dogs.", "phenomenon": "counting"}\n'
                    '{"id": "m2", "caption": "There is a dog.", "foil": "There is a dog."}\n'
                    '{"id": "m3", "caption": "There is a dog.", "foil": "There is a big red dog on a mat."}\n')
    out = tmp_path / "run"
    argv = ["localize", "--dataset", "valse:existence", "--dataset", "sugarcrepe:add-obj", "--data", str(mine),
            "--limit", "2", "--out", str(out), "--no-progress", "--chunk", "3"]
    _run(argv, capsys)
    results = json.loads((out / "results.json").read_text())
    phenomena = results["models"]["tiny-negation"]["phenomena"]
    assert {ph: t["pairs"] for ph, t in phenomena.items()} == {"valse:existence": 2, "sugarcrepe:add-obj": 2,
                                                                "counting": 1, "mine": 1}
    assert "text-only" in results["models"]["tiny-negation"]["metric"]
    report = (out / "report.md").read_text()
    assert "trained only on existence" in report and "text-only" in report and "![atlas](atlas_cte.png)" in report
    assert (out / "atlas_cte.png").stat().st_size > 1000 and (out / "atlas_heads.png").stat().st_size > 1000
    assert "m2,the caption equals the foil" in (out / "dropped.csv").read_text()
    (model_dir,) = out.glob("tiny-negation-fp-*")  # the model's chunks, in a directory named by its fingerprint
    chunks = sorted((model_dir / "chunks").glob("*.pt"))
    stamps = [c.stat().st_mtime_ns for c in chunks]
    _run(argv, capsys)  # resumes: every chunk reused, the same numbers
    assert [c.stat().st_mtime_ns for c in chunks] == stamps
    assert json.loads((out / "results.json").read_text())["models"]["tiny-negation"]["phenomena"] == phenomena


@pytest.mark.parametrize("argv, words", [
    (["localize"], "name the pairs"),
    (["localize", "--dataset", "valse:countinghard"], "Did you mean valse:counting-hard"),
    (["localize", "--dataset", "valse:existence", "--images", "."], "sees synthesized scenes, not photos"),
    (["localize", "--data", "nowhere.jsonl"], "no pairs file at nowhere.jsonl"),
    (["localize", "--dataset", "valse:existence", "--limit", "0"], "--limit must be a positive"),
])
def test_user_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and len(err.strip().splitlines()) == 1
