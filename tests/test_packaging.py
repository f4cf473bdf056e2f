"""The package metadata: ranges (never pins) and extras that resolve without replacing torch."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish|Temporary failure in name resolution|"
    r"Network is unreachable|Max retries exceeded|ProxyError|ConnectTimeout|No route to host",
    re.IGNORECASE,
)


def _requirements() -> list[tuple[str, Requirement]]:
    found = [("dependencies", Requirement(r)) for r in PROJECT["dependencies"]]
    found += [(extra, Requirement(r)) for extra, reqs in EXTRAS.items() for r in reqs]
    return found


def test_library_metadata_has_lower_bounds_only() -> None:
    """A pin or an upper bound here would fight the torch/CUDA stack of the user's machine."""
    for where, req in _requirements():
        for spec in req.specifier:
            assert spec.operator == ">=", f"{where}: {req} (only >= ranges; pins go in install.sh)"


def test_extras_named_by_the_design_exist_and_all_covers_the_cpu_ones() -> None:
    for name in ("sglang", "vllm", "tracking", "mcp", "trl", "datasets", "faiss", "torch"):
        assert name in EXTRAS, name
    all_extras = Requirement(EXTRAS["all"][0]).extras
    gpu_server_side = {"sglang", "vllm", "verl"}  # need a GPU stack of the user's choosing
    assert set(EXTRAS) - {"all", "dev"} - gpu_server_side <= all_extras


def test_self_references_name_known_extras() -> None:
    for where, req in _requirements():
        if canonicalize_name(req.name) == "trace-rl":
            assert req.extras <= set(EXTRAS), f"{where}: {req}"


def test_every_extra_resolves_without_changing_installed_packages(tmp_path: Path) -> None:
    """``pip install --dry-run .[every extra]`` against this environment: it must resolve, and
    nothing already installed (torch above all) may change version. One resolution of the union
    covers each extra, since a solution of the union satisfies every subset. ``verl`` is left out:
    verl 0.9 pins an older transformers, so it has its own venv (scripts/install_verl.sh)."""
    extras = ",".join(sorted(set(EXTRAS) - {"all", "verl"}))
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation",
           "--disable-pip-version-check", "--report", str(report), f"{ROOT}[{extras}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and UNREACHABLE.search(proc.stderr):
        pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    changed = []
    for item in json.loads(report.read_text())["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if canonicalize_name(name) == "trace-rl":
            continue
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue  # a new package is fine: this checks that nothing installed is replaced
        if installed != version:
            changed.append(f"{name} {installed} -> {version}")
    assert not changed, f"installing the extras would replace: {changed}"
