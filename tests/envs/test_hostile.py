"""Hostile input for the core and the calculator env: actions, snapshots, answers.

Property tests (examples from :func:`tests.fuzz.examples`; ``--fuzz-long`` for 100x) assert
that no exception escapes ``step``, the turn is counted once and the state stays snapshottable,
a refused restore leaves the env exactly as it was, and every input costs bounded time/memory.
"""

import threading
import time
import tracemalloc
import zlib

import pytest
from gymnasium.error import ResetNeeded
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzz
from tests.envs.conftest import calc
from trace_envs import Snapshot, Task, TaskSuite, ToolEnv, tool
from trace_envs.actions import MAX_CALL_DEPTH, parse_action
from trace_envs.calculator.env import CalculatorEnv
from trace_envs.snapshot import MAX_BYTES
from trace_envs.tasks import math as math_tasks
from trace_envs.tasks.workers import WorkerPool, WorkerTimeout

VALID = [calc("7*6"), calc("ans + 1"), calc("ans / 3"), calc("2.5 ** 3"), calc("2**4999/3"),
         "<answer>42</answer>", "<think>hm</think> <answer>1</answer>"]
OPTIONS = {"suite_options": {"size": 50, "seed": 3}, "max_turns": 6}


@pytest.fixture(scope="module", autouse=True)
def grading_worker():
    """Start the grading worker before anything is timed (its start-up is not a grading cost)."""
    assert math_tasks.check_math_answer("\\frac{1}{2}", "0.5") == (True, "math_verify")


def make_env(steps=()):
    env = CalculatorEnv(**OPTIONS)
    env.reset(seed=1)
    for action in steps:
        if not env.done:
            env.step(action)
    return env


def step_safely(env, action, kind):
    """One hostile step: it must return, count the turn once, and leave a restorable state."""
    turn = env.turn
    with fuzz.measured(kind):
        obs, reward, terminated, truncated, info = env.step(action)
    assert isinstance(obs, str) and isinstance(reward, float) and isinstance(info, dict)
    assert env.turn == turn + 1 and env.done == (terminated or truncated)
    data = env.snapshot().to_bytes()
    copy = type(env).__new__(type(env))
    copy.__dict__.update(env.fork().__dict__)
    copy.restore(Snapshot.from_bytes(data))
    assert copy.snapshot().to_bytes() == data


# --------------------------------------------------------------------------- actions
@fuzz.examples(300)
@given(prefix=st.lists(st.sampled_from(VALID), max_size=2),
       action=fuzz.hostile_actions(VALID, ["calculator"]))
def test_hostile_actions_never_raise(prefix, action):
    env = make_env(prefix)
    if not env.done:
        step_safely(env, action, "calculator: action")


@fuzz.examples(200)
@given(expression=st.text(max_size=60) | st.from_regex(r"[0-9a-z.()*/+\-^ ,e]{1,40}", fullmatch=True))
def test_calculator_expressions_never_raise_and_keep_ans_valid(expression):
    env = make_env([calc("7*6")])
    step_safely(env, fuzz.tool_call("calculator", {"expression": expression}), "calculator: expression")


def test_misuse_still_raises_reset_needed():
    with pytest.raises(ResetNeeded):
        CalculatorEnv(**OPTIONS).step(calc("1"))


@pytest.mark.parametrize("action, message", [
    (fuzz.tool_call("calculator", {"expression": 1}) .replace("1}", "9" * 70 + "}"), "more than 64 digits"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": ' + "[" * 5000 + "]" * 5000 + "}}</tool_call>",
     "nested"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "\\ud800"}}</tool_call>', "lone surrogate"),
])
def test_unbounded_tool_call_json_is_an_error_observation(action, message):
    env = make_env()
    obs, _, _, _, info = env.step(action)
    assert message in info["error"] and env.turn == 1


def test_lone_surrogates_in_free_text_are_replaced():
    parsed = parse_action("<answer>\ud800x</answer>")
    assert parsed.answer == "\ufffdx"
    assert parse_action('<tool_call>{"name": "a", "arguments": {"b": [' * 1 + "]}}</tool_call>").error is None
    deep = "[" * (MAX_CALL_DEPTH + 1) + "]" * (MAX_CALL_DEPTH + 1)
    assert "nested" in parse_action(
        f'<tool_call>{{"name": "a", "arguments": {{"b": {deep}}}}}</tool_call>').tool_calls[0].error


