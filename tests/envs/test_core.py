import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings, strategies as st

import trace_envs
from trace_envs import Snapshot, Task, TaskSuite, ToolEnv, register_env, tool
from trace_envs.calculator.env import CalculatorEnv
from tests.envs.conftest import calc

TRACE_IDS = sorted(i for i in gym.registry if i.startswith("trace/"))
MCP_SERVER = Path(__file__).parents[1] / "integrations" / "mcp_server.py"
MAKE_ARGUMENTS = {  # registered envs that cannot be made without arguments
    "trace/MCP-v0": {"server": [sys.executable, str(MCP_SERVER), "stateless"],
                     "suite": "arithmetic", "suite_options": {"size": 6}},
}


def test_calculator_is_registered():
    assert "trace/Calculator-v0" in TRACE_IDS


@pytest.mark.parametrize("env_id", TRACE_IDS)
def test_check_env_on_every_registered_env(env_id):
    if env_id == "trace/MCP-v0":
        pytest.importorskip("mcp")
    env = gym.make(env_id, **MAKE_ARGUMENTS.get(env_id, {}))
    try:
        check_env(env, skip_render_check=True)
        for name in ("fork", "snapshot", "restore"):
            assert callable(getattr(env, name)), f"{env_id}: gym.make result lacks {name}()"
    finally:
        env.close()


def test_gym_make_returns_forkable_env_with_kwargs():
    env = gym.make("trace/Calculator-v0", max_turns=3, suite_options={"size": 20})
    obs, info = env.reset(seed=1)
    assert obs == env.fork().task.prompt and info["task_id"] == env.task.id
    assert env.max_turns == 3 and len(env.tasks) == 20


def test_reset_by_task_id_and_by_seed(env):
    task = env.tasks[7]
    obs, info = env.reset(options={"task_id": task.id})
    assert obs == task.prompt and info["task_id"] == task.id
    ids = [env.reset(seed=s)[1]["task_id"] for s in (5, 5, 6)]
    assert ids[0] == ids[1]
    with pytest.raises(KeyError, match="not in suite"):
        env.reset(options={"task_id": "nope"})


def test_correct_answer_rewards_one(env):
    answer = env.task.answer
    obs, reward, terminated, truncated, info = env.step(f"Done. <answer>{answer}</answer>")
    assert (reward, terminated, truncated, info["score"]) == (1.0, True, False, 1.0)


def test_wrong_answer_rewards_zero(env):
    _, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert (reward, terminated, info["score"]) == (0.0, True, 0.0)


def test_tool_use_and_ans_chain(env):
    obs, reward, terminated, truncated, info = env.step(calc("12 * 12"))
    assert (obs, reward, terminated, truncated) == ("144", 0.0, False, False)
    assert info["tool_results"] == [{"name": "calculator", "content": "144"}]
    obs, *_ = env.step(calc("ans + 1"))
    assert obs == "145"


def test_several_calls_in_one_turn(env):
    obs, _, _, _, info = env.step(calc("1+1") + calc("ans*10"))
    assert obs == "2\n\n20" and env.turn == 1
    assert [r["content"] for r in info["tool_results"]] == ["2", "20"]


def test_running_out_of_turns_truncates(env):
    for _ in range(env.max_turns - 1):
        assert env.step(calc("1"))[3] is False
    _, reward, terminated, truncated, _ = env.step(f"<answer>{env.task.answer}</answer> {calc('1')}")
    assert (reward, terminated, truncated) == (0.0, False, True)
    with pytest.raises(ResetNeeded):
        env.step(calc("1"))


def test_step_before_reset_raises():
    with pytest.raises(ResetNeeded):
        CalculatorEnv(suite_options={"size": 50, "seed": 3}).step("<answer>1</answer>")


