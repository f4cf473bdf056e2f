"""`trace/BFCL-v0`: turns, BFCL's verdict, bad input, splits, lazy import."""

import json
import subprocess
import sys

import gymnasium as gym
import pytest

import trace_envs  # noqa: F401  (registers trace/BFCL-v0)
from trace_envs.bfcl.replay import END_OF_TURN, ground_truth_actions, replay_entry


def call(function, **arguments):
    return f"<tool_call>{json.dumps({'name': function, 'arguments': arguments})}</tool_call>"


@pytest.fixture
def env():
    return gym.make("trace/BFCL-v0", subset="base")


@pytest.mark.parametrize("subset", ["base", "long_context", "miss_func", "miss_param"])
def test_ground_truth_agent_gets_reward_one_through_gym_make(subset):
    env = gym.make("trace/BFCL-v0", subset=subset, split="all")
    for index in (0, 7, 123):
        reward, info = replay_entry(env, f"multi_turn_{subset}_{index}")
        assert reward == 1.0, info
        assert info["bfcl"] == {"valid": True} and info["score"] == 1.0


def test_turn_structure_and_observations(env):
    obs, info = env.reset(options={"task_id": "multi_turn_base_0"})
    entry = env.task.metadata["entry"]
    assert obs == entry["question"][0][0]["content"] and info == {"task_id": "multi_turn_base_0", "turn": 0}
    assert {"ls", "cd", "mkdir"} <= {s["function"]["name"] for s in env.tool_schemas()}
    schema = next(s for s in env.tool_schemas() if s["function"]["name"] == "ls")["function"]
    assert schema["parameters"]["type"] == "object"
    obs, reward, terminated, truncated, info = env.step(call("ls", a=True) + call("pwd"))
    assert [r["name"] for r in info["tool_results"]] == ["ls", "pwd"]
    assert json.loads(info["tool_results"][0]["content"])["current_directory_content"]
    assert (reward, terminated, truncated, info["user_turn"]) == (0.0, False, False, 0)
    obs, reward, terminated, _, info = env.step("<think>done</think>All listed.")
    assert obs == entry["question"][1][0]["content"] and info["user_turn"] == 1 and not terminated
    for _ in range(len(entry["question"]) - 1):
        obs, reward, terminated, _, info = env.step("")
    assert terminated and reward == 0.0 and info["bfcl"]["valid"] is False
    with pytest.raises(gym.error.ResetNeeded):
        env.step("")


def test_silent_agent_fails_and_wrong_state_fails(env):
    env.reset(options={"task_id": "multi_turn_base_0"})
    actions = ground_truth_actions(env.task)
    for i, action in enumerate(actions):
        if action and i != len(actions) - 1:  # skip the last turn's calls
            env.step(action)
        _, reward, terminated, _, info = env.step(END_OF_TURN)
    assert terminated and reward == 0.0
    assert info["bfcl"]["error_type"].startswith("multi_turn:")


BAD_ACTIONS = {
    "unknown function": call("rm_rf", path="/"),
    "hostile name": call("__import__", name="os"),
    "dunder method": call("__init__"),
    "private method": call("_load_scenario", scenario={}),
    "wrong argument name": call("cd", directory="document"),
    "missing argument": call("cd"),
    "wrong type": call("mkdir", dir_name=["a", "b"]),
    "malformed JSON": "<tool_call>{'name': 'ls'</tool_call>",
    "arguments not an object": '<tool_call>{"name": "ls", "arguments": [1]}</tool_call>',
    "non-finite number": '<tool_call>{"name": "cd", "arguments": {"folder": NaN}}</tool_call>',
}


@pytest.mark.parametrize("kind", sorted(BAD_ACTIONS))
def test_bad_calls_are_error_observations(env, kind):
    env.reset(options={"task_id": "multi_turn_base_0"})
    before = env.get_tool_state()["instances"]
    obs, reward, terminated, truncated, info = env.step(BAD_ACTIONS[kind])
    assert obs.startswith("Error") and info["error"], (kind, obs)
    assert (reward, terminated, truncated) == (0.0, False, False)
    if kind == "wrong type":  # as in BFCL, the back-end ran the call and raised
        assert obs.startswith("Error during execution: ") and len(env.decoded[0]) == 1
    else:
        assert env.decoded == [[]], "a refused call must not reach BFCL's checker"
        assert env.get_tool_state()["instances"] == before


