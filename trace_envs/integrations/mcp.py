"""Tool envs whose tools are an MCP server's tools (the ``mcp`` SDK: stdio or streamable HTTP).

    env = MCPToolEnv("arithmetic", ["python", "server.py"])          # stdio: launch the command
    env = MCPToolEnv("arithmetic", "http://127.0.0.1:8000/mcp")      # streamable HTTP

The episode's task and grading come from a trace-rl task suite; the tools come from the server
(``tools/list``), each argument set is checked against the tool's ``inputSchema`` with
``jsonschema`` before it is sent, and a tool error, a timeout or a dead server is an error
observation, never an exception out of ``step``.

Fork semantics depend on where the tool state lives:

- **stateless server** (the default, ``stateful=False``): the server keeps nothing between calls,
  so forks share the one connection and a fork costs what a `ToolEnv` fork costs.
- **stateful server with snapshot/restore**: if the server offers tools named
  ``trace_snapshot()`` (returns its state as JSON) and ``trace_restore(state)`` (``state=None``
  means a fresh episode), the env keeps its own copy of that state, restores it before each call
  and snapshots it after, under a lock on the connection. Forks and snapshots are then exact even
  though every fork talks to the same server. Those two tools are hidden from the model.
- **stateful server without them**: the state lives only in the server process, so ``fork()``
  and ``snapshot()`` raise :class:`ForkUnsupported` with the reason instead of returning a copy
  that silently shares state.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import shlex
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Self

from trace_envs.core import ToolEnv
from trace_envs.snapshot import Snapshot
from trace_envs.tasks.base import TaskSuite
from trace_envs.tasks.suites import load_suite
from trace_envs.tools import Tool, ToolError

SNAPSHOT_TOOL = "trace_snapshot"
RESTORE_TOOL = "trace_restore"
SHUTDOWN_S = 15.0
"""Bound on closing a connection: the SDK's stdio shutdown takes at most about 7 s (a grace
period after EOF, SIGTERM, SIGKILL)."""


class ForkUnsupported(RuntimeError):
    """``fork()``/``snapshot()`` of an env whose tool state lives only in an MCP server process."""


ServerSpec = str | Sequence[str] | Any
"""A URL (streamable HTTP), a command line (stdio), or an ``mcp.StdioServerParameters``."""


class MCPConnection:
    """One MCP client session, kept open on its own event-loop thread so sync code can call it.

    The client's whole life runs as one task on that loop, inside one cancel scope: the start-up
    deadline, :meth:`close` and an interrupted start all cancel that scope, so the SDK's own
    shutdown (close stdin, SIGTERM, SIGKILL for a stdio server) runs on every path and no server
    process outlives the connection. A connection still open at interpreter exit is closed then.
    """

    def __init__(self, server: ServerSpec, *, timeout_s: float = 30.0) -> None:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if isinstance(server, str | StdioServerParameters):
            target = server
        else:
            argv = list(server)
            target = StdioServerParameters(command=argv[0], args=argv[1:])
        self.server = target
        self.timeout_s = timeout_s
        self.lock = threading.RLock()
        """Held across a restore/call/snapshot sequence of a stateful server."""
        self._stderr = _StderrTail() if isinstance(target, StdioServerParameters) else None
        transport = target if self._stderr is None else stdio_client(target, errlog=self._stderr.file)
        self._client = Client(transport, read_timeout_seconds=timeout_s)
        self._scope: Any = None  # the life task's cancel scope (the loop thread's only)
        self._cancelled = False
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        started: Future = Future()
        self._life = asyncio.run_coroutine_threadsafe(self._serve(started), self._loop)
        atexit.register(self.close)
        try:
            self.instructions, self.tools = started.result()
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception):
                raise self._start_error(exc) from exc
            raise
        if self._stderr is not None:
            self._stderr.spawned()

    async def _serve(self, started: Future) -> None:
        """Start the client, publish its tools, then hold the session open until cancelled."""
        import anyio

        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self.timeout_s) as self._scope:
                if self._cancelled:
                    self._scope.cancel()
                async with self._client:
                    tools = await self._list_tools()
                    self._scope.deadline = math.inf
                    started.set_result((self._client.instructions, tools))
                    await anyio.sleep_forever()
            if not started.done():
                started.set_exception(TimeoutError(f"no answer to the handshake within {self.timeout_s:g} s"))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def _cancel(self) -> None:
        """On the loop thread: end the life task (whether it is starting or serving)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def _start_error(self, exc: Exception) -> Exception:
        """One line: which server, what went wrong, and the last lines it wrote to stderr."""
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tail = self._stderr.text() if self._stderr is not None else ""
        message = f"MCP server {_describe(self.server)} failed to start: {reason}"
        if tail:
            message += f"; its stderr ends: {tail}"
        return (TimeoutError if isinstance(exc, TimeoutError) else ConnectionError)(message)

    def _run(self, coroutine: Any, timeout_s: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout_s or self.timeout_s + 5)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from the MCP server within {timeout_s or self.timeout_s} s") from None

    async def _list_tools(self) -> list[Any]:
        tools, cursor = [], None
        while True:
            page = await self._client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools

    def call(self, name: str, arguments: Mapping[str, Any]) -> Any:
        """``tools/call``; returns the SDK's ``CallToolResult``."""
        if self._closed:
            raise ConnectionError("the MCP connection is closed")
        return self._run(self._client.call_tool(name, dict(arguments)))

    def close(self) -> None:
        """Stop the session and its server (bounded: the SDK escalates to SIGKILL), then the loop."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._loop.call_soon_threadsafe(self._cancel)
        try:
            self._life.result(timeout=SHUTDOWN_S)
        except BaseException:  # the failure that ended it was reported already, or is moot now
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        if self._stderr is not None:
            self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StderrTail:
    """A stdio server's stderr: passed on to ours line by line, its last lines kept so that a
    server that dies at start is reported with its own last words."""

    def __init__(self, lines: int = 3) -> None:
        read_fd, write_fd = os.pipe()
        self.file = os.fdopen(write_fd, "w")
        """The write end, for the server; ours is closed once the server holds its own."""
        self._lines: deque[str] = deque(maxlen=lines)
        self._thread = threading.Thread(target=self._pump, args=(os.fdopen(read_fd, "rb"),),
                                        name="mcp-stderr", daemon=True)
        self._thread.start()

    def _pump(self, pipe: Any) -> None:
        with pipe:
            while line := pipe.readline(8192):
                text = line.decode(errors="replace")
                sys.stderr.write(text)
                if text.strip():
                    self._lines.append(text.strip()[:200])

    def spawned(self) -> None:
        self.file.close()

    def text(self) -> str:
        return " | ".join(self._lines)

    def close(self) -> None:
        """Wait (bounded) for the server's last words; the server is gone by now."""
        self.file.close()
        self._thread.join(timeout=5)


