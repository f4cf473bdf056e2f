"""The packages pass the linter configured in pyproject.toml ([tool.ruff]): pyflakes' checks
(undefined names, unused imports), pycodestyle's errors and line length, import order, and a
few comprehension and idiom rules. A failure prints ruff's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["trace_envs", "trace_agents", "trace_allocation"]


def test_the_packages_pass_ruff():
    pytest.importorskip("ruff", reason="the dev extra installs ruff")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *PACKAGES],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
