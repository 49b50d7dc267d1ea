"""``hooked-clip checkpoint-diff`` on the shipped toy pair: its outputs, one cell of each table against a plain
loop, the refusals (one line, exit status 2), and an interrupted run resumed to the same outputs, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_clip import load_model
from hooked_clip.analyses.checkpoint_diff.measure import ROLES, behaviour_metric, load_items

LIMIT = 6
ARGV = ["checkpoint-diff", "--limit", str(LIMIT), "--chunk", "3", "--device", "cpu", "--no-progress"]  # 2 chunks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from hooked_clip.analyses.cli import main

    out = tmp_path_factory.mktemp("diff")
    main([*ARGV, "--out", str(out)])
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


def test_an_interrupted_run_resumes_to_the_same_outputs_bit_for_bit(run, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second chunk: the first chunk is on disk (nothing half-written, no outputs yet); the rerun
    measures only the other two chunks and writes what the uninterrupted run wrote, byte for byte."""
    from hooked_clip.analyses.checkpoint_diff import measure
    from hooked_clip.analyses.cli import main

    whole, _ = run
    real, calls = measure.measure, []

    def interrupted(*args, **kwargs):  # two calls per chunk (restore, break): stop inside the second chunk
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "cut"
    monkeypatch.setattr(measure, "measure", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main([*ARGV, "--out", str(out)])
    assert exit_info.value.code == 130
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["00000.pt"]  # no temporary file left
    assert not (out / "results.json").exists() and not list(out.glob(".*"))
    calls.clear()
    monkeypatch.setattr(measure, "measure", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    main([*ARGV, "--out", str(out)])
    assert len(calls) == 2  # chunk 1, both directions; chunk 0 loaded
    for name in ("results.json", "report.md", "config.json"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    for a, b in zip(sorted((whole / "chunks").iterdir()), sorted((out / "chunks").iterdir()), strict=True):
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert x["key"] == y["key"]
        for d in ("restore", "break"):
            assert all(torch.equal(x["fields"][d][k], y["fields"][d][k]) for k in x["fields"][d])


def test_a_run_dir_of_other_weights_is_refused_naming_both(run, capsys):
    from hooked_clip.analyses.cli import main

    out, results = run
    config = (out / "config.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:  # the pair swapped: the same names, other weights per role
        main([*ARGV, "--out", str(out), "--base", "tiny-pair-tuned", "--tuned", "tiny-pair-base"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "other weights" in err
    base, tuned = results["base"]["fingerprint"], results["tuned"]["fingerprint"]
    assert f"(fingerprint differs: base 'tiny-pair-base' ({base}), tuned 'tiny-pair-tuned' ({tuned})), not of base " \
           f"'tiny-pair-tuned' ({tuned}), tuned 'tiny-pair-base' ({base})" in err
    assert (out / "config.json").read_bytes() == config


def test_the_default_run_dir_is_named_by_both_models_and_fingerprints(monkeypatch, tmp_path):
    from hooked_clip.analyses.cli import main
    from hooked_clip.fingerprint import fingerprint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hooked_clip.analyses.checkpoint_diff.cli.measure_chunks", _stop)
    with pytest.raises(_Stop):
        main(ARGV)
    fb, ft = (fingerprint(load_model(n, device="cpu")).short for n in ("tiny-pair-base", "tiny-pair-tuned"))
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [f"checkpoint-diff-tiny-pair-base-{fb}-vs-tiny-pair-tuned-{ft}"]


class _Stop(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Stop
