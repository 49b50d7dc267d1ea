"""Devices: one default for every loader (CUDA when available, else the CPU, as TransformerLens), and each
tower's cfg.device / cfg.dtype follow the weights through .to / .cuda / .cpu / .half. This machine has no
GPU, so CUDA availability is monkeypatched: a loader that then reaches for CUDA fails inside torch's CUDA
initialisation, which is the proof that it chose CUDA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import hf_clip, largest_difference, open_clip_model
from hooked_clip import HookedCLIP, load_model
from hooked_clip.devices import resolve_device
from hooked_clip.vision.tower import HookedCLIPVision

CUDA_ERROR = re.compile(r"cuda|nvidia|driver", re.I)  # what torch says when it cannot initialise CUDA

LOADERS = {
    "load_model(tiny-negation)": lambda **kw: load_model("tiny-negation", **kw),
    "load_model(tiny-negation-pixels)": lambda **kw: load_model("tiny-negation-pixels", **kw),
    "HookedCLIP.from_hf": lambda **kw: HookedCLIP.from_hf(hf_clip("tiny_eot"), **kw),
    "HookedCLIP.from_open_clip": lambda **kw: HookedCLIP.from_open_clip(open_clip_model("tiny_argmax"), **kw),
    "HookedCLIPVision.from_hf": lambda **kw: HookedCLIPVision.from_hf(hf_clip("tiny_eot"), **kw),
    "HookedCLIPVision.from_open_clip": lambda **kw: HookedCLIPVision.from_open_clip(open_clip_model("tiny_argmax"), **kw),
}


@pytest.fixture
def saved_hf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf_clip")
    hf_clip("tiny_eot").save_pretrained(path)
    return path


def _cfgs(model) -> list:
    """Every config of a model: the text tower's and, where hooked, the image tower's."""
    towers = [model] if isinstance(model, HookedCLIPVision) else [model.text, model.vision]
    return [t.cfg for t in towers if hasattr(t, "cfg")]


def test_default_rule_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    assert resolve_device("cpu") == "cpu"  # an explicit device is kept


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_loaders_default_to_cpu_without_cuda(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = LOADERS[name]()
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert [c.device for c in _cfgs(model)] == ["cpu"] * len(_cfgs(model))


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_loaders_default_to_cuda_when_available(monkeypatch, name):
    """With CUDA reported available, device=None reaches for CUDA (loads there on a GPU machine, fails where
    there is none); device="cpu" still loads on the CPU."""
    _reaches_for_cuda(monkeypatch, LOADERS[name])
    model = LOADERS[name](device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_from_pretrained_defaults_like_the_others(monkeypatch, saved_hf):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = HookedCLIP.from_pretrained(saved_hf)
    assert model.cfg.device == model.vision.cfg.device == "cpu"
    _reaches_for_cuda(monkeypatch, lambda: HookedCLIP.from_pretrained(saved_hf))


def _reaches_for_cuda(monkeypatch, load) -> None:
    if torch.cuda.is_available():  # a GPU machine: the default is CUDA, and it loads there
        assert {p.device.type for p in load().parameters()} == {"cuda"}
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises((RuntimeError, AssertionError), match=CUDA_ERROR):
        load()


def test_cuda_asked_for_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False.*device='cpu'"):
        load_model("tiny-negation", device="cuda")
    with pytest.raises(ValueError, match=r"not a torch device"):
        load_model("tiny-negation", device="gpu")


def test_moves_keep_every_tower_config_in_step():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    cfgs = _cfgs(model)
    assert len(cfgs) == 2  # text and hooked image tower
    for c in cfgs:
        c.device = "cuda"  # stale, as after a move that did not update it
    model.to("cpu")
    assert [c.device for c in cfgs] == ["cpu", "cpu"]
    assert model.to_tokens(["There is no cat."]).device.type == "cpu"
    model.to("meta")  # a real move to another device (the only other one on a CPU-only machine)
    assert [c.device for c in cfgs] == ["meta", "meta"]
    assert model.text.W_E.device.type == model.vision.embed.W_patch.device.type == "meta"


def test_cpu_half_and_tower_moves_update_cfg():
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    model.text.to("meta")  # one tower alone
    assert model.text.cfg.device == "meta" and model.vision.cfg.device == "cpu"
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    model.half()
    assert model.cfg.dtype == model.vision.cfg.dtype == torch.float16
    model.float().cpu()
    assert model.cfg.dtype == model.vision.cfg.dtype == torch.float32
    assert model.cfg.device == model.vision.cfg.device == "cpu"


def test_cuda_moves_update_cfg(monkeypatch):
    """.cuda() goes through the same path. On a GPU: the weights and cfg move. On a CPU-only machine torch refuses
    (and cfg stays truthful); then, with Tensor.cuda standing in as a move to the meta device, .cuda() is seen
    to carry both towers' cfg.device along with the weights (the path, without a GPU)."""
    model = HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")
    if torch.cuda.is_available():
        model.cuda()
        assert model.cfg.device.startswith("cuda") and model.vision.cfg.device.startswith("cuda")
        assert model.to_tokens("no").device.type == "cuda"
    else:
        with pytest.raises((RuntimeError, AssertionError)):
            model.cuda()
        assert model.cfg.device == "cpu"
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self.to("meta"))
        model.cuda()
        assert model.text.W_E.device.type == model.vision.embed.W_patch.device.type == "meta"
        assert model.cfg.device == model.vision.cfg.device == "meta"


def test_analyses_hold_no_hard_coded_device():
    """Analyses build tensors on their inputs' or the model's device: no literal "cpu"/"cuda" device in
    them (moving results to the CPU with .cpu() for numpy is fine)."""
    root = Path(__file__).resolve().parents[2] / "analyses"
    literal = re.compile(r"""(device\s*=\s*|\.to\(\s*|default\s*=\s*)["'](cpu|cuda)""")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in sorted(root.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if literal.search(line) and i not in _docstring_lines(p)]
    assert hits == []


def _docstring_lines(path: Path) -> set:
    """Line numbers of a file's docstrings: their examples (a manifest's `device = "cpu"`) are not code."""
    import ast
    lines = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: run where one is (CI has none); "
                    "benchmarks/study_end_to_end.py --device cuda runs the whole study there")
def test_the_study_runs_on_cuda(tmp_path):
    """The study's records on the GPU equal those on the CPU (a row-layout tensor once stayed on the CPU)."""
    from hooked_clip.analyses.cli import main

    for device in ("cpu", "cuda"):
        main(["valse-negation", "--limit", "8", "--device", device, "--no-progress", "--out", str(tmp_path / device)])
    cpu, gpu = (json.loads((tmp_path / d / "per_item.json").read_text()) for d in ("cpu", "cuda"))
    assert len(cpu) == 8 and largest_difference(cpu, gpu) <= 1e-3
