"""The README's two set-up commands are what CI and users run: keep them in sync and runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_ci_runs_the_readme_test_command():
    install, test = readme_commands()
    assert "pytest" in test and ".[dev]" in test
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.endswith(".venv/bin/hooked-clip valse-negation")


def test_quickstart_example_runs_offline():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                         text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "similarity" in out.stdout


def test_readme_states_the_python_that_pyproject_requires():
    """The README's "Python ≥ X" is pyproject's requires-python (the tests read pyproject with tomllib, 3.11+)."""
    import tomllib

    root = Path(__file__).parents[2]
    required = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    stated = set(re.findall(r"Python ≥ ?(3\.\d+)", (root / "README.md").read_text()))
    assert required.startswith(">=") and stated == {required[2:]}, (required, stated)
