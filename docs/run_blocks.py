"""Execute the Python code blocks of a Markdown tutorial, in order, in one namespace.

Used by the test suite (tests/acceptance/test_docs.py: stale docs fail CI) and to refresh the figures the tutorials
show. Every figure a tutorial saves under ``figures/`` has its data beside it in docs/figures/<name>.json (the
numbers and words it shows, :func:`figure_data`); the test compares what the tutorial's code draws with it.
``HC_REFRESH_FIGURES=1 pytest tests/acceptance/test_docs.py -k tutorial_runs`` rewrites both the PNG and the
JSON from the tutorials' code (the tests' stand-in checkpoints included, so tutorial 8's figure is refreshed
too); ``python docs/run_blocks.py`` runs the tutorials without real-weight blocks, with docs/ as the working
directory. A block preceded by ``<!-- docs-test: real-weights -->`` loads real checkpoints; it runs
with the checkpoint names replaced by ``substitutions`` (locally saved random checkpoints of the same
format), so its loading path is tested without a download. ``--export`` writes each tutorial as a script
under examples/ (a test keeps them in sync).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from pathlib import Path

FENCE = re.compile(r"(<!-- docs-test: real-weights -->\s*\n)?```python\n(.*?)```", re.S)
TUTORIALS = sorted((Path(__file__).parent / "tutorials").glob("*.md"))


def blocks(path: Path) -> list[tuple[str, bool]]:
    """(code, needs_real_weights) for each ```python block of ``path``."""
    return [(m.group(2), m.group(1) is not None) for m in FENCE.finditer(path.read_text())]


def run_markdown(path: Path, substitutions: dict[str, str] | None = None, drawn: dict | None = None) -> dict:
    """Run the tutorial's blocks in one namespace. ``drawn``: filled with {sha256 of a saved image file:
    :func:`figure_data` of the figure saved there} for every ``savefig`` the blocks (or code they call) make."""
    namespace: dict = {"__name__": f"docs:{path.stem}"}
    with _recording_savefig(drawn):
        for i, (code, real) in enumerate(blocks(path)):
            if real:
                if substitutions is None:
                    continue
                for old, new in substitutions.items():
                    code = code.replace(old, new)
            try:
                exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{path.name}, code block {i} failed: {type(e).__name__}: {e}\n{code}") from e
    return namespace


FIGURES = Path(__file__).parent / "figures"
BIG = 256  # arrays with more values are kept as summary statistics


@contextlib.contextmanager
def _recording_savefig(drawn: dict | None):
    if drawn is None:
        yield
        return
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        out = real(fig, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)) and Path(fname).is_file():
            drawn[file_hash(Path(fname))] = figure_data(fig)
        return out
    Figure.savefig = savefig
    try:
        yield
    finally:
        Figure.savefig = real


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbers(values) -> list | dict:
    import numpy as np

    a = np.ma.filled(np.ma.asarray(values, dtype=float), np.nan)
    if a.size > BIG:  # an image: its shape and statistics
        return {"shape": list(a.shape), "mean": float(np.nanmean(a)), "std": float(np.nanstd(a)),
                "min": float(np.nanmin(a)), "max": float(np.nanmax(a))}
    return [None if v != v else round(float(v), 6) for v in a.ravel()]


def figure_data(fig) -> dict:
    """What a matplotlib figure shows: its titles and labels (colour bars' included), and per axes the plotted
    numbers (lines' y values, bar heights, scatter points, images; large images as shape and statistics)."""
    suptitle = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) is not None else []
    texts = list(dict.fromkeys(suptitle + [t.get_text() for t in fig.texts if t.get_text()]))
    axes = []
    for ax in fig.axes:
        legend = ax.get_legend()
        axes.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "colorbar": getattr(ax, "_colorbar", None) is not None,
            "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
            "lines": [_numbers(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata()) > 0],
            "bars": _numbers([p.get_height() for p in ax.patches if type(p).__name__ == "Rectangle"]),
            "points": [_numbers(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")
                       and len(c.get_offsets()) > 0],
            "images": [_numbers(im.get_array()) for im in ax.get_images()],
        })
    return {"texts": texts, "axes": axes}


EXAMPLES = Path(__file__).parents[1] / "examples"


def as_script(path: Path) -> str:
    """The tutorial as a runnable script (examples/tutorial_<name>.py): its blocks in order; blocks that need
    real weights are kept as comments."""
    out = [f'"""{path.stem}: the code of docs/tutorials/{path.name}, generated by `python docs/run_blocks.py '
           '--export`; edit the tutorial, not this file."""', ""]
    for code, real in blocks(path):
        if real:
            out += ["# needs real weights (network or a local copy):"] + [f"# {line}" for line in code.splitlines()]
        else:
            out += code.splitlines()
        out.append("")
    return "\n".join(out)


def example_path(path: Path) -> Path:
    return EXAMPLES / f"tutorial_{path.stem.replace('-', '_')}.py"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "--export" in sys.argv:
        for tutorial in TUTORIALS:
            example_path(tutorial).write_text(as_script(tutorial))
        sys.exit(0)
    os.chdir(Path(__file__).parent)
    for tutorial in TUTORIALS:
        print(f"running {tutorial.name}", file=sys.stderr)
        run_markdown(tutorial)