def test_functions_appear_when_bfcl_reveals_them():
    env = gym.make("trace/BFCL-v0", subset="miss_func")
    env.reset(options={"task_id": "multi_turn_miss_func_0"})  # `sort` is held out until turn 3
    assert "sort" not in env.available_tools()
    obs, *_, info = env.step(call("sort", file_name="final_report.pdf"))
    assert obs == "Error during execution: function 'sort' is not available yet"
    for _ in range(3):
        obs, _, _, _, info = env.step("ok")
    assert info["user_turn"] == 3 and info["new_tools"] == ["sort"]
    assert "I have updated some more functions" in obs and '"name": "sort"' in obs
    assert "sort" in env.available_tools()


def test_too_many_steps_in_a_turn_force_quits_like_bfcl():
    env = gym.make("trace/BFCL-v0", subset="base", max_steps_per_turn=3)
    env.reset(options={"task_id": "multi_turn_base_0"})
    for _ in range(3):
        assert not env.step(call("pwd"))[2]
    _, reward, terminated, _, info = env.step(call("pwd"))
    assert terminated and reward == 0.0 and info["bfcl"]["error_type"] == "multi_turn:force_terminated"


def test_hostile_string_arguments_stay_strings_in_bfcls_checker(env, tmp_path):
    target = tmp_path / "pwned"
    payload = f"x') or __import__('os').system('touch {target}') or ('"
    env.reset(options={"task_id": "multi_turn_base_0"})
    env.step(call("touch", file_name="notes.txt") + call("echo", content=payload, file_name="notes.txt"))
    for _ in env.task.metadata["entry"]["question"]:
        _, _, terminated, _, info = env.step("")
        if terminated:
            break
    assert terminated and not target.exists()
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    assert not [k for k in vars(multi_turn_utils) if k.startswith("trace_rl_verdict")]


def test_split_is_deterministic_80_20_and_disjoint():
    sizes = {}
    for split in ("train", "test", "all"):
        env = gym.make("trace/BFCL-v0", subset="long_context", split=split)
        sizes[split] = {t.id for t in env.tasks}
    assert sizes["train"] | sizes["test"] == sizes["all"] and not sizes["train"] & sizes["test"]
    assert len(sizes["all"]) == 200 and 25 <= len(sizes["test"]) <= 55
    again = {t.id for t in gym.make("trace/BFCL-v0", subset="long_context", split="test").tasks}
    assert again == sizes["test"]
    with pytest.raises(ValueError):
        gym.make("trace/BFCL-v0", subset="composite")


def test_import_trace_envs_does_not_import_bfcl_eval():
    code = "import sys, trace_envs, trace_envs.bfcl; print(any(m.startswith('bfcl_eval') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_calls_beyond_the_per_action_limit_are_reported_not_run():
    env = gym.make("trace/BFCL-v0", subset="base", max_calls_per_turn=2)
    env.reset(options={"task_id": "multi_turn_base_0"})
    obs, *_, info = env.step(call("pwd") * 3)
    assert len(info["tool_results"]) == 2 and "only the first 2 were run" in info["error"]
    assert obs.endswith("Error during execution: 3 tool calls in one action; only the first 2 were run")
    assert env.decoded == [[["pwd()", "pwd()"]]]


def test_tool_objects_run_and_record_like_actions(env):
    env.reset(options={"task_id": "multi_turn_base_0"})
    tools = env.available_tools()
    with pytest.raises(trace_envs.ToolError):
        tools["cd"].validate({"directory": "x"})
    assert json.loads(tools["pwd"](env, {})) == {"current_working_directory": "/workspace"}
    assert env.decoded == [[["pwd()"]]]


def test_next_user_turn_is_marked_as_a_user_message():
    env = gym.make("trace/BFCL-v0", subset="base")
    env.reset(options={"task_id": "multi_turn_base_0"})
    obs, *_, info = env.step("All done.")
    assert info["observation_role"] == "user" and "<tool_response>" not in obs
    _, *_, info = env.step(call("pwd"))
    assert "observation_role" not in info