def _describe(server: Any) -> str:
    if isinstance(server, str):
        return server
    text = shlex.join([server.command, *server.args])
    return text if len(text) <= 120 else text[:117] + "..."


def result_text(result: Any) -> str:
    """The text the model reads: text blocks joined; other blocks named, not dropped silently."""
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "?")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{kind} content: {getattr(block, 'mime_type', None) or 'not shown'}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _schema_validator(name: str, schema: Mapping[str, Any]) -> Any:
    import jsonschema

    checker = jsonschema.validators.validator_for(schema)(schema)

    def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
        errors = sorted(checker.iter_errors(dict(arguments)), key=lambda e: list(e.path))
        if errors:
            problems = "; ".join(
                f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}" for e in errors[:5])
            raise ToolError(f"invalid arguments for {name}: {problems}")
        return dict(arguments)

    return validate


class MCPToolEnv(ToolEnv):
    """A task suite's episodes, played with an MCP server's tools (see the module docstring)."""

    def __init__(
        self,
        suite: str | TaskSuite,
        server: ServerSpec | MCPConnection,
        *,
        stateful: bool = False,
        instructions: str | None = None,
        split: str = "all",
        suite_options: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        **env_options: Any,
    ) -> None:
        tasks = suite if isinstance(suite, TaskSuite) else load_suite(suite, **(suite_options or {}))
        super().__init__(tasks.split(split), **env_options)  # type: ignore[arg-type]
        self.connection = server if isinstance(server, MCPConnection) else MCPConnection(server, timeout_s=timeout_s)
        self._owns_connection = not isinstance(server, MCPConnection)
        names = {t.name for t in self.connection.tools}
        self.stateful = stateful
        self.restorable = stateful and {SNAPSHOT_TOOL, RESTORE_TOOL} <= names
        self.tools = {
            t.name: Tool(t.name, t.description or t.name, t.input_schema, _remote_tool(t.name),
                         _schema_validator(t.name, t.input_schema))
            for t in self.connection.tools if t.name not in (SNAPSHOT_TOOL, RESTORE_TOOL)
        }
        self.instructions = instructions if instructions is not None else (self.connection.instructions or "")
        self.server_state: Any = None

    # ---------------------------------------------------------------- server state
    def reset_tool_state(self, task: Any) -> None:
        self.server_state = None
        if self.restorable:
            with self.connection.lock:
                self._remote(RESTORE_TOOL, {"state": None})
                self.server_state = self._server_snapshot()

    def get_tool_state(self) -> Any:
        self._check_forkable("snapshot")
        return self.server_state

    def set_tool_state(self, state: Any) -> None:
        self.server_state = state

    def fork(self) -> Self:
        self._check_forkable("fork")
        clone = super().fork()
        clone._owns_connection = False  # forks share the parent's connection
        return clone

    def snapshot(self) -> Snapshot:
        self._check_forkable("snapshot")
        return super().snapshot()

    def _check_forkable(self, what: str) -> None:
        if self.stateful and not self.restorable:
            raise ForkUnsupported(
                f"cannot {what} an env on a stateful MCP server without {SNAPSHOT_TOOL}/{RESTORE_TOOL} "
                "tools: its state lives in the server process, so a copy would share it with this env. "
                f"Add {SNAPSHOT_TOOL}() -> JSON and {RESTORE_TOOL}(state) tools to the server, or declare "
                "it stateful=False if it keeps nothing between calls.")

    # ------------------------------------------------------------------ calls
    def run_remote(self, name: str, arguments: Mapping[str, Any]) -> str:
        """One validated tool call; a restorable server gets this env's state around it."""
        if not self.restorable:
            return result_text(self._remote(name, arguments))
        with self.connection.lock:
            self._remote(RESTORE_TOOL, {"state": self.server_state})
            result = self._remote(name, arguments)
            self.server_state = self._server_snapshot()
        return result_text(result)

    def _remote(self, name: str, arguments: Mapping[str, Any]) -> Any:
        try:
            result = self.connection.call(name, arguments)
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise ToolError(f"MCP server unreachable: {exc}") from None
        except Exception as exc:  # protocol-level errors (unknown tool, bad request) from the SDK
            raise ToolError(f"MCP error from {name}: {exc}") from None
        if result.is_error:
            raise ToolError(result_text(result) or f"{name} failed")
        return result

    def _server_snapshot(self) -> Any:
        result = self._remote(SNAPSHOT_TOOL, {})
        if result.structured_content is not None:
            content = result.structured_content
            return content.get("result", content) if isinstance(content, dict) and len(content) == 1 else content
        try:
            return json.loads(result_text(result))
        except json.JSONDecodeError:
            raise ToolError(f"{SNAPSHOT_TOOL} did not return JSON") from None

    def close(self) -> None:
        if self._owns_connection:
            self.connection.close()
        super().close()


def _remote_tool(name: str) -> Any:
    def run(env: MCPToolEnv, /, **arguments: Any) -> str:
        return env.run_remote(name, arguments)

    run.__name__ = name
    return run
