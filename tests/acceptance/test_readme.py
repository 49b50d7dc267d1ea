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
