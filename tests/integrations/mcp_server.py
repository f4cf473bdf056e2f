"""A small MCP server for the tests: `python mcp_server.py MODE [PORT] [TAG]` (stdio without a port).

MODE: ``stateless`` (add, fail), ``stateful`` (+ a counter held in this process),
``restorable`` (+ trace_snapshot/trace_restore of that counter) or ``stubborn`` (stateless, but
it ignores SIGTERM and keeps running after its stdin closes: only SIGKILL ends it). TAG only
marks the process for tests.processes.tagged.
"""

import signal
import sys
import time

from mcp.server import MCPServer

mode = sys.argv[1]
server = MCPServer("trace-test", instructions="Use the tools to answer.")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Always fails with the given message."""
    raise ValueError(message)


if mode in ("stateful", "restorable"):
    counter = {"n": 0}

    @server.tool()
    def increment(by: int = 1) -> int:
        """Add to the counter and return it."""
        counter["n"] += by
        return counter["n"]

if mode == "restorable":

    @server.tool()
    def trace_snapshot() -> dict:
        """The server state as JSON."""
        return dict(counter)

    @server.tool()
    def trace_restore(state: dict | None = None) -> str:
        """Put the state back (None: a fresh episode)."""
        counter.clear()
        counter.update(state or {"n": 0})
        return "ok"


port = next((int(a) for a in sys.argv[2:] if a.isdigit()), None)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if port is not None:
    server.run(transport="streamable-http", host="127.0.0.1", port=port)
else:
    server.run()
while mode == "stubborn":  # stdin closed: a well-behaved server would exit here
    time.sleep(1)
