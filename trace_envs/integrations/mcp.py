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
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Self

from trace_envs.core import ToolEnv
from trace_envs.snapshot import Snapshot
from trace_envs.tasks.base import TaskSuite
from trace_envs.tasks.suites import load_suite
from trace_envs.tools import Tool, ToolError

SNAPSHOT_TOOL = "trace_snapshot"
RESTORE_TOOL = "trace_restore"


class ForkUnsupported(RuntimeError):
    """``fork()``/``snapshot()`` of an env whose tool state lives only in an MCP server process."""


ServerSpec = str | Sequence[str] | Any
"""A URL (streamable HTTP), a command line (stdio), or an ``mcp.StdioServerParameters``."""


class MCPConnection:
    """One MCP client session, kept open on its own event-loop thread so sync code can call it."""

    def __init__(self, server: ServerSpec, *, timeout_s: float = 30.0) -> None:
        from mcp import Client, StdioServerParameters

        if isinstance(server, str | StdioServerParameters):
            target = server
        else:
            argv = list(server)
            target = StdioServerParameters(command=argv[0], args=argv[1:])
        self.server = target
        self.timeout_s = timeout_s
        self.lock = threading.RLock()
        """Held across a restore/call/snapshot sequence of a stateful server."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        self._client = Client(target, read_timeout_seconds=timeout_s)
        self._closed = False
        try:
            self._run(self._client.__aenter__())
            self.instructions: str | None = self._client.instructions
            self.tools = self._list_tools()
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Any, timeout_s: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout_s or self.timeout_s + 5)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from the MCP server within {timeout_s or self.timeout_s} s") from None

    def _list_tools(self) -> list[Any]:
        tools, cursor = [], None
        while True:
            page = self._run(self._client.list_tools(cursor=cursor))
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
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.__aexit__(None, None, None), timeout_s=10)
        except Exception:  # the server may already be gone; the thread still stops below
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
