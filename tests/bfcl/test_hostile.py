"""Hostile input for `trace/BFCL-v0`: actions, tampered snapshots (which must never run code),
pathological file trees, state shared between episodes, wall-clock timestamps, costly calls."""

import json
import time

import gymnasium as gym
import mpmath
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trace_envs  # noqa: F401
from tests import fuzz
from tests.envs.test_hostile import step_safely
from trace_envs import Snapshot
from trace_envs.bfcl import guards
from trace_envs.bfcl.replay import END_OF_TURN, ground_truth_actions

TASK = "multi_turn_base_0"  # a file system and Twitter


def call(function, **arguments):
    return fuzz.tool_call(function, arguments)


LOGIN = call("authenticate_twitter", username="analyst_pro", password="Kj8#mP9$vL2")
FS = [call("ls", a=True), call("mkdir", dir_name="d"), call("cd", folder="d"), call("cd", folder=".."),
      call("touch", file_name="f.txt"), call("echo", content="hi", file_name="f.txt"),
      call("cp", source="d", destination="e"), call("mv", source="f.txt", destination="d"),
      LOGIN, call("post_tweet", content="hello"), call("mention", tweet_id=0, mentioned_usernames=["@x"]),
      END_OF_TURN]


@pytest.fixture(scope="module")
def base():
    return gym.make("trace/BFCL-v0", subset="base").unwrapped


def make_env(steps=(), task=TASK):
    env = gym.make("trace/BFCL-v0", subset="base").unwrapped
    env.reset(options={"task_id": task})
    for action in steps:
        if not env.done:
            env.step(action)
    return env


def valid_actions():
    env = make_env()
    return FS + [a for a in ground_truth_actions(env.task) if a]


VALID = valid_actions()
NAMES = sorted({d["name"] for d in make_env().task.metadata["functions"]})


# --------------------------------------------------------------------------- actions
@fuzz.examples(200)
@given(prefix=st.lists(st.sampled_from(VALID), max_size=3),
       action=fuzz.hostile_actions(VALID, NAMES))
def test_hostile_actions_never_raise(prefix, action):
    env = make_env(prefix)
    if not env.done:
        step_safely(env, action, "bfcl: action")


@fuzz.examples(100)
@given(name=st.sampled_from(NAMES), arguments=st.dictionaries(
    st.sampled_from(["source", "destination", "file_name", "dir_name", "folder", "content",
                     "tweet_id", "mentioned_usernames", "tags", "a", "lines", "pattern"]),
    fuzz.json_values, max_size=3))
def test_documented_functions_with_any_json_arguments_never_raise(name, arguments):
    env = make_env()
    step_safely(env, call(name, **arguments), "bfcl: any arguments")


# -------------------------------------------------------------- tampered snapshots
PAYLOAD = "__import__('pathlib').Path({path!r}).touch()"


def play_to_the_end(env):
    """End every user turn, so BFCL's checker runs on whatever the env holds."""
    for _ in range(len(env.task.metadata["entry"]["question"]) + 1):
        if env.done:
            return
        env.step(END_OF_TURN)


def test_tampered_snapshot_cannot_run_code(tmp_path):
    env = make_env([call("ls"), call("post_tweet", content="hi")])
    state = env.snapshot().state()
    marker = tmp_path / "pwned"
    code = PAYLOAD.format(path=str(marker))
    tampered = {
        "old-style call string": ["calls", [[[code]]]],
        "call name": ["calls", [[[{"name": code, "arguments": {}}]]]],
        "argument name": ["calls", [[[{"name": "ls", "arguments": {f"a=1, b={code}": 1}}]]]],
        "dunder function": ["calls", [[[{"name": "__import__", "arguments": {"name": "os"}}]]]],
        "hidden function": ["calls", [[[{"name": "_load_scenario", "arguments": {}}]]]],
    }
    for what, (key, value) in tampered.items():
        bad = json.loads(json.dumps(state))
        bad["tools"][key] = value
        fresh = make_env()
        assert not fuzz.unchanged_after_refusal(
            fresh, lambda: fresh.restore(Snapshot.of(fresh.env_id, bad))), what
        play_to_the_end(fresh)
    # code as an argument *value* is accepted: it stays a string literal for the checker
    bad = json.loads(json.dumps(state))
    bad["tools"]["calls"] = [[[{"name": "ls", "arguments": {"a": code}}]]]
    fresh = make_env()
    fresh.restore(Snapshot.of(fresh.env_id, bad))
    assert code in fresh.decoded[0][0][0]
    play_to_the_end(fresh)
    assert fresh.done and fresh.verdict is not None
    assert not marker.exists(), "snapshot content was evaluated"


