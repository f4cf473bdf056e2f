"""Progress for long work, on a terminal or not.

On a terminal it is a rich progress bar; anywhere else (a log file, CI, a pipe) rich would draw
nothing, so the same calls print a plain line every ``every_s`` seconds (from a heartbeat
thread, so a slow first item still shows the command is alive) and one at the end.
Every long command (train, eval, simulate) reports through this one class.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)


class Reporter:
    """``with Reporter("eval arithmetic", total=50) as bar: bar.advance(info="accuracy 0.40")``."""

    def __init__(self, description: str, total: float = 0, *, console: Console | None = None,
                 enabled: bool = True, every_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.total = total
        self.done = 0.0
        self.info = ""
        self.enabled = enabled
        self.every_s = every_s
        self._bar: Progress | None = None
        self._started = self._last = time.monotonic()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> Reporter:
        self._started = self._last = time.monotonic()
        if self.enabled and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._task = self._bar.add_task(self.description, total=self.total or None, info="")
            self._bar.start()
        elif self.enabled:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled:
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join()
            if exc[0] is None:
                self._line()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.every_s, 0.05)):
            if time.monotonic() - self._last >= self.every_s:
                self._line()

    def add_total(self, n: float) -> None:
        """More work became known (e.g. continuations planned after the first rollouts)."""
        self.total += n
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def set_description(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def update(self, info: str) -> None:
        """New status text, shown with the next line or redraw."""
        self.info = info
        if self._bar is not None:
            self._bar.update(self._task, info=info)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.done += n
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=self.info)
        elif self.enabled and time.monotonic() - self._last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        total = f"/{self.total:g}" if self.total else ""
        info = f"  {self.info}" if self.info else ""
        elapsed = self._last - self._started
        self.console.print(f"{self.description}: {self.done:g}{total}{info}  ({elapsed:.0f} s)",
                           highlight=False, soft_wrap=True)