MALFORMED = {
    "no tag": ("I think it is 5", "no <tool_call> or <answer>"),
    "broken JSON": ('<tool_call>{"name": "calculator", "arguments": {</tool_call>', "not valid JSON"),
    "unknown tool": ('<tool_call>{"name": "python", "arguments": {}}</tool_call>', "unknown tool"),
    "wrong type": ('<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>',
                   "valid string"),
    "missing arg": ('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', "required"),
    "extra arg": ('<tool_call>{"name": "calculator", "arguments": {"expression": "1", "x": 1}}'
                  "</tool_call>", "unknown argument"),
    "empty": ("", "empty action"),
    "huge": ("a" * 40_000, "limit"),
    "code": (calc("__import__('os').system('true')"), "unknown function"),
    "too many calls": (calc("1") * 9, "only the first 8"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_actions_are_error_observations(env, kind):
    action, message = MALFORMED[kind]
    obs, reward, terminated, truncated, info = env.step(action)
    assert message in info["error"], info
    assert reward == 0.0 and not terminated and not truncated and env.turn == 1
    assert "Error" in obs and message in obs


def test_observations_are_clipped(env):
    env.max_observation_chars = 50
    obs, *_ = env.step(calc("10**200"))
    assert len(obs) == 50 and "truncated" in obs


# ------------------------------------------------------------------ fork/snapshot
ACTIONS = st.sampled_from([
    calc("7*6"), calc("ans + 3"), calc("ans / 4"), calc("2.5 * ans"), calc("bad("),
    "<answer>42</answer>", "nonsense", "",
])


def _play(e, actions):
    out = []
    for a in actions:
        if e.done:
            break
        obs, r, term, trunc, info = e.step(a)
        out.append((obs, r, term, trunc, info.get("error")))
    return out


@settings(max_examples=60, deadline=None)
@given(prefix=st.lists(ACTIONS, max_size=4), a=st.lists(ACTIONS, max_size=6),
       b=st.lists(ACTIONS, max_size=6))
def test_fork_isolation(prefix, a, b):
    env = CalculatorEnv(suite_options={"size": 50, "seed": 3}, max_turns=6)
    env.reset(seed=11)
    _play(env, prefix)
    before = env.snapshot()
    fork = env.fork()
    assert fork.snapshot() == before
    fork_result = _play(fork, b)
    assert env.snapshot() == before, "stepping the fork changed the original"
    original_result = _play(env, a)
    # the fork's future does not depend on what the original did afterwards
    replay = env.__class__(suite_options={"size": 50, "seed": 3}, max_turns=6)
    replay.restore(before)
    assert _play(replay, b) == fork_result
    replay.restore(before)
    assert _play(replay, a) == original_result


def test_fork_copies_rng_independently(env):
    fork = env.fork()
    assert fork.np_random is not env.np_random
    assert fork.np_random.integers(10**9) == env.np_random.integers(10**9)
    env.np_random.integers(10)
    assert fork.snapshot() != env.snapshot()


def test_fork_shares_read_only_resources(env):
    fork = env.fork()
    assert fork.tasks is env.tasks and fork.tools is env.tools


def test_snapshot_is_immutable_and_small(env):
    env.step(calc("2**64"))
    snap = env.snapshot()
    with pytest.raises(AttributeError):
        snap.payload = b"{}"  # type: ignore[misc]
    assert len(snap.to_bytes()) < 600


def test_snapshot_bytes_round_trip(env):
    env.step(calc("1/3"))
    snap = env.snapshot()
    assert Snapshot.from_bytes(snap.to_bytes()) == snap


@pytest.mark.parametrize("data, message", [
    (b"", "bad header"),
    (b"pickle\x80\x04", "bad header"),
    (b"TRACESNAP1Jnot json", "corrupt"),
    (b"TRACESNAP1Z\x00\x01", "corrupt"),
    (b"TRACESNAP1X{}", "unknown snapshot encoding"),
])
def test_corrupt_snapshots_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        Snapshot.from_bytes(data)


def test_restore_refuses_other_env_or_suite(env):
    snap = env.snapshot()
    other = CalculatorEnv(suite_options={"size": 50, "seed": 4})
    with pytest.raises(ValueError, match="suite"):
        other.restore(snap)
    with pytest.raises(ValueError, match="snapshot is of"):
        other.restore(Snapshot("some.module:OtherEnv", snap.payload))


def test_large_state_snapshots_compress():
    snap = Snapshot.of("m:E", {"blob": "ab" * 10_000})
    data = snap.to_bytes()
    assert len(data) < 1_000 and Snapshot.from_bytes(data) == snap


SUBPROCESS = """
import sys, json, gymnasium as gym, trace_envs
from trace_envs import Snapshot
env = gym.make("trace/Calculator-v0", suite_options={"size": 50, "seed": 3})
env.restore(Snapshot.from_bytes(sys.stdin.buffer.read()))
out = [env.step(a)[:4] for a in json.loads(sys.argv[1])]
print(json.dumps(out))
"""


def test_restore_in_fresh_process_gives_identical_future():
    env = gym.make("trace/Calculator-v0", suite_options={"size": 50, "seed": 3})
    env.reset(seed=2)
    env.step(calc("3/7"))
    env.step(calc("ans * 1.5"))
    data = env.snapshot().to_bytes()
    future = [calc("ans * 7"), calc("ans + 0.1"), f"<answer>{env.task.answer}</answer>"]
    local = env.fork()
    expected = [list(local.step(a)[:4]) for a in future]
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, json.dumps(future)],
        input=data, capture_output=True, check=True, timeout=120,
    )
    assert json.loads(proc.stdout) == expected


