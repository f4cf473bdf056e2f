"""Run a function in a worker process under a hard time limit, from any thread.

math-verify bounds its sympy work with ``signal.alarm``, which works only in the main thread and
cannot interrupt one long C call (a big-integer power) even there; verl steps envs in threads.
A worker process can always be stopped: the caller waits at most ``timeout`` seconds for the
answer and kills the worker if it has not come. Workers start on first use (``spawn``, which is
safe in a threaded process), import what they will need before the clock starts, cap their own
address space, and are kept for later calls; at most ``size`` calls run at once.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

STARTUP_TIMEOUT_S = 120.0
"""How long a new worker may take to start and import its modules (not counted in ``timeout``)."""


class WorkerError(RuntimeError):
    """The function raised in the worker, the worker died, or it ran out of time."""


class WorkerTimeout(WorkerError):
    """No answer within the time limit; the worker was killed."""


def _read_line(stream: IO[bytes], timeout: float) -> bytes | None:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


_MAIN = "import json, sys; from trace_envs.tasks.workers import _serve; _serve(*json.loads(sys.argv[1]))"


class _Worker:
    """A plain interpreter running :func:`_serve` (no re-import of the caller's main module,
    unlike ``multiprocessing``'s spawn) that answers JSON lines."""

    def __init__(self, preload: Sequence[str], memory_bytes: int | None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        command = [sys.executable, "-c", _MAIN, json.dumps([list(preload), memory_bytes])]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        if _read_line(self.process.stdout, STARTUP_TIMEOUT_S) != b"ready\n":  # type: ignore[arg-type]
            self.kill()
            raise WorkerError("a worker process did not start")

    def call(self, function: str, args: Sequence[Any], timeout: float) -> tuple[bool, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps([function, list(args)]).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            self.kill()
            raise WorkerError("the worker died") from None
        line = _read_line(self.process.stdout, timeout)
        if line is None:
            self.kill()
            raise WorkerTimeout(f"no answer within {timeout} s; the worker was killed")
        if not line:
            self.kill()
            raise WorkerError("the worker died (out of memory?)")
        ok, value = json.loads(line)
        return ok, value

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class WorkerPool:
    """A few reusable worker processes; :meth:`run` is thread-safe."""

    def __init__(
        self, size: int = 2, *, preload: Sequence[str] = (), memory_bytes: int | None = None
    ) -> None:
        self.size, self.preload, self.memory_bytes = size, tuple(preload), memory_bytes
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(self.size)

    def run(self, function: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """``function(*args)`` in a worker; :class:`WorkerTimeout` after ``timeout`` seconds.

        ``function`` must be a module-level function, its arguments and result JSON values.
        """
        name = f"{function.__module__}:{function.__qualname__}"
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's workers are not ours
                self._reset()
            slots = self._slots
        slots.acquire()
        try:
            worker = self._take()
            ok, value = worker.call(name, args, timeout)
            with self._lock:
                self._idle.append(worker)
        finally:
            slots.release()
        if not ok:
            raise WorkerError(value)
        return value

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.poll() is None:
                    return worker
                worker.kill()
        return _Worker(self.preload, self.memory_bytes)


def _serve(preload: Sequence[str], memory_bytes: int | None) -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of the libraries go to stderr, not into the replies
    if memory_bytes is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for module in preload:
        importlib.import_module(module)
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        name, args = json.loads(line)
        module, _, qualname = name.partition(":")
        try:
            reply = [True, getattr(importlib.import_module(module), qualname)(*args)]
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            reply = [False, f"{type(exc).__name__}: {str(exc)[:500]}"]
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
