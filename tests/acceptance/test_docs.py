"""Every code block of docs/tutorials runs (stale docs fail CI), on the demo model or small random models;
blocks that load real checkpoints run against locally saved random checkpoints of the same formats."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import VALSE, hf_clip, open_clip_text_cfg, randomize_
from PIL import Image, ImageDraw

DOCS = Path(__file__).parents[2] / "docs"
sys.path.insert(0, str(DOCS))
from run_blocks import FIGURES, TUTORIALS, as_script, blocks, example_path, file_hash, run_markdown  # noqa: E402

REFRESH = os.environ.get("HC_REFRESH_FIGURES") == "1"  # rewrite docs/figures/*.png and *.json from the tutorials
MODEL_NAMED = re.compile(r"tiny-negation|tiny-pair|tiny-count|random|CLIP|clip")  # every figure says which model it shows


@pytest.fixture(autouse=True)
def restore_grad_mode():
    """Tutorials run in this process and switch gradients off at the top, as scripts do: restore it."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(scope="module")
def substitutions(tmp_path_factory):
    """Real checkpoint names -> random local checkpoints in the same formats (HF directory, open_clip file)."""
    import open_clip

    root = tmp_path_factory.mktemp("ckpts")
    hf_clip("laion_gelu").save_pretrained(root / "hf")
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": open_clip_text_cfg("tiny_argmax")}
    (root / "hc-docs-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root / "hc-docs-tiny.json")
    torch.save(randomize_(open_clip.create_model("hc-docs-tiny"), seed=3).state_dict(), root / "oc.pt")
    images = root / "visual7w"  # random pictures under the Visual7W names of the VALSE existence items
    images.mkdir()
    for i, name in enumerate(sorted({x["image_file"] for x in json.loads(VALSE.read_text()).values()})):
        w, h = 160 + 8 * (i % 5), 96 + 8 * (i % 3)  # landscape: the centre crop shows in tutorial 8's figure
        im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        ImageDraw.Draw(im).ellipse((w // 8, h // 4, w // 8 + h // 2, 3 * h // 4), fill=(200, 60, 40))
        ImageDraw.Draw(im).rectangle((w - w // 4, h // 3, w - w // 8, 2 * h // 3), fill=(40, 90, 200))
        im.save(images / name, quality=90)
    return {'"openai/clip-vit-base-patch32"': repr(str(root / "hf")),
            '"/models/clip-vit-base-patch32"': repr(str(root / "hf")),
            '"ViT-B-32", pretrained="openai"': f'"hc-docs-tiny", pretrained={str(root / "oc.pt")!r}',
            '"ViT-B-32-quickgelu", pretrained="/models/vit-b-32-openai.pt"': f'"hc-docs-tiny", pretrained={str(root / "oc.pt")!r}',
            '"/data/visual7w"': repr(str(images))}


def test_every_tutorial_has_code_and_a_figure():
    nav = re.findall(r"tutorials/([\w.-]+\.md)", (DOCS.parent / "mkdocs.yml").read_text())
    assert sorted(nav) == [t.name for t in TUTORIALS], "every tutorial in mkdocs.yml's nav, and only those"
    assert len(TUTORIALS) >= 8
    for t in TUTORIALS:
        assert blocks(t), t.name
        figures = __import__("re").findall(r"!\[[^\]]*\]\(\.\./figures/([^)]+)\)", t.read_text())
        assert figures, f"{t.name} shows no figure"
        for fig in figures:
            assert (DOCS / "figures" / fig).is_file(), f"{t.name} shows figures/{fig}, which is missing"


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(tutorial, substitutions, tmp_path, monkeypatch):
    """The tutorial runs, and every figure it shows is the one its code draws now: the figure's data (numbers,
    titles, labels) equals docs/figures/<name>.json, saved with the PNG by the last refresh (HC_REFRESH_FIGURES=1).
    Every figure names its model; every colour bar has a label."""
    monkeypatch.chdir(tmp_path)
    drawn: dict = {}
    run_markdown(tutorial, substitutions, drawn)
    for fig in re.findall(r"!\[[^\]]*\]\(\.\./figures/([^)]+)\)", tutorial.read_text()):
        made = tmp_path / "figures" / fig
        assert made.is_file(), f"{tutorial.name} shows figures/{fig}, which its code does not make"
        data = drawn.get(file_hash(made))
        assert data is not None, f"figures/{fig} was not drawn by this run's code"
        words = " ".join(data["texts"] + [a["title"] for a in data["axes"]] + [w for a in data["axes"] for w in a["legend"]])
        assert MODEL_NAMED.search(words), f"figures/{fig} does not name its model: {words!r}"
        for a in data["axes"]:
            assert not a["colorbar"] or a["ylabel"] or a["xlabel"], f"figures/{fig}: a colour bar without a label"
        stored = FIGURES / (Path(fig).stem + ".json")
        if REFRESH:
            shutil.copy(made, FIGURES / fig)
            stored.write_text(json.dumps(data, indent=1) + "\n")
            continue
        assert stored.is_file(), f"no {stored.name}: refresh with HC_REFRESH_FIGURES=1"
        same_figure(json.loads(stored.read_text()), data, f"figures/{fig}")


def same_figure(stored, drawn, where: str) -> None:
    """Equal words and shapes; numbers within 1e-3 + 1e-2 relative (other threads and CPUs round differently)."""
    if isinstance(stored, dict):
        assert isinstance(drawn, dict) and stored.keys() == drawn.keys(), f"{where}: {sorted(stored)} vs {drawn}"
        for k in stored:
            same_figure(stored[k], drawn[k], f"{where}.{k}")
    elif isinstance(stored, list):
        assert isinstance(drawn, list) and len(stored) == len(drawn), f"{where}: {len(stored)} values vs {drawn}"
        for i, (a, b) in enumerate(zip(stored, drawn)):
            same_figure(a, b, f"{where}[{i}]")
    elif isinstance(stored, (int, float)) and not isinstance(stored, bool):
        assert isinstance(drawn, (int, float)) and abs(stored - drawn) <= 1e-3 + 1e-2 * abs(stored), \
            f"{where}: the figure shows {drawn}, docs/figures has {stored}; refresh with HC_REFRESH_FIGURES=1"
    else:
        assert stored == drawn, f"{where}: {drawn!r} vs the stored {stored!r}; refresh with HC_REFRESH_FIGURES=1"


def test_examples_mirror_the_tutorials():
    for t in TUTORIALS:
        assert example_path(t).read_text() == as_script(t), f"run `python docs/run_blocks.py --export` ({t.name})"


def test_api_reference_builds_strictly(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=DOCS.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    page = (tmp_path / "site" / "api" / "analyses" / "index.html").read_text()
    assert "activation_patch" in page and "attribution_patch" in page


def test_every_shell_command_in_the_docs_parses():
    """The `bash` blocks are not run (they download, or need real weights and photos); each `hooked-clip` line in
    them is parsed by the command's own argument parser, so a renamed or misspelt option fails here."""
    import shlex

    from hooked_clip.analyses.cli import build_parser

    pages = [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]
    commands = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    words = words[next((i for i, w in enumerate(words) if w.endswith("hooked-clip")), len(words)):]
                    if words:
                        commands.append((page.name, words[1:]))
    assert len(commands) >= 8
    for page, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `hooked-clip {' '.join(argv)}` does not parse")