class Exploding(ToolEnv):
    """An env whose tool and grader fail in every way a buggy back-end can."""

    def __init__(self):
        super().__init__(TaskSuite("boom", [Task("t", "go", "x", self._grade)]), max_turns=3)

    @staticmethod
    def _grade(response, task):
        raise RecursionError("grader blew up")

    @tool
    def boom(self, kind: str) -> str:
        """Fail."""
        raise {"key": KeyError, "value": ValueError}.get(kind, RuntimeError)(kind)

    def respond(self, action):
        if action.thought == "crash":
            raise MemoryError("respond failed")
        return super().respond(action)


@pytest.mark.parametrize("action", [
    '<tool_call>{"name": "boom", "arguments": {"kind": "key"}}</tool_call>',
    'crash <tool_call>{"name": "boom", "arguments": {"kind": "x"}}</tool_call>',
    "<answer>x</answer>",
])
def test_failures_of_tools_envs_and_graders_are_error_observations(action):
    env = Exploding()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert "error" in info and obs.startswith("Error") and env.turn == 1
    assert reward == 0.0 and not terminated and not truncated and not env.done


# ------------------------------------------------------------------------- calculator
def test_unrenderable_results_and_bad_powers_do_not_touch_ans():
    env = make_env([calc("7*6")])
    obs, *_, info = env.step(calc("1e308 * 10"))
    assert "not a finite number" in info["error"] and env.ans == 42
    obs, *_, info = env.step(calc("0.0 ** -1"))
    assert "calculator: zero cannot be raised to a negative power" in obs and env.ans == 42
    obs, *_ = env.step(calc("2**4999/3"))
    assert obs.endswith("/3 (≈ 2.35411172023e+1504)") and env.ans > 10**1500  # beyond the float range, still rendered


@pytest.mark.parametrize("ans", ["q:1e10000000", "i:1e10000000", "f:1e10000000", "i:" + "9" * 5000,
                                 "q:1/0", "q:4/1", "f:inf", "f:0x1.0p+99999", "i:0x10", "i: 1",
                                 "q:" + "7" * 3050 + "/3"])
def test_calculator_snapshots_with_costly_or_malformed_ans_are_refused_fast(ans):
    env = make_env([calc("7*6")])
    state = env.snapshot().state()
    state["tools"]["ans"] = ans
    start = time.perf_counter()
    assert not fuzz.unchanged_after_refusal(env, lambda: env.restore(Snapshot.of(env.env_id, state)))
    assert time.perf_counter() - start < 0.5


# -------------------------------------------------------------------------- snapshots
def snapshot_case(env, restore_from, kind):
    """Restore a hostile snapshot: refused with ValueError and no change, or accepted and then
    the env keeps every promise (steps without raising, snapshots again)."""
    with fuzz.measured(kind):
        accepted = fuzz.unchanged_after_refusal(env, restore_from)
    if accepted:
        for action in (calc("ans + 1"), "<answer>1</answer>"):
            if env.task is not None and not env.done:
                step_safely(env, action, kind + " (then step)")
    return accepted


@fuzz.examples(300)
@given(data=st.data())
def test_hostile_snapshot_states_are_refused_or_safe(data):
    source = make_env([calc("7*6"), calc("ans/5")]).snapshot().state()
    state = data.draw(fuzz.state_mutations(source)
                      | fuzz.rng_states().map(lambda rng: {**source, "rng": rng}))
    target = make_env([calc("3")])
    try:
        snapshot = Snapshot.of(target.env_id, state)
    except ValueError:
        return  # not even encodable (a lone surrogate, deep nesting)
    snapshot_case(target, lambda: target.restore(snapshot), "calculator: snapshot state")


@fuzz.examples(300)
@given(data=st.data())
def test_hostile_snapshot_bytes_are_refused_or_safe(data):
    source = make_env([calc("7*6"), calc("ans/5")])
    raw = data.draw(fuzz.byte_mutations(source.snapshot().to_bytes()))
    target = make_env([calc("3")])

    def restore():
        target.restore(Snapshot.from_bytes(raw))

    snapshot_case(target, restore, "calculator: snapshot bytes")


def test_zip_bomb_is_refused_with_bounded_memory():
    bomb = fuzz.zip_bomb(2**27)  # 128 MiB of spaces in about 128 KiB
    assert len(bomb) < 2**18
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="decompresses to more than"):
        Snapshot.from_bytes(bomb)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MAX_BYTES + 2**23 and seconds < 30, (peak, seconds)  # the cap + one step


