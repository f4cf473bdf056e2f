"""A run folder is never lost: a new run refuses a folder that holds one, and a start that fails
before its first checkpoint leaves nothing behind."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trace_agents.train.checkpoint import NAME as CHECKPOINT
from trace_agents.train.config import CONFIG_NAME

RUN_FILES = (CONFIG_NAME, "metrics.jsonl", CHECKPOINT)
"""What marks a folder as a trace-rl run."""


class RunExists(ValueError):
    """``--out`` already holds a run (or other files) and neither resume nor overwrite was asked."""


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def prepare(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a folder with a run in it unless ``overwrite``; never delete a folder that is not
    a run (``--out .`` with ``--overwrite`` must not wipe a project)."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not holds_run(out_dir):
        raise RunExists(f"{out_dir} is not empty and holds no trace-rl run: choose a new --out folder")
    if not overwrite:
        raise RunExists(f"{out_dir} already holds a run: continue it with `trace-rl train --resume "
                        f"{out_dir}`,\nor add --overwrite to delete it and start again")
    shutil.rmtree(out_dir)


@contextmanager
def cleaned_on_failed_start(out_dir: Path) -> Iterator[None]:
    """If the body fails before a checkpoint exists, remove what it wrote (the folder itself when
    it did not exist before)."""
    existed = out_dir.exists()
    try:
        yield
    except BaseException:
        if not (out_dir / CHECKPOINT).exists():
            if not existed:
                shutil.rmtree(out_dir, ignore_errors=True)
            elif out_dir.exists():
                for child in out_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