# ------------------------------------------------------------------ registration
class EchoEnv(ToolEnv):
    """The README's example: a new tool env in a few lines."""

    instructions = "Echo the word back, then answer with it."

    def __init__(self, **kwargs):
        tasks = TaskSuite("echo", [Task("t0", "Say 'ping'", "ping", _exact)])
        super().__init__(tasks, **kwargs)
        self.count = 0

    @tool
    def echo(self, text: str, times: int = 1) -> str:
        """Repeat the text."""
        self.count += 1
        return " ".join([text] * times)

    def reset_tool_state(self, task):
        self.count = 0

    def get_tool_state(self):
        return self.count

    def set_tool_state(self, state):
        self.count = state


def _exact(response, task):
    ok = response.strip() == task.answer
    return trace_envs.Grade(float(ok), float(ok))


def test_user_registered_env():
    env_id = register_env("EchoTest", EchoEnv, max_turns=4)
    env = gym.make(env_id)
    check_env(env, skip_render_check=True)
    env.reset()
    obs, *_ = env.step('<tool_call>{"name": "echo", "arguments": {"text": "ping", "times": 2}}</tool_call>')
    assert obs == "ping ping"
    fork = env.fork()
    fork.step('<tool_call>{"name": "echo", "arguments": {"text": "x"}}</tool_call>')
    assert (env.count, fork.count) == (1, 2)
    assert env.tool_schemas()[0]["function"]["parameters"]["required"] == ["text"]
    assert env.step("<answer>ping</answer>")[1] == 1.0


def test_reseeding_a_fork_wins_over_inherited_rng(env):
    fork = env.fork()
    fork.reset(seed=123)
    fresh = CalculatorEnv(suite_options={"size": 50, "seed": 3})
    fresh.reset(seed=123)
    assert fork.snapshot() == fresh.snapshot()


def test_forks_continue_the_rng_stream(env):
    fork, restored = env.fork(), CalculatorEnv(suite_options={"size": 50, "seed": 3})
    restored.restore(env.snapshot())
    draws = {e.reset()[1]["task_id"] for e in (env, fork, restored)}
    assert len(draws) == 1


def test_calculator_demonstration_solves_its_task(env):
    actions = env.demonstration(env.task)
    assert len(actions) == 2
    rewards = [env.step(a)[1] for a in actions]
    assert rewards == [0.0, 1.0]