@pytest.mark.parametrize("data, message", [
    (b"TRACESNAP1J" + b'{"env_id": "a:B"}\n' + b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b"TRACESNAP1J" + b'{"env_id": "a:B"}\n' + b"1" * 5000, "corrupt"),
    (b"TRACESNAP1J" + b'{"env_id": "a:B"}\n[]', "not a JSON object"),
    (b"TRACESNAP1J" + b'{"env_id": 5}\n{}', "env_id"),
    (b"TRACESNAP1J" + b'[' * 10 + b'\n{}', "header"),
    (b"TRACESNAP1J" + b'{"env_id": "a:B"}', "header"),
    (b"TRACESNAP1Z" + zlib.compress(b'{"env_id": "a:B"}\n{}')[:-3], "truncated"),
    (b"TRACESNAP1Z" + zlib.compress(b'{"env_id": "a:B"}\n{}') + b"junk", "trailing"),
    (b"TRACESNAP1J" + b'{"env_id": "a:B"}\n{"a": "\xff"}', "corrupt"),
])
def test_malformed_snapshot_bytes_are_value_errors(data, message):
    with pytest.raises(ValueError, match=message):
        Snapshot.from_bytes(data)


def test_oversized_input_is_refused_before_reading():
    with pytest.raises(ValueError, match="cap"):
        Snapshot.from_bytes(b"TRACESNAP1J" + b" " * 100, max_bytes=50)


class HalfRestoring(ToolEnv):
    """An env without a tool-state check whose set_tool_state fails half-way."""

    def __init__(self):
        super().__init__(TaskSuite("half", [Task("t", "go", "x", lambda r, t: None)]))
        self.a, self.b = 1, 2

    def get_tool_state(self):
        return [self.a, self.b]

    def set_tool_state(self, state):
        self.a = state[0]
        self.b = state[1] + 0  # a str here raises after `a` changed


def test_restore_failing_half_way_is_rolled_back():
    env = HalfRestoring()
    env.reset(seed=0)
    state = env.snapshot().state()
    state["tools"], state["turn"] = [10, "x"], 1
    assert not fuzz.unchanged_after_refusal(env, lambda: env.restore(Snapshot.of(env.env_id, state)))
    assert (env.a, env.b, env.turn) == (1, 2, 0)


@pytest.mark.parametrize("field, value", [
    ("turn", -1), ("turn", 10**6), ("turn", "1"), ("done", 1), ("task_id", "nope"), ("suite", None),
    ("rng", {"bit_generator": "RandomState"}), ("rng", {"bit_generator": "PCG64", "state": 5}),
    ("extra", 1),
])
def test_common_fields_are_checked_before_anything_changes(field, value):
    env = make_env([calc("7*6")])
    state = env.snapshot().state()
    state[field] = value
    assert not fuzz.unchanged_after_refusal(env, lambda: env.restore(Snapshot.of(env.env_id, state)))


# ---------------------------------------------------------------------------- grading
def test_power_towers_grade_quickly_off_the_main_thread():
    task = Task("t", "?", "1024", math_tasks.math_grader)
    results = []

    def grade():
        for answer in ["9^{9^{9^{9}}}", "\\boxed{9^{9^9}}", "9**9**9**9", "10^{999999999}",
                       "99999!", "(" * 40 + "1" + ")" * 40, "2^{10}"]:
            start = time.perf_counter()
            results.append((task.grade(answer).reward, time.perf_counter() - start))

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert [r for r, _ in results] == [0.0] * 6 + [1.0]
    assert max(s for _, s in results[:-1]) < 1.0  # refused up front (well under 1 ms unloaded)


def test_grading_worker_is_killed_at_the_deadline_from_any_thread():
    pool = WorkerPool(1)
    assert pool.run(abs, -1, timeout=120) == 1  # started: start-up is not part of the limit
    outcome = []

    def run():
        start = time.perf_counter()
        try:
            pool.run(time.sleep, 30, timeout=1.0)
        except WorkerTimeout:
            outcome.append(time.perf_counter() - start)
        outcome.append(pool.run(abs, -3, timeout=60))  # a fresh worker replaces the killed one

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(180)
    assert len(outcome) == 2 and outcome[0] < 5 and outcome[1] == 3