@fuzz.examples(150)
@given(data=st.data())
def test_no_string_anywhere_in_a_snapshot_is_evaluated(data, tmp_path_factory):
    marker = tmp_path_factory.mktemp("eval") / "pwned"
    code = PAYLOAD.format(path=str(marker))
    env = make_env([call("ls"), call("touch", file_name="a.txt"), call("post_tweet", content="x")])
    state = env.snapshot().state()
    strings = [p for p in fuzz.paths(state) if p and p[0] == "tools"]
    path = data.draw(st.sampled_from(strings))
    bad = fuzz.replaced(state, path, data.draw(st.sampled_from([code, [code], {"$t": code}])))
    fresh = make_env()
    with fuzz.measured("bfcl: payload in snapshot"):
        if fuzz.unchanged_after_refusal(fresh, lambda: fresh.restore(Snapshot.of(fresh.env_id, bad))):
            for action in (call("ls"), call("post_tweet", content="y")):
                if not fresh.done:
                    step_safely(fresh, action, "bfcl: payload then step")
            play_to_the_end(fresh)
    assert not marker.exists(), f"snapshot content at {path} was evaluated"


@fuzz.examples(200)
@given(data=st.data())
def test_hostile_snapshot_states_are_refused_or_safe(data):
    state = make_env(VALID[:4]).snapshot().state()
    bad = data.draw(fuzz.state_mutations(state))
    target = make_env(VALID[4:6])
    try:
        snapshot = Snapshot.of(target.env_id, bad)
    except ValueError:
        return
    with fuzz.measured("bfcl: snapshot state"):
        accepted = fuzz.unchanged_after_refusal(target, lambda: target.restore(snapshot))
    if accepted and not target.done:
        step_safely(target, call("ls"), "bfcl: snapshot state (then step)")


@fuzz.examples(100)
@given(data=st.data())
def test_hostile_snapshot_bytes_are_refused_or_safe(data):
    raw = data.draw(fuzz.byte_mutations(make_env(VALID[:4]).snapshot().to_bytes()))
    target = make_env(VALID[4:6])
    with fuzz.measured("bfcl: snapshot bytes"):
        accepted = fuzz.unchanged_after_refusal(target, lambda: target.restore(Snapshot.from_bytes(raw)))
    if accepted and not target.done:
        step_safely(target, call("ls"), "bfcl: snapshot bytes (then step)")


@pytest.mark.parametrize("change", [
    lambda s: s["tools"].update(user_turn=7),
    lambda s: s["tools"].update(steps_in_turn=10**6),
    lambda s: s["tools"]["instances"].pop("TwitterAPI"),
    lambda s: s["tools"]["instances"]["TwitterAPI"].update(tweets="x"),
    lambda s: s["tools"]["instances"]["TwitterAPI"].update(evil=1),
    lambda s: s["tools"]["instances"]["GorillaFileSystem"].update(_current_dir=["nowhere"]),
    lambda s: s["tools"].update(calls=[[[{"name": "ls", "arguments": {"a": fuzz._nested(40)}}]]]),
    lambda s: s["tools"].update(calls=[[[{"name": "ls", "arguments": {"a": 10**70}}]]]),
    lambda s: s["tools"].update(calls=[[[{"name": "ls", "arguments": {"nope": 1}}]]]),
    lambda s: s["tools"].update(calls=[[[{"name": "ls", "arguments": {"a": float("nan")}}]]]),
])
def test_inconsistent_bfcl_states_are_refused(change):
    env = make_env([call("ls")])
    state = env.snapshot().state()
    change(state)
    assert not fuzz.unchanged_after_refusal(env, lambda: env.restore(Snapshot.of(env.env_id, state)))


# ------------------------------------------------------------------- file system
def listing(env):
    return json.loads(env.step(call("ls"))[0])["current_directory_content"]


