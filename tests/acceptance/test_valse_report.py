"""The study's report sets every number of the paper's tables beside ours, and says where the comparison is
not like for like. The expected numbers below are copied from the project's PAPER.md (the authors' released
results for OpenAI CLIP ViT-B/32), not from the package's own copy in analyses/valse_negation/paper.py, so a
number mistyped or dropped there fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hooked_clip

from hooked_clip.analyses.valse_negation.aggregate import aggregate
from hooked_clip.analyses.valse_negation.images import SceneImages
from hooked_clip.analyses.valse_negation.markdown import caveats
from hooked_clip.analyses.valse_negation.report import write_outputs
from hooked_clip.analyses.valse_negation.study import Settings, run_items

# PAPER.md §3.4: (sentences, negation in) -> n, accuracy, segments
SCORES = [("original VALSE sentences", "either", "505 | 69.1% | 159 / 318 / 28"),
          ("original VALSE sentences", "caption", "256 | 67.6% | 73 / 174 / 9"),
          ("original VALSE sentences", "foil", "249 | 70.7% | 86 / 144 / 19"),
          ("aligned (rephrased) pairs", "either", "490 | 68.6% | 153 / 295 / 42"),
          ("aligned (rephrased) pairs", "caption", "250 | 66.8% | 72 / 150 / 28"),
          ("aligned (rephrased) pairs", "foil", "240 | 70.4% | 81 / 145 / 14")]
D_STATS = {"d, minimum": "-3.04", "d, maximum": "6.58", "d, standard deviation (sample)": "1.17",
           "mean d, correct segment": "1.82", "mean d, ambiguous segment": "0.14", "mean d, incorrect segment": "-1.60",
           "S(caption), minimum": "14.60", "S(caption), maximum": "32.10"}
EXAMPLES = {"existence_visual7w_1": "-3.04 | incorrect", "existence_visual7w_2359483": "-1.29 | incorrect",
            "existence_visual7w_1159467": "0.99 | ambiguous"}

# PAPER.md §4.5: rows negator .. [EOT], layers 0..12; std rows; column sums; mean std
CTE = {
    "caption, correct": ["1.00 .71 .62 .48 .04 .03 .04 .04 .02 .02 .00 .00 .00",
                         ".00 .13 .30 .44 .60 .55 .40 .38 .30 .17 .14 .07 .00",
                         ".00 .00 .07 .10 .19 .17 .17 .13 .13 .08 .07 .04 .00",
                         ".00 .01 .05 .03 .35 .46 .45 .43 .41 .30 .25 .14 .00",
                         ".00 .00 .00 −.02 .13 .23 .31 .36 .43 .68 .77 .93 1.00",
                         ".40 .28 .23 .21 .20 .19 .15 .15 .16 .23 .28 .35 .40",
                         "1.00 .85 1.04 1.03 1.31 1.45 1.36 1.35 1.30 1.24 1.23 1.18 1.00"],
    "foil, correct": ["1.00 .90 .86 .69 .18 .12 .10 .09 .06 .05 .01 .01 .00",
                      ".00 .03 .09 .15 .17 .09 .09 .07 .03 .01 .02 .02 .00",
                      ".00 .01 .04 .06 .11 .08 .09 .06 .04 .02 .02 .01 .00",
                      ".00 .01 .03 .07 .36 .30 .29 .26 .19 .13 .09 .05 .00",
                      ".00 .00 .01 .01 .19 .25 .29 .33 .45 .59 .68 .79 1.00",
                      ".40 .36 .33 .25 .09 .09 .10 .11 .16 .22 .26 .31 .40",
                      "1.00 .95 1.02 .99 1.01 .85 .86 .81 .77 .79 .82 .88 1.00"],
    "foil, incorrect": ["1.00 .95 .68 .49 .11 .05 .02 .02 .02 .02 .02 .01 .00",
                        ".00 .01 .18 .25 .29 .27 .26 .24 .23 .12 .12 .04 .00",
                        ".00 .01 .06 .07 .15 .12 .10 .09 .08 .05 .04 .02 .00",
                        ".00 −.00 .06 .11 .33 .35 .32 .29 .26 .20 .17 .13 .00",
                        ".00 −.01 −.00 .10 .30 .37 .48 .55 .58 .76 .77 .87 1.00"],
}
MEAN_STD = {"caption, correct": "0.249", "foil, correct": "0.236", "foil, incorrect": "0.249"}

# PAPER.md §5.2: head rows h1..h8 over layers 1..12, then the layer averages (three decimals)
HEADS = {
    "caption": [".06 .11 .02 −.00 .07 .02 .03 .01 .01 .02 .00 .05", ".03 .09 .02 .39 .08 −.00 .00 .02 .00 .13 .00 .02",
                ".09 .03 .07 .24 −.01 .02 .01 .00 .01 .01 .01 .02", ".12 .08 .03 −.00 .00 −.00 .00 .00 .01 .01 .00 .04",
                ".05 .06 .04 .00 .05 −.01 .01 .04 .00 .00 .02 .08", ".10 .06 .20 .01 .00 .02 .03 .00 .01 .01 .00 .03",
                ".06 .02 .00 .12 .00 −.01 .01 .00 .00 .01 .00 .06", ".04 .11 .04 .01 .02 .02 .01 .00 .02 .01 .01 .04"],
    "foil": [".07 .14 .02 .01 .05 .02 .02 .02 .01 .03 .00 .06", ".06 .08 .02 .38 .10 −.00 .00 .03 .00 .16 .00 .04",
             ".07 .04 .08 .23 −.00 .03 .01 .00 .01 .02 .02 .04", ".10 .08 .06 −.00 .00 −.00 .00 .00 .01 .01 .00 .05",
             ".07 .02 .03 .01 .05 .00 .01 .06 .00 .00 .02 .10", ".10 .09 .23 .02 .01 .05 .04 .00 .01 .01 .00 .04",
             ".05 .01 .01 .07 .01 −.00 .01 .00 .00 .01 .00 .08", ".04 .08 .03 .02 .02 .03 .02 .00 .05 .02 .01 .05"],
}
LAYER_MEANS = {"caption": ".070 .069 .053 .096 .025 .008 .013 .010 .008 .026 .006 .042",
               "foil": ".069 .069 .060 .092 .030 .016 .014 .014 .012 .032 .008 .058"}
# the paper's L4-H2 etc. (1-indexed), printed as hooked_clip's 0-indexed head label with the paper's words beside it
TOP_HEADS = ["L3H1 (Layer 4 Head 2) 0.39 / 0.38", "L3H2 (Layer 4 Head 3) 0.24 / 0.23", "L2H5 (Layer 3 Head 6) 0.20 / 0.23",
             "L9H1 (Layer 10 Head 2) 0.13 / 0.16", "L3H6 (Layer 4 Head 7) 0.12 / 0.07", "L1H0 (Layer 2 Head 1) 0.11 / 0.14"]
# PAPER.md §5.3: (caption, foil) per row negator, subj 1st, subj further, ".", [EOT]
ZOOM = {"H2": "−.04 −.01 .25 .08 .14 .15 .35 .34 .12 .15", "H3": ".05 .06 .23 .19 .03 .09 .04 .07 −.01 −.00",
        "H7": ".04 .04 .09 .01 .02 .01 .02 .01 −.02 −.03"}
ZOOM_OTHERS = "≤ 0.02 | ≤ 0.01 | ≤ 0.02 | ≤ 0.02 | ≤ 0.01"
# PAPER.md §5.4 (text, not a table): the correlations quoted
HEAD_CORR = ["|r| ≤ 0.30", "0.18", "L3H1 (Layer 4 Head 2) −0.11", "L3H2 (Layer 4 Head 3) 0.16",
             "L10H5 (Layer 11 Head 6) 0.30", "L10H6 (Layer 11 Head 7) 0.23", "L3H1 (Layer 4 Head 2) 0.07",
             "L3H2 (Layer 4 Head 3) −0.07"]
# PAPER.md §6.2: relation -> (n, r)
CONFOUNDS = {"caption–foil similarity vs d, negation in caption |": "250 | 0.03",
             "caption–foil similarity vs d, negation in caption, without the \"There are no people.\" items": "206 | -0.20",
             "caption–foil similarity vs d, negation in foil": "240 | -0.22",
             "caption–foil similarity vs d, all": "490 | -0.05",
             "token length vs d, negation in caption |": "250 | 0.11",
             "token length vs d, negation in caption, without the \"There are no people.\" items": "206 | 0.04",
             "token length vs d, negation in foil": "240 | -0.19",
             "subject size (soft area) vs d, negation in foil": "236 | 0.32",
             "subject size (binary area, > 0.25) vs d, negation in foil": "236 | 0.28"}
ABOVE_SIZE = {"0.00": "236 | 70.3%", "0.05": "157 | 77.1%", "0.10": "102 | 85.3%", "0.15": "82 | 85.4%",
              "0.20": "52 | 88.5%", "0.30": "29 | 82.8%", "0.35": "21 | 90.5%"}
# PAPER.md §7
ABLATION = {"MLP": "0.60 | 0.86 | 1.24–1.49", "MHA": "0.38 | 0.39 | 1.04–1.24"}


def _cells(paper_row: str) -> str:
    """PAPER.md's ".71 −.02" -> the report's "0.71 | -0.02"."""
    return " | ".join(re.sub(r"^(-?)\.", r"\g<1>0.", v.replace("−", "-")) for v in paper_row.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hooked_clip import load_model

    path = tmp_path_factory.mktemp("report")
    model = load_model("tiny-negation", device="cpu")
    records = run_items(model, path, model_id="tiny-negation", images=SceneImages(), settings=Settings(limit=40),
                        progress=False)
    results = aggregate(records, model.cfg.n_layers, model.cfg.n_heads)
    results["subject_size_measure"] = "1 / the number of objects in the synthesized scene"
    return path, model, records, results


@pytest.fixture(scope="module")
def report(run):
    path, model, records, results = run
    write_outputs(path, records, results, model=model, model_id="tiny-negation")
    return (path / "report.md").read_text()


def test_subject_size_figure_is_coloured_by_segment_with_r_and_a_fixed_accuracy_axis(run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")

    _, model, records, results = run
    seen = _saved_figures(monkeypatch)
    write_outputs(tmp_path, records, results, model=model, model_id="tiny-negation")
    fig = seen["score_vs_subject_size.png"]
    ax, ax2 = fig.axes
    segments = {r["aligned"]["segment"] for r in records.values()
                if r["negation_in"] == "foil" and r.get("aligned", {}).get("subject_area") is not None}
    labels = [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()]
    assert set(labels) == {"correct", "ambiguous", "incorrect"} and len(ax.collections) == 3
    assert sum(len(c.get_offsets()) for c in ax.collections) == results["confounds"]["subject_size_vs_d_foil"]["n"]
    assert len({tuple(c.get_facecolor()[0]) for c in ax.collections}) == 3 and len(segments) >= 1
    assert ax2.get_ylim() == (0.0, 1.0)
    assert f"r = {results['confounds']['subject_size_vs_d_foil']['r']:.2f}" in fig._suptitle.get_text()
    assert "1 / the number of objects" in ax.get_xlabel()


def _section(report: str, heading: str) -> str:
    return report.split(heading, 1)[1].split("\n## ", 1)[0]


def _lines_ending(text: str, start: str, end: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith(start) and l.rstrip().endswith(end)]


def test_every_score_number_of_the_paper(report):
    scores = _section(report, "## Scores")
    for kind, group, cells in SCORES:
        assert _lines_ending(scores, f"| {kind} | {group} |", f"| {cells} |"), (kind, group)
    assert "66.9%" in scores
    for label, value in D_STATS.items():
        assert _lines_ending(scores, f"| {label} |", f"| {value} |"), label
    for item, cells in EXAMPLES.items():
        assert _lines_ending(scores, f"| {item} |", f"| {cells} |"), item
    assert "d = -2.07 on the original sentences" in scores and "0.9338" in scores


def test_every_item_count_of_the_paper(report):
    items = _section(report, "## Items")
    for start, paper in (("| valid", "505 (256 / 249)"), ("| aligned pairs (", "490 (250 / 240)"),
                         ("| dropped", "15 (6 / 9)"), ("| aligned pairs without a further subject token", "140"), ("| token length", "7–16")):
        assert _lines_ending(items, start, f"| {paper} |"), start


def test_every_cte_number_of_the_paper(report):
    cte = _section(report, "## Causal tracing")
    for subset, rows in CTE.items():
        part = cte.split(f"### Negation in {subset} segment", 1)[1].split("### ", 1)[0]
        paper_part = part.split("Paper (ViT-B/32", 1)[1]
        labels = ["a/some/no", "subj 1st", "subj further", ".", "[EOT]", "CTE std (rows ≥ negator)", "column sum"]
        for label, row in zip(labels, rows):
            assert f"| {label} | {_cells(row)} |" in paper_part, (subset, label)
        assert f"Mean CTE std: {MEAN_STD[subset]}." in paper_part


def test_every_head_number_of_the_paper(report):
    heads = _section(report, "## Negator-selective heads")
    for loc, rows in HEADS.items():
        part = heads.split(f"Δ, negation in {loc}, paper", 1)[1].split("Δ, negation in", 1)[0]
        for h, row in enumerate(rows):
            assert f"| H{h + 1} | {_cells(row)} |" in part, (loc, h + 1)
        assert f"| layer mean | {_cells(LAYER_MEANS[loc])} |" in part, loc
    for top in TOP_HEADS:
        assert top in heads
    for quote in HEAD_CORR:
        assert quote in heads, quote
    zoom = heads.split("Paper (ViT-B/32, layer 4", 1)[1]
    for head, values in ZOOM.items():
        v = _cells(values).split(" | ")
        assert f"| {head} | " + " | ".join(f"{v[i]} / {v[i + 1]}" for i in range(0, 10, 2)) + " |" in zoom, head
    assert f"| others | {ZOOM_OTHERS} |" in zoom


def test_every_confound_number_of_the_paper(report):
    conf = _section(report, "## Confounds")
    for label, cells in CONFOUNDS.items():
        start = "| " + label if label.endswith("|") else "| " + label + " |"
        assert _lines_ending(conf, start, f"| {cells} |"), label
    assert "0.951 and 0.961, range 0.914 to 0.990" in conf
    assert "paper 0.000 / 0.034 / 0.086 / 0.189 / 0.617" in conf
    assert "paper: 236 of 240" in conf
    for t, cells in ABOVE_SIZE.items():
        assert _lines_ending(conf, f"| {t} |", f"| {cells} |"), t
    ablation = _section(report, "## Image-tower ablation")
    assert "not run by this study" in report
    for comp, cells in ABLATION.items():
        assert f"| {comp} | {cells} |" in ablation


def test_heads_are_labelled_as_every_analysis_labels_them(run, report):
    """One head-label convention: results.json and the report name a head as hooked_clip.names.head_label does
    (0-indexed: "L3H1" is blocks.3, head 1, as in path patching's senders), the paper's 1-indexed words beside it;
    the label points at its own entry of the (layer, head) matrix it was ranked from."""
    path, model, records, results = run
    heads = _section(report, "## Negator-selective heads")
    for loc in ("caption", "foil"):
        entry = results["heads"][loc]
        for top in entry["top"]:
            layer, head = (int(x) for x in re.fullmatch(r"L(\d+)H(\d+)", top["head"]).groups())
            assert entry["delta_mean"][layer][head] == top["delta"]
            assert top["paper_head"] == f"Layer {layer + 1} Head {head + 1}"
            assert f"{top['head']} ({top['paper_head']})" in heads


def test_human_labels_and_two_decimals(report):
    for key in ("similarity_vs_d_caption", "length_vs_d_foil", "subject_size_vs_d_foil", "accuracy_original_505"):
        assert key not in report
    assert not re.search(r"\| -?0\.\d \|", report)  # no one-decimal fraction such as "-0.2" in a table


def test_the_demo_models_caveats_are_printed(report):
    caveats = _section(report, "## Like for like?")
    assert "logit scale is 22.22" in caveats and "±0.045 cosine" in caveats and "±0.01 cosine" in caveats
    assert "4 blocks × 4 heads" in caveats and "layer 4 is its last" in caveats
    assert "L3H1 (Layer 4 Head 2) is block 3, head 1" in caveats and "not CLIP's L3H1" in caveats
    assert "not a CLIPSeg area" in caveats and "1 / the number of objects" in caveats


def test_caveats_follow_the_models_facts():
    like_the_paper = caveats({"logit_scale": 100.0, "n_layers": 12, "n_heads": 8})
    text = "\n".join(like_the_paper)
    assert "Segments are not" not in text and "Layers are not" not in text and "CLIPSeg" not in text
    assert "only if this model is the paper's checkpoint" in text
    other = "\n".join(caveats({"logit_scale": 50.0, "n_layers": 12, "n_heads": 12}))
    assert "±0.020 cosine" in other and "12 blocks × 12 heads" in other
    assert "--limit" not in text and "Pixels" not in text
    run = "\n".join(caveats({"logit_scale": 100.0, "n_layers": 12, "n_heads": 8, "limit": 40,
                             "preprocessing": "open_clip preprocess (resize, centre crop, normalise)"}))
    assert "Only part of the data ran** (`--limit 40`)" in run and "Pixels are not the authors'" in run
    assert "one pixel off" in run
    hf = "\n".join(caveats({"logit_scale": 100.0, "n_layers": 12, "n_heads": 8,
                            "preprocessing": "transformers CLIP image processor, PIL backend (as CLIPProcessor in transformers 4)"}))
    assert "Pixels" not in hf


def test_comparison_states_each_models_scale_and_depth_beside_the_papers(run, tmp_path):
    from hooked_clip.analyses.valse_negation.comparison import write_comparison

    _, model, records, results = run
    for name in ("a", "b"):
        write_outputs(tmp_path / name, records, results, model=model, model_id=name)
    text = write_comparison(tmp_path, [("a", tmp_path / "a"), ("b", tmp_path / "b")]).read_text()
    line = next(l for l in text.splitlines() if l.startswith("| logit scale"))
    assert line == "| logit scale (±1 logit in cosine) | 22.22 (±0.045) | 22.22 (±0.045) | 100.00 (±0.010) |"
    assert "| blocks × heads | 4 × 4 | 4 × 4 | 12 × 8 |" in text
    assert "1 / the number of objects in the synthesized scene" in text
    assert "similarity_vs_d_caption" not in text  # human labels


# ------------------------------------------------------------------------- the segment rule (issue "mutants")
BOUNDARIES = (-1.0001, -1.0, 0.0, 0.9999, 1.0)


def _saved_figures(monkeypatch) -> dict:
    """{file name: matplotlib Figure} of every figure saved from now on (the figures are checked, not looked at)."""
    from matplotlib.figure import Figure

    from hooked_clip.analyses.run_dirs import final_name

    seen, real = {}, Figure.savefig

    def spy(fig, path, *args, **kwargs):
        seen[final_name(path)] = fig  # figures are saved to a temporary name, then renamed
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def papers_segment(d: float) -> str:
    """PAPER.md §3.4, written out here, not taken from the study: correct d >= 1, ambiguous -1 <= d < 1,
    incorrect d < -1 (logits)."""
    if d >= 1:
        return "correct"
    if -1 <= d < 1:
        return "ambiguous"
    assert d < -1
    return "incorrect"


EXPECTED = {"correct": 1, "ambiguous": 3, "incorrect": 1}  # the paper's rule on BOUNDARIES, counted by hand


def test_a_nan_score_belongs_to_no_segment():
    from hooked_clip.analyses.valse_negation.segments import segment

    with pytest.raises(ValueError, match="is NaN"):
        segment(float("nan"))


def test_the_segment_rule_is_the_papers_at_the_boundaries():
    from hooked_clip.analyses.valse_negation.segments import SEGMENTS, segment, segment_counts

    assert [segment(d) for d in BOUNDARIES] == [papers_segment(d) for d in BOUNDARIES]
    assert [papers_segment(d) for d in BOUNDARIES] == ["incorrect", "ambiguous", "ambiguous", "ambiguous", "correct"]
    assert segment_counts(BOUNDARIES) == EXPECTED and tuple(segment_counts(BOUNDARIES)) == SEGMENTS


def test_the_study_labels_each_item_by_the_papers_rule(tmp_path, monkeypatch):
    """The per-item records (original sentences and aligned pairs): scores forced onto the boundaries."""
    import torch

    from hooked_clip import load_model
    from hooked_clip.analyses.valse_negation import study

    def boundary_scores(model, e_c, e_f, img):
        n = e_c.shape[0]
        return torch.tensor([BOUNDARIES[i % len(BOUNDARIES)] for i in range(n)], dtype=torch.float64), torch.zeros(n)

    monkeypatch.setattr(study, "_scores", boundary_scores)
    model = load_model("tiny-negation", device="cpu")
    records = run_items(model, tmp_path, model_id="tiny-negation", images=SceneImages(), settings=Settings(limit=10),
                        progress=False)
    labelled = [(r["d"], r["segment"]) for r in records.values()]
    labelled += [(r["aligned"]["d"], r["aligned"]["segment"]) for r in records.values() if "aligned" in r]
    assert {d for d, _ in labelled} == set(BOUNDARIES)
    assert all(seg == papers_segment(d) for d, seg in labelled), labelled


def test_the_reports_counts_and_histogram_segment_by_the_papers_rule(run, tmp_path, monkeypatch):
    """Hand-set scores exactly at the boundaries: the score tables (results.json, scores.csv, report.md) and
    the histogram's segments count what the paper's rule counts."""
    import copy
    import json

    import matplotlib

    matplotlib.use("Agg")

    _, model, records, _ = run
    chosen = [copy.deepcopy(r) for r in records.values() if "aligned" in r][:len(BOUNDARIES)]
    for r, d in zip(chosen, BOUNDARIES):
        r["d"] = r["aligned"]["d"] = d
        r["segment"] = r["aligned"]["segment"] = papers_segment(d)
    recs = {r["id"]: r for r in chosen}
    results = aggregate(recs, model.cfg.n_layers, model.cfg.n_heads)
    for kind in ("original", "aligned"):
        assert results["scores"][kind]["all"]["segments"] == EXPECTED, kind
    seen = _saved_figures(monkeypatch)
    write_outputs(tmp_path, recs, results, model_id="boundaries")
    legend = [t.get_text() for t in seen["score_histogram.png"].axes[0].get_legend().get_texts()]
    assert sorted(legend) == sorted(f"{seg} ({n})" for seg, n in EXPECTED.items())
    saved = json.loads((tmp_path / "results.json").read_text())["scores"]
    assert all(saved[kind]["all"]["segments"] == EXPECTED for kind in ("original", "aligned"))
    scores = _section((tmp_path / "report.md").read_text(), "## Scores")
    assert "segments: correct d ≥ 1, ambiguous −1 ≤ d < 1, incorrect d < −1 (logits)." in scores  # the rule as stated
    assert _lines_ending(scores, "| aligned (rephrased) pairs | either | 5 |", "| 490 | 68.6% | 153 / 295 / 42 |")
    assert "| aligned (rephrased) pairs | either | 5 | 40.0% | 1 / 3 / 1 |" in scores  # accuracy: d > 0
    table = (tmp_path / "scores.csv").read_text().splitlines()
    assert "sentences,group,n,accuracy,correct,ambiguous,incorrect" == table[0] and "aligned,all,5,0.4,1,3,1" in table


def test_the_report_cites_no_file_that_is_not_there(run, report):
    """Every file the report names is in the run directory, the repository or the installed package (PAPER.md is
    the project's notes, not shipped: the report cites the paper itself)."""
    path = run[0]
    repo = Path(__file__).parents[2]
    package = Path(hooked_clip.__file__).parent
    cited = set(re.findall(r"[\w./-]+\.(?:md|py|json|png|csv|html|jsonl|txt)\b", report))
    assert cited, "the report names its own files (figures, per_item.json)"
    for name in sorted(cited):
        assert "PAPER" not in name, f"report.md cites {name}"
        here = [path / name, repo / name, package / name, package / "analyses" / name]
        assert any(p.exists() for p in here) or list(path.rglob(Path(name).name)), f"report.md cites {name}, which is missing"
