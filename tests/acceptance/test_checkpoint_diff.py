"""``hooked-clip checkpoint-diff`` on the shipped toy pair: its outputs, one cell of each table against a plain
loop, and the refusals (one line, exit status 2)."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_clip import load_model
from hooked_clip.analyses.checkpoint_diff.measure import ROLES, behaviour_metric, load_items

LIMIT = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hooked_clip.analyses.cli import main

    out = tmp_path_factory.mktemp("diff")
    main(["checkpoint-diff", "--limit", str(LIMIT), "--out", str(out), "--device", "cpu"])
    return out, json.loads((out / "results.json").read_text())


def test_outputs_name_both_models(run):
    out, results = run
    report = (out / "report.md").read_text()
    assert "`tiny-pair-tuned` vs `tiny-pair-base`" in report
    for kind in ("states", "heads", "weights"):
        assert (out / f"tiny-pair-base-vs-tiny-pair-tuned_{kind}.png").is_file()
    assert results["base"]["fingerprint"].startswith("fp-") and results["base"]["fingerprint"] != results["tuned"]["fingerprint"]
    assert results["same_images"] and results["n_items"] == LIMIT
    assert not list(out.glob(".*"))  # no temporary files left


def test_one_cell_of_each_table_against_a_loop(run):
    """restore, state 2 at the negator, and head L1H0: one forward per item with the tuned model's activation
    written in by a hook, the fraction a ratio of means."""
    _, results = run
    base, tuned = load_model("tiny-pair-base", device="cpu"), load_model("tiny-pair-tuned", device="cpu")
    items = load_items(limit=LIMIT)
    metric = behaviour_metric(base, items)
    with torch.no_grad():
        own = metric(base.encode_text(items.negated))
        other = metric(tuned.encode_text(items.negated))
        gap = (other - own).mean()
        patched = []
        for i, text in enumerate(items.negated):
            toks = base.to_tokens([text])
            neg = [t.strip().lower() for t in base.to_str_tokens(text)].index("no")  # the sentence's own tokens
            _, cache = tuned.text.run_with_cache(toks)

            def hook(x, hook, neg=neg):
                x = x.clone()
                x[:, neg] = cache[hook.name][:, neg]
                return x

            patched.append(float(metric.__call__(base.text.run_with_hooks(
                toks, fwd_hooks=[("blocks.2.hook_resid_pre", hook)]).expand(len(items.negated), -1))[i]))
        cell = float((torch.tensor(patched) - own).mean() / gap)

        def head(x, hook):
            x = x.clone()
            x[:, :, 0] = cache_all[hook.name][:, :, 0]
            return x

        toks = base.to_tokens(items.negated)
        _, cache_all = tuned.text.run_with_cache(toks)
        head_cell = float((metric(base.text.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_z", head)])) - own).mean() / gap)
    assert abs(results["restore"]["states"][2][ROLES.index("'no'")] - cell) <= 2e-4
    assert abs(results["restore"]["heads"][1][0] - head_cell) <= 2e-4


def test_refusals_are_one_line(tmp_path, capsys):
    from hooked_clip.analyses.cli import main

    for argv, message in ((["--tuned", "tiny-pair-base"], "are one model"),
                          (["--tuned", "tiny-negation"], "differ in more than their weights")):
        with pytest.raises(SystemExit) as exit_info:
            main(["checkpoint-diff", "--limit", "2", "--out", str(tmp_path / "x"), "--device", "cpu", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
