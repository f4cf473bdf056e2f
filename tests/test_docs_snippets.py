"""Every code block in README.md and docs/*.md runs as written.

Convention for writers of the docs:

* A fenced block tagged ``python`` or ``bash`` is RUN: python blocks each in a fresh
  subprocess (so each must be self-contained: its own imports and data), bash blocks with
  ``bash -euo pipefail``. Blocks of one file run in order in one sandbox folder, so a later
  block may use what an earlier one wrote (``runs/demo`` after a train command).
* ``<!-- fragment -->`` (optionally ``<!-- fragment: why -->``) on the line right before the
  opening fence marks a block that is shown but not run: an excerpt of a larger program, a
  server that runs until stopped, a command that installs packages or needs a GPU cluster.
* Any other tag (``text``, ``yaml``, ``json``, none) is output or data and is never run.

The sandbox is a temporary folder that mirrors the repository (examples/, scripts/,
benchmarks/, ...) with a ``.venv/bin`` whose ``python`` and ``trace-rl`` run this checkout with
the test's interpreter, so commands are written as a user types them (``.venv/bin/trace-rl``).
Slow commands run with small settings: ``trace-rl`` appends ``SMALL[command]`` to its
arguments (later flags win), ``examples/demo.yaml`` is the real file with ``DEMO_SMALL``
merged in (still validated by TrainConfig), and ``scripts/install.sh`` only checks that the
venv imports everything (CI runs the real one first: ``.ci/run``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN = {"python", "bash"}
FRAGMENT = re.compile(r"<!--\s*fragment\b.*-->")
TIMEOUT_S = 600
SMALL = {
    "train": ["--steps", "1", "--no-progress"],
    "eval": ["--limit", "1", "--max-tokens", "8", "--max-turns", "2", "--no-progress"],
    "simulate": ["--quick", "--steps", "2", "--no-progress"],
    "record": ["--prompts", "2", "--chunk", "2", "--bare", "2", "--no-progress"],
}
DEMO_SMALL = {
    "model": {"name": "tiny-qwen3"},
    "warmup": {"examples": 2, "epochs": 1, "lr": 5.0e-5},
    "sampling": {"temperature": 1.0, "max_tokens": 8},
    "budget": {"pool": 4, "roots": 2, "continuations_per_root": 1, "group_size": 2,
               "m_min": 2, "m_max": 2},
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Fenced blocks to run (python/bash, not marked as a fragment)."""
    found, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = re.match(r"^(\s*)```(\w*)", lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        fragment = start > 0 and FRAGMENT.search(lines[start - 1])
        if lang in RUN and not fragment:
            code = textwrap.dedent("\n".join(lines[start + 1:end]))
            found.append(Block(path, start + 1, lang, code))
        i = end + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]
WRAPPER = """#!{python}
import sys
sys.path.insert(0, {repo!r})
SMALL = {small!r}
argv = sys.argv[1:]
if argv and argv[0] in SMALL:
    argv += SMALL[argv[0]]
from trace_agents.cli import main
sys.exit(main(argv))
"""
INSTALL_STUB = """#!/usr/bin/env bash
# The docs test does not reinstall (CI ran the real scripts/install.sh first): check the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "import trace_envs, trace_agents, trace_allocation, torch, transformers"
"""


def make_sandbox(root: Path) -> Path:
    root.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in {".venv", "runs", ".git", "scripts", "examples"}:
            (root / entry.name).symlink_to(entry)
    for folder in ("scripts", "examples"):
        (root / folder).mkdir()
        for entry in (REPO / folder).iterdir():
            (root / folder / entry.name).symlink_to(entry)
    (root / "scripts" / "install.sh").unlink()
    (root / "scripts" / "install.sh").write_text(INSTALL_STUB)
    (root / "scripts" / "install.sh").chmod(0o755)
    demo = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    (root / "examples" / "demo.yaml").unlink()
    (root / "examples" / "demo.yaml").write_text(yaml.safe_dump({**demo, **DEMO_SMALL}))
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        f'#!/usr/bin/env bash\nPYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n')
    (bin_dir / "trace-rl").write_text(WRAPPER.format(python=sys.executable, repo=str(REPO),
                                                     small=SMALL))
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return root


@pytest.fixture(scope="session")
def sandboxes(tmp_path_factory):
    made: dict[Path, Path] = {}

    def get(path: Path) -> Path:
        if path not in made:
            made[path] = make_sandbox(tmp_path_factory.mktemp("docs") / path.stem)
        return made[path]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_runs(block: Block, sandboxes):
    cwd = sandboxes(block.path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{cwd / '.venv' / 'bin'}:{os.environ['PATH']}"}
    command = ([str(cwd / ".venv" / "bin" / "python"), "-c", block.code] if block.lang == "python"
               else ["bash", "-euo", "pipefail", "-c", block.code])
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: still running after {TIMEOUT_S} s (mark it <!-- fragment --> if "
                    "it is a server, or make it smaller)")
    assert done.returncode == 0, (f"{block.id} failed:\n{block.code}\n--- output\n"
                                  f"{done.stdout[-3000:]}{done.stderr[-3000:]}")


REPO_PATH = re.compile(r"`((?:examples|scripts|benchmarks|docs|tests|trace_envs|trace_agents|"
                       r"trace_allocation)/[\w./*-]*)`")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_docs_reference_what_exists(path: Path):
    """Links and `repo/paths` in the docs exist; nothing points outside the repository."""
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"https?://", target) and not (path.parent / target).exists():
            missing.append(target)
    for target in REPO_PATH.findall(text):
        if not list(REPO.glob(target.rstrip("/"))):
            missing.append(target)
    assert not missing, f"{path.name} names what does not exist: {missing}"
    assert "/work/" not in text, f"{path.name} cites a path outside the repository"
