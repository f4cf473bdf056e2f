"""MCP tool envs against a real MCP server (the SDK's MCPServer) started by the tests, stdio and HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from tests import processes  # noqa: E402
from trace_envs import Snapshot  # noqa: E402
from trace_envs.integrations.mcp import SHUTDOWN_S, ForkUnsupported, MCPConnection, MCPToolEnv  # noqa: E402

SERVER = Path(__file__).with_name("mcp_server.py")
HOSTILE = Path(__file__).with_name("mcp_hostile.py")
SUITE = {"suite": "arithmetic", "suite_options": {"size": 6}}


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def stdio(mode: str) -> MCPConnection:
    return MCPConnection([sys.executable, str(SERVER), mode], timeout_s=20)


@pytest.fixture(scope="module")
def stateless():
    with stdio("stateless") as connection:
        yield connection


@pytest.fixture(scope="module")
def stateful():
    with stdio("stateful") as connection:
        yield connection


@pytest.fixture(scope="module")
def restorable():
    with stdio("restorable") as connection:
        yield connection


def test_gym_make_starts_the_server_and_close_stops_it() -> None:
    import gymnasium as gym

    env = gym.make("trace/MCP-v0", server=[sys.executable, str(SERVER), "stateless"], **SUITE)
    assert isinstance(env, MCPToolEnv)  # registered without wrappers: fork() stays reachable
    env.reset(seed=0)
    assert env.step(call("add", a=1, b=2))[0] == "3"
    env.close()
    with pytest.raises(ConnectionError, match="closed"):
        env.connection.call("add", {"a": 1, "b": 2})


def test_the_server_tools_are_the_env_tools(stateless: MCPConnection) -> None:
    env = MCPToolEnv(server=stateless, **SUITE)
    schemas = {s["function"]["name"]: s["function"] for s in env.tool_schemas()}
    assert set(schemas) == {"add", "fail"}
    assert schemas["add"]["parameters"]["required"] == ["a", "b"]
    assert env.instructions == "Use the tools to answer."
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(call("add", a=2, b=40))
    assert (obs, reward, terminated, truncated) == ("42", 0.0, False, False) and "error" not in info


@pytest.mark.parametrize("action, expected", [
    (call("add", a="2", b=3), "Error: invalid arguments for add: a: '2' is not of type 'integer'"),
    (call("add", a=1), "Error: invalid arguments for add: arguments: 'b' is a required property"),
    (call("fail", message="boom"), "Error: "),
    (call("nope"), "Error: unknown tool 'nope'"),
])
def test_bad_calls_are_error_observations(stateless: MCPConnection, action: str, expected: str) -> None:
    env = MCPToolEnv(server=stateless, **SUITE)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(action)
    assert obs.startswith(expected) and info["error"]


def test_stateless_forks_share_the_connection_and_snapshots_restore(stateless: MCPConnection) -> None:
    env = MCPToolEnv(server=stateless, **SUITE)
    env.reset(seed=1)
    env.step(call("add", a=1, b=1))
    branch = env.fork()
    assert branch.connection is env.connection and branch.turn == env.turn == 1
    assert branch.step(call("add", a=3, b=4))[0] == "7" and env.turn == 1
    other = MCPToolEnv(server=stateless, **SUITE)
    other.restore(Snapshot.from_bytes(env.snapshot().to_bytes()))
    assert (other.task.id, other.turn) == (env.task.id, 1)


def test_a_stateful_server_without_snapshot_tools_refuses_to_fork(stateful: MCPConnection) -> None:
    env = MCPToolEnv(server=stateful, stateful=True, **SUITE)
    env.reset(seed=0)
    first = int(env.step(call("increment"))[0])
    assert int(env.step(call("increment", by=2))[0]) == first + 2
    with pytest.raises(ForkUnsupported, match="trace_snapshot/trace_restore"):
        env.fork()
    with pytest.raises(ForkUnsupported, match="stateful MCP server"):
        env.snapshot()


def test_a_restorable_server_gives_each_fork_its_own_state(restorable: MCPConnection) -> None:
    env = MCPToolEnv(server=restorable, stateful=True, **SUITE)
    assert "trace_snapshot" not in {s["function"]["name"] for s in env.tool_schemas()}
    env.reset(seed=0)
    assert env.step(call("increment", by=3))[0] == "3"
    branch = env.fork()
    assert branch.step(call("increment", by=10))[0] == "13"
    assert env.step(call("increment"))[0] == "4"  # the branch's calls did not reach this env
    assert branch.step(call("increment"))[0] == "14"
    fresh = MCPToolEnv(server=restorable, stateful=True, **SUITE)
    fresh.restore(Snapshot.from_bytes(branch.snapshot().to_bytes()))
    assert fresh.step(call("increment"))[0] == "15"
    env.reset(seed=0)  # a new episode starts from the server's fresh state
    assert env.step(call("increment"))[0] == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_and_a_dead_server() -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "stateless", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "MCP HTTP server did not start"
                time.sleep(0.2)
        env = MCPToolEnv(server=f"http://127.0.0.1:{port}/mcp", timeout_s=5, **SUITE)
        env.reset(seed=0)
        assert env.step(call("add", a=20, b=22))[0] == "42"
        proc.terminate()
        proc.wait(timeout=10)
        obs, _, _, _, info = env.step(call("add", a=1, b=2))  # no exception out of step
        assert obs.startswith("Error: ") and info["error"]
        env.close()
    finally:
        proc.kill()


# ------------------------------------------------------------------ server processes
@pytest.fixture
def tag():
    """A mark in the server's command line, so that it is found even as an orphan; the test
    fails if any process so marked, or any new process below this one, outlives it."""
    value = f"trace-test-{uuid.uuid4().hex}"
    before = processes.descendants()
    yield value
    assert processes.tagged(value) == [], "a server process was left running"
    assert processes.descendants() <= before, "a child process was left running"


def test_a_server_that_never_answers_is_killed_at_the_handshake_deadline(tag: str) -> None:
    with pytest.raises(TimeoutError) as failure:  # it ignores SIGTERM too: SIGKILL ends it
        MCPConnection([sys.executable, str(HOSTILE), "silent", tag], timeout_s=3)
    assert str(failure.value).endswith("failed to start: no answer to the handshake within 3 s; "
                                       "its stderr ends: listening")


def test_a_server_that_dies_at_start_is_one_line_with_its_stderr(tag: str) -> None:
    with pytest.raises(ConnectionError) as failure:
        MCPToolEnv(server=[sys.executable, str(HOSTILE), "crash", tag], **SUITE)
    message = str(failure.value)
    assert "\n" not in message and f"MCP server {sys.executable} " in message
    assert message.endswith("its stderr ends: Traceback (most recent call last): | "
                            "ModuleNotFoundError: No module named 'frobnicate'")


def test_a_server_that_ignores_eof_and_sigterm_is_killed_on_close_and_at_exit(tag: str) -> None:
    env = MCPToolEnv(server=[sys.executable, str(SERVER), "stubborn", tag], **SUITE)
    env.reset(seed=0)
    assert env.step(call("add", a=1, b=2))[0] == "3" and len(processes.tagged(tag)) == 1
    started = time.monotonic()
    env.close()
    assert time.monotonic() - started < SHUTDOWN_S and processes.tagged(tag) == []
    # a script that never closes its env: the server still ends when the script does
    script = (f"import sys; from trace_envs.integrations.mcp import MCPToolEnv; "
              f"env = MCPToolEnv(server={[sys.executable, str(SERVER), 'stubborn', tag]!r}, **{SUITE!r}); "
              "env.reset(seed=0); print(env.step('<answer>1</answer>')[0])")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert done.returncode == 0 and processes.tagged(tag) == []


def test_an_interrupted_start_kills_the_server(tag: str) -> None:
    """Ctrl-C while the handshake is pending (here SIGALRM once the server runs)."""
    def interrupt(*_: object) -> None:
        if not processes.tagged(tag):
            signal.setitimer(signal.ITIMER_REAL, 0.2)  # not started yet: look again soon
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            MCPConnection([sys.executable, str(HOSTILE), "silent", tag], timeout_s=120)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------ the CLI
def _raise(exc: BaseException):
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


CLI_PATHS = {  # argv after the command, and what fails on the way (module, name, exception)
    "train error": ("train", [], ("trace_agents.train.loop", "run", RuntimeError("boom")), 1),
    "train Ctrl-C": ("train", [], ("trace_agents.train.loop", "run_step", KeyboardInterrupt()), 130),
    "eval": ("eval", [], None, 0),
    "eval error": ("eval", ["--arm", "trace"], None, 2),
    "eval Ctrl-C": ("eval", [], ("trace_agents.evaluate", "evaluate", KeyboardInterrupt()), 130),
    "record": ("record", [], None, 0),
    "record Ctrl-C": ("record", [], ("trace_agents.recording.recorder", "record", KeyboardInterrupt()), 130),
}


@pytest.mark.parametrize("path", list(CLI_PATHS))
def test_the_cli_closes_every_env_it_opens(path: str, tag: str, tmp_path: Path, monkeypatch) -> None:
    import importlib

    import yaml

    from trace_agents.cli import main

    command, extra, failure, code = CLI_PATHS[path]
    config = yaml.safe_load((Path(__file__).parents[2] / "examples" / "tiny.yaml").read_text())
    config["env"] = {"id": "trace/MCP-v0", "kwargs": {
        "server": [sys.executable, str(SERVER), "stateless", tag], "suite": "arithmetic",
        "suite_options": {"size": 20}, "max_turns": 2}}
    (tmp_path / "mcp.yaml").write_text(yaml.safe_dump(config))
    if failure is not None:
        module, name, exc = failure
        monkeypatch.setattr(importlib.import_module(module), name, _raise(exc))
    if command == "train":
        argv = ["train", "--config", str(tmp_path / "mcp.yaml"), "--out", str(tmp_path / "run")]
    elif command == "record":
        argv = ["record", "--config", str(tmp_path / "mcp.yaml"), "--out", str(tmp_path / "rec"),
                "--prompts", "1", "--chunk", "1", "--bare", "1", "--prefix-rollouts", "0"]
    else:
        argv = ["eval", "--model", "tiny-qwen3", "--bench", str(tmp_path / "mcp.yaml"), "--limit", "1",
                "--max-tokens", "4"]
    assert main([*argv, *extra, "--no-progress"]) == code
