"""The negation study on a user's own data (issue #29's "Why"): every dropped item named with its reason, the demo
models refusing photos alike from the command line and from Python, the scene builder taking the study's item
objects (built in Python too), and an unknown subject named with the nearest known ones."""

from __future__ import annotations

import json

import pytest

from hooked_clip.analyses.cli import main
from hooked_clip.analyses.valse_negation import EXISTENCE_JSON
from hooked_clip.analyses.valse_negation.data import Item, align, load_items
from hooked_clip.analyses.valse_negation.demo_scenes import synthesize_scene
from hooked_clip.analyses.valse_negation.images import FolderImages, SceneImages
from hooked_clip.analyses.valse_negation.study import Settings, run_items
from hooked_clip.errors import UnknownObjectError

pytestmark = pytest.mark.usefixtures("one_thread")
NOT_ALIGNED = ["existence_visual7w_2390942", "existence_visual7w_2362471"]  # "You see no people .", "... have no tusks."


@pytest.fixture(scope="module")
def random_demo():
    from hooked_clip.models.tiny_negation import build
    from hooked_clip.models.tiny_negation.world import OBJECTS

    return build(OBJECTS, seed=3)


def _own_file(tmp_path, n_valid=5):
    """VALSE records as a user writes them: 5 that align, 2 the paper's alignment drops, 1 not validated."""
    data = json.loads(EXISTENCE_JSON.read_text())
    aligned = [x.id for x in load_items() if align(x) is not None][:n_valid]
    invalid = [k for k, x in data.items() if x["mturk"]["caption"] < 2][:1]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({k: data[k] for k in aligned + NOT_ALIGNED + invalid}))
    return path, invalid[0]


def test_every_dropped_item_is_named_with_its_reason(tmp_path, capsys):
    path, invalid = _own_file(tmp_path)
    out = tmp_path / "run"
    main(["valse-negation", "--model", "tiny-negation", "--data", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert "3 items left out of the aligned pairs (validity filter: 1, alignment: 2; 7 items measured)" in err
    expected = {invalid: "validity filter", **dict.fromkeys(NOT_ALIGNED, "alignment")}
    for rid, stage in expected.items():
        assert f"{rid}: {stage}: " in err
    csv_rows = (out / "dropped.csv").read_text().splitlines()
    assert csv_rows[0] == "id,stage,reason" and len(csv_rows) == 4
    results = json.loads((out / "results.json").read_text())
    assert {d["id"]: d["stage"] for d in results["dropped"]} == expected
    reasons = {d["id"]: d["reason"] for d in results["dropped"]}
    assert "0 of 3 annotators" in reasons[invalid] or "1 of 3 annotators" in reasons[invalid]
    assert "'You see no people .'" in reasons[NOT_ALIGNED[0]]
    report = (out / "report.md").read_text()
    assert all(f"`{rid}`" in report for rid in expected)
    assert results["counts"]["valid"] == 7 and results["counts"]["aligned"] == 5


def test_demo_models_refuse_photos_from_the_command_line_and_from_python(tmp_path, capsys, random_demo):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["valse-negation", "--model", "tiny-negation", "--images", str(tmp_path / "photos"), "--limit", "2",
              "--out", str(tmp_path / "cli"), "--no-progress"])
    cli = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(cli.splitlines()) == 1
    with pytest.raises(ValueError) as err:
        run_items(random_demo, tmp_path / "py", model_id="tiny-negation", images=FolderImages(tmp_path / "photos"),
                  settings=Settings(limit=2), progress=False)
    assert str(err.value) in cli  # the same answer, naming the same fix
    assert "sees synthesized scenes, not photos" in cli and "drop --images" in cli and "images=SceneImages()" in cli


def test_the_scene_builder_takes_items_and_pairs_built_in_python(tmp_path, random_demo):
    shipped = load_items()[:4]
    raw = [x.raw for x in shipped]
    # the study's objects and their raw records give the same scenes (the seed key is the record's dataset_idx)
    assert [synthesize_scene(x) for x in shipped] == [synthesize_scene(r) for r in raw]
    assert [synthesize_scene(align(x)) for x in shipped] == [synthesize_scene(r) for r in raw]
    mine = [Item("mine-1", "There is no dog.", "There is a dog.", "dog.jpg", "caption"),
            Item("mine-2", "There are cats on the bed.", "There are no cats on the bed.", "cats.jpg", "foil")]
    pairs = [align(x) for x in mine]
    assert SceneImages().scenes(pairs) == SceneImages().scenes(mine)
    assert "dog" not in synthesize_scene(mine[0]) and "cat" in synthesize_scene(pairs[1])
    records = run_items(random_demo, tmp_path / "run", model_id="random", images=SceneImages(), items=mine,
                        progress=False)
    assert set(records) == {"mine-1", "mine-2"} and all("cte_rows" in r["aligned"] for r in records.values())


def test_an_unknown_subject_names_the_nearest_known_ones(tmp_path, capsys):
    item = Item("mine-1", "There is no dinosaurz.", "There is a dinosaurz.", "x.jpg", "caption")
    with pytest.raises(UnknownObjectError) as err:
        synthesize_scene(item)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert "'dinosaurz'" in message and "dinosaur" in message.split("nearest known names:")[1]
    assert "There is no dinosaurz." in message
    data = json.loads(EXISTENCE_JSON.read_text())
    key = next(iter(data))
    data[key] = {**data[key], "caption": "There are no dinosaurz.", "foil": "There are dinosaurz."}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({key: data[key]}))
    with pytest.raises(SystemExit) as exit_:
        main(["valse-negation", "--model", "tiny-negation", "--data", str(path), "--out", str(tmp_path / "run"),
              "--no-progress"])
    line = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(line.splitlines()) == 1 and "nearest known names: dinosaur" in line
