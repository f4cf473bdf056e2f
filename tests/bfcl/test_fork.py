"""Fork and snapshot of BFCL back-ends: isolation (property-tested), exactness, other process."""

import copy
import json
import subprocess
import sys

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trace_envs  # noqa: F401
from trace_envs.bfcl.replay import END_OF_TURN, ground_truth_actions
from trace_envs.snapshot import Snapshot


def call(function, **arguments):
    return f"<tool_call>{json.dumps({'name': function, 'arguments': arguments})}</tool_call>"


def public_state(env):
    """What BFCL's state checker compares: every non-underscore attribute of every instance."""
    return {name: {k: v for k, v in vars(obj).items() if not k.startswith("_")}
            for name, obj in env.instances.items()}


names = st.sampled_from(["a.txt", "b.txt", "notes", "data", "x"])
fs_action = st.one_of(
    names.map(lambda n: call("touch", file_name=n)),
    names.map(lambda n: call("mkdir", dir_name=n)),
    names.map(lambda n: call("cd", folder=n)),
    st.just(call("cd", folder="..")),
    st.tuples(names, st.text(max_size=20)).map(lambda t: call("echo", content=t[1], file_name=t[0])),
    names.map(lambda n: call("rm", file_name=n)),
    st.tuples(names, names).map(lambda t: call("mv", source=t[0], destination=t[1])),
    st.just(call("post_tweet", content="hello", tags=["#x"], mentions=[])),
    st.just("turn over"),
)
actions = st.lists(fs_action, max_size=6)


def play(env, steps):
    for action in steps:
        if env.done:
            return
        env.step(action)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=actions, left=actions, right=actions)
def test_fork_is_isolated_and_equals_an_independent_replay(prefix, left, right):
    def fresh(*parts):
        env = gym.make("trace/BFCL-v0", subset="base")
        env.reset(options={"task_id": "multi_turn_base_0"})  # file system + Twitter
        for part in parts:
            play(env, part)
        return env

    parent = fresh(prefix)
    child = parent.fork()
    play(parent, left)
    play(child, right)
    for env, expected in ((parent, fresh(prefix, left)), (child, fresh(prefix, right))):
        assert public_state(env) == public_state(expected)
        assert env.decoded == expected.decoded and env.user_turn == expected.user_turn
        assert env.instances["GorillaFileSystem"]._current_dir.name == \
            expected.instances["GorillaFileSystem"]._current_dir.name


def test_a_file_created_in_one_branch_never_appears_in_the_other():
    env = gym.make("trace/BFCL-v0", subset="base")
    env.reset(options={"task_id": "multi_turn_base_0"})
    branch = env.fork()
    branch.step(call("touch", file_name="only_in_branch.txt"))
    env.step(call("mkdir", dir_name="only_in_parent"))
    listing = lambda e: json.loads(e.step(call("ls"))[4]["tool_results"][0]["content"])  # noqa: E731
    assert "only_in_branch.txt" in listing(branch)["current_directory_content"]
    assert "only_in_branch.txt" not in listing(env)["current_directory_content"]
    assert "only_in_parent" not in listing(branch)["current_directory_content"]


def test_fork_copies_random_state_and_equals_deepcopy():
    env = gym.make("trace/BFCL-v0", subset="long_context")
    env.reset(options={"task_id": "multi_turn_long_context_5"})
    for action in ground_truth_actions(env.task)[:2]:
        play(env, [action, END_OF_TURN])
    deep = copy.deepcopy(env.instances)
    child = env.fork()
    assert public_state(child) == {n: {k: v for k, v in vars(o).items() if not k.startswith("_")}
                                   for n, o in deep.items()}
    for name, obj in env.instances.items():
        if hasattr(obj, "_random"):
            assert child.instances[name]._random is not obj._random
            assert child.instances[name]._random.random() == obj._random.random()


@pytest.mark.parametrize("subset", ["base", "long_context", "miss_func", "miss_param"])
def test_snapshot_restore_at_every_turn_keeps_the_verdict(subset):
    """Hop to a fresh env through snapshot bytes after every user turn; BFCL still says 1."""
    make = lambda: gym.make("trace/BFCL-v0", subset=subset)  # noqa: E731
    for index in range(0, 200, 25):
        env = make()
        env.reset(options={"task_id": f"multi_turn_{subset}_{index}"})
        reward = None
        for action in ground_truth_actions(env.task):
            play(env, [action] if action else [])
            snap = Snapshot.from_bytes(env.snapshot().to_bytes())
            restored = make()
            restored.restore(snap)
            assert public_state(restored) == public_state(env)
            assert restored.snapshot() == env.snapshot()
            env = restored
            _, reward, terminated, _, _ = env.step(END_OF_TURN)
        assert terminated and reward == 1.0


def test_snapshot_restores_in_another_process(tmp_path):
    env = gym.make("trace/BFCL-v0", subset="miss_param")
    env.reset(options={"task_id": "multi_turn_miss_param_3"})
    actions = ground_truth_actions(env.task)
    play(env, [actions[0], END_OF_TURN])
    (tmp_path / "snap.bin").write_bytes(env.snapshot().to_bytes())
    (tmp_path / "rest.json").write_text(json.dumps(actions[1:]))
    code = f"""
import json, gymnasium as gym, trace_envs
from trace_envs.snapshot import Snapshot
env = gym.make("trace/BFCL-v0", subset="miss_param")
env.restore(Snapshot.from_bytes(open({str(tmp_path / 'snap.bin')!r}, "rb").read()))
for action in json.load(open({str(tmp_path / 'rest.json')!r})):
    if action:
        env.step(action)
    out = env.step("Done.")
print(out[1], out[2])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1.0", "True"]


def test_corrupt_snapshot_state_is_refused():
    env = gym.make("trace/BFCL-v0", subset="base")
    env.reset(options={"task_id": "multi_turn_base_0"})
    state = env.snapshot().state()
    state["tools"]["instances"]["GorillaFileSystem"]["root"] = {"$t": "pickle", "data": "..."}
    with pytest.raises(ValueError, match="unknown tag"):
        env.restore(Snapshot.of(env.env_id, state))