def test_copying_or_moving_a_folder_into_itself_is_refused_like_a_shell():
    env = make_env([call("mkdir", dir_name="a")])
    obs, *_, info = env.step(call("cp", source="a", destination="a"))
    assert obs == "Error during execution: cp: cannot copy a directory, 'a', into itself, 'a/a'"
    obs, *_ = env.step(call("mv", source="a", destination="a"))
    assert "cannot move 'a' to a subdirectory of itself" in obs
    assert env.decoded[0] == [["mkdir(dir_name='a')"]], "refused calls never reach the checker"
    data = env.snapshot().to_bytes()  # still a tree: snapshots and forks work
    env.fork()
    assert len(data) < 20_000


def test_a_copied_folder_owns_its_files_and_forks_equal_the_original():
    env = make_env([call("mkdir", dir_name="a"), call("cd", folder="a"),
                    call("touch", file_name="f"), call("echo", content="one", file_name="f"), call("cd", folder=".."),
                    call("cp", source="a", destination="b"), call("cd", folder="b"),
                    call("echo", content="two", file_name="f"), call("cd", folder="..")])
    restored = make_env()
    restored.restore(env.snapshot())
    for e in (env, env.fork(), restored):
        e.step(call("cd", folder="a"))
        assert json.loads(e.step(call("cat", file_name="f"))[0]) == {"file_content": "one"}
        e.step(call("cd", folder=".."))
    assert env.snapshot() == restored.snapshot()


def test_file_trees_stop_at_the_depth_limit():
    env = make_env()
    env.max_steps_per_turn = 100
    for _ in range(guards.MAX_FS_DEPTH):
        env.step(call("mkdir", dir_name="d") + call("cd", folder="d"))
    obs, *_, info = env.step(call("mkdir", dir_name="d"))
    assert "File name too long" in obs and "error" in info
    Snapshot.from_bytes(env.snapshot().to_bytes())
    env.fork()


def test_lone_surrogates_are_refused_and_the_state_stays_snapshottable():
    env = make_env()
    obs, *_, info = env.step('<tool_call>{"name": "touch", "arguments": {"file_name": "\\ud800"}}</tool_call>')
    assert "lone surrogate" in info["error"]
    Snapshot.from_bytes(env.snapshot().to_bytes())


# ----------------------------------------------------------- isolation and determinism
def test_mutable_defaults_are_not_shared_between_episodes():
    first = make_env([LOGIN])
    tweet_id = json.loads(first.step(call("post_tweet", content="b"))[0])["id"]
    first.step(call("mention", tweet_id=tweet_id, mentioned_usernames=["@leak"]))
    assert first.instances["TwitterAPI"].tweets[tweet_id]["mentions"] == ["@leak"]
    second = make_env([LOGIN])
    tweet = json.loads(second.step(call("post_tweet", content="c"))[0])
    assert tweet["mentions"] == [] and tweet["tags"] == []


def test_equal_futures_give_equal_snapshot_bytes():
    steps = [call("touch", file_name="n.txt"), call("echo", content="x", file_name="n.txt"),
             call("mkdir", dir_name="z"), call("cp", source="n.txt", destination="z")]
    first = make_env(steps)
    time.sleep(1.1)
    second = make_env(steps)
    assert first.snapshot().to_bytes() == second.snapshot().to_bytes()
    assert '"2024-01-01T00:00:0' in first.snapshot().payload.decode()


def test_costly_math_calls_are_refused_and_precision_does_not_leak():
    base_env = gym.make("trace/BFCL-v0", subset="base").unwrapped
    task = next(t for t in base_env.tasks if "MathAPI" in t.metadata["entry"]["involved_classes"])
    env = make_env(task=task.id)
    dps = mpmath.mp.dps
    start = time.perf_counter()
    obs, *_ = env.step(call("power", base=10, exponent=10**12))
    assert "exceed" in obs
    obs, *_ = env.step(call("logarithm", value=10, base=2, precision=10**9))
    assert "precision must be between" in obs
    env.step(call("logarithm", value=10, base=2, precision=50))
    assert mpmath.mp.dps == dps and time.perf_counter() - start < 2


def test_a_failing_checker_is_a_failed_verdict(monkeypatch):
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker

    def broken(*args, **kwargs):
        raise RecursionError("checker blew up")

    monkeypatch.setattr(multi_turn_checker, "multi_turn_checker", broken)
    env = make_env()
    play_to_the_end(env)
    assert env.done and env.verdict["error_type"] == "trace_rl:checker_failed"
