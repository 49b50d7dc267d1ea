"""The negation study as one configuration of ``localize`` (issue #29, item 4): on the study's aligned pairs
(``paper_pairs``: the affirmative sentence as the caption, the negated one as the foil), with the study's scenes
and ``direction="foil-into-caption"``, localize's per-pair CTE (by role) and head scores are the study's per-item
values (``run_items``: ``minimal_pair_trace`` and ``negator_head_scores``, another code path) to 1e-5, from
Python and from the command line."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from hooked_clip import load_model
from hooked_clip.analyses.cli import main
from hooked_clip.analyses.localize.pairs_file import MinimalPair, read_pairs, write_pairs
from hooked_clip.analyses.localize.trace import ROLES, localize
from hooked_clip.analyses.valse_negation.data import align, load_items, paper_pairs
from hooked_clip.analyses.valse_negation.demo_scenes import embed_scenes
from hooked_clip.analyses.valse_negation.images import SceneImages
from hooked_clip.analyses.valse_negation.study import run_items

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_model("tiny-negation", device="cpu")


@pytest.fixture(scope="module")
def study(demo, tmp_path_factory):
    """The study's records of 8 aligned items: 4 with the negation in the foil (one singular, "There is no X", as
    VALSE wrote it), 4 in the caption (plural ones rephrased "There are some X")."""
    aligned = [x for x in load_items() if align(x) is not None]
    foil = [x for x in aligned if x.negation_in == "foil"]
    singular = [x for x in foil if x.foil.startswith("There is no ")][:1]
    items = foil[:3] + singular + [x for x in aligned if x.negation_in == "caption"][:4]
    records = run_items(demo, tmp_path_factory.mktemp("study"), model_id="tiny-negation", images=SceneImages(),
                        items=items, progress=False)
    return items, records


def _study_roles(rec: dict) -> torch.Tensor:
    """The study's rows [SOT, there, is/are, negator, subj 1st, subj further (mean), ".", EOT] as localize's roles
    (before, changed, after, pooled): before = the mean of the three rows before the negator; after = the mean
    over the positions after it (subj 1st, each further token, ".")."""
    rows, n = torch.tensor(rec["aligned"]["cte_rows"]), rec["aligned"]["n_further"]
    after = (rows[:, 4] + (n * rows[:, 5] if n else 0) + rows[:, 6]) / (2 + n)
    return torch.stack([rows[:, 0:3].mean(1), rows[:, 3], after, rows[:, 7]], 1)


def _check(ids, cte, heads, d, records):
    roles = [ROLES.index(r) for r in ("before", "changed", "after", "pooled")]
    for b, pid in enumerate(ids):
        rec = records[pid.split("/", 1)[1]]
        assert (cte[b][:, roles] - _study_roles(rec)).abs().max() <= TOL, pid
        assert cte[b][:, ROLES.index("between")].isnan().all()  # one substituted token: nothing between
        if heads is not None:
            assert (heads[b] - torch.tensor(rec["aligned"]["head_delta"])).abs().max() <= TOL, pid
        # localize's d is S(caption) - S(foil) = S(affirmative) - S(negated); the study's is VALSE's caption - foil
        sign = 1 if rec["negation_in"] == "foil" else -1
        assert abs(sign * float(d[b]) - rec["aligned"]["d"]) <= TOL, pid


def test_localize_reproduces_the_study_per_item(demo, study):
    items, records = study
    pairs = paper_pairs(items)
    assert [p.foil for p in pairs] == [align(x).negated for x in items]
    assert any(r["aligned"]["n_further"] > 0 for r in records.values())
    assert any("There are some " in p.caption for p in pairs) and any("There is " in p.caption for p in pairs)
    embeds, dropped = embed_scenes(demo, pairs)
    assert dropped == []
    images = torch.stack([embeds[p.id] for p in pairs])
    torch.testing.assert_close(images, SceneImages().embed(demo, items), atol=0, rtol=0)  # the study's scenes
    result = localize(demo, pairs, images, direction="foil-into-caption", progress=False)
    assert result.ids == [p.id for p in pairs] and set(result.kinds) == {"substitution"}
    _check(result.ids, result.cte, result.heads, result.d, records)
    # the default direction patches the affirmative's states into the negated run: another quantity
    other = localize(demo, pairs, images, progress=False)
    assert (other.cte[:, :, ROLES.index("pooled")] - result.cte[:, :, ROLES.index("pooled")]).abs().max() > 0.01


def test_the_command_line_configuration(demo, study, tmp_path, capsys):
    """``hooked-clip localize --data <paper pairs> --scenes --direction foil-into-caption``: the chunks it writes
    hold the study's per-item values."""
    items, records = study
    path = write_pairs(tmp_path / "paper.jsonl", paper_pairs(items))
    assert read_pairs(path).pairs == [replace(p, source=str(path)) for p in paper_pairs(items)]
    out = tmp_path / "run"
    main(["localize", "--data", str(path), "--model", "tiny-negation", "--scenes", "--direction", "foil-into-caption",
          "--out", str(out), "--no-progress"])
    capsys.readouterr()
    fields = torch.load(next(out.glob("tiny-negation-fp-*/chunks/*.pt")), weights_only=True)["fields"]
    assert fields["direction"] == "foil-into-caption" and len(fields["ids"]) == len(items)
    _check(fields["ids"], fields["cte"], fields["heads"], fields["caption_metric"] - fields["foil_metric"], records)
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["tiny-negation"]["direction"] == "foil-into-caption"
    assert "Each caption is run with one hidden state of its foil patched in" in (out / "report.md").read_text()


@torch.no_grad()
def test_foil_into_caption_is_the_default_on_swapped_pairs(demo):
    """Unequal lengths: patching the foil's states into the caption run is the default direction on the pairs with
    caption and foil swapped (the image metric does not depend on which sentence is called the caption)."""
    pairs = [MinimalPair("a", "There is a dog on the mat.", "There is a big brown dog on the mat."),
             MinimalPair("b", "There are no cats.", "There are cats."),
             MinimalPair("c", "A red car is parked here.", "A car is parked.")]
    swapped = [MinimalPair(p.id, p.foil, p.caption) for p in pairs]
    images = torch.randn(len(pairs), demo.cfg.d_proj, generator=torch.Generator().manual_seed(0))
    got = localize(demo, pairs, images, direction="foil-into-caption", progress=False)
    want = localize(demo, swapped, images, progress=False)
    torch.testing.assert_close(got.cte, want.cte, atol=TOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.d, -want.d, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="direction='backwards'"):
        localize(demo, pairs, images, direction="backwards", progress=False)


def test_scenes_only_for_demo_models_and_existence_pairs(demo, tmp_path, capsys):
    embeds, dropped = embed_scenes(demo, [MinimalPair("c", "There are two dogs.", "There are three dogs."),
                                          MinimalPair("z", "There is no dinosaurz.", "There is a dinosaurz."),
                                          MinimalPair("ok", "There is no dog.", "There is a dog.")])
    assert list(embeds) == ["ok"]
    reasons = dict(dropped)
    assert "no negator 'no'" in reasons["c"] and "nearest known names: dinosaur" in reasons["z"]
    with pytest.raises(SystemExit):
        main(["localize", "--dataset", "valse:existence", "--model", "tiny-negation", "--model", "some/real-clip",
              "--scenes", "--out", str(tmp_path)])
    assert "--scenes is the demo models' image metric" in capsys.readouterr().err
