"""trace-rl envs through TRL's GRPOTrainer(environment_factory=...), against the real trl package."""

from __future__ import annotations

import inspect
import os
from importlib.resources import files
from typing import Any

import gymnasium as gym
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trace_envs  # noqa: F401  (registers the envs)
from trace_envs import ToolEnv, tool
from trace_envs.tasks.suites import load_suite

pytest.importorskip("trl")
pytest.importorskip("datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from transformers.utils import get_json_schema  # noqa: E402

from trace_envs.integrations.trl import (  # noqa: E402
    python_type,
    trl_dataset,
    trl_environment,
    verdict_reward,
)


def make_calculator() -> ToolEnv:
    return gym.make("trace/Calculator-v0", suite_options={"size": 8}, max_turns=4)


def trl_tools(cls: type) -> list[str]:
    """Exactly how GRPOTrainer lists an environment's tools."""
    return [n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if n not in ("reset", "get_reward") and not n.startswith("_")]


def _normal(schema: dict[str, Any]) -> Any:
    """A JSON type as a set of type names (``nullable``/``anyOf`` with null are the same thing)."""
    if "anyOf" in schema:
        return frozenset().union(*(_normal(s) for s in schema["anyOf"]))
    kinds = schema.get("type")
    kinds = frozenset(kinds if isinstance(kinds, list) else [kinds])
    return kinds | {"null"} if schema.get("nullable") else kinds


@pytest.mark.parametrize("env_id", ["trace/Calculator-v0", "trace/Search-v0"])
def test_trl_sees_exactly_the_env_tools_with_their_schemas(env_id: str) -> None:
    cls = trl_environment(lambda: gym.make(env_id))
    instance = cls()
    want = {s["function"]["name"]: s["function"] for s in instance.env.tool_schemas()}
    assert sorted(trl_tools(cls)) == sorted(want)
    for name, schema in want.items():
        got = get_json_schema(getattr(instance, name))["function"]
        assert got["description"] == " ".join(schema["description"].split())
        props = schema["parameters"].get("properties", {})
        assert set(got["parameters"]["properties"]) == set(props)
        assert set(got["parameters"].get("required", [])) == set(schema["parameters"].get("required", []))
        for arg, arg_schema in props.items():
            assert _normal(got["parameters"]["properties"][arg]) == _normal(arg_schema), (name, arg)


def test_reset_takes_the_row_and_tools_step_the_env() -> None:
    cls = trl_environment(make_calculator)
    instance = cls()
    task = instance.env.tasks[3]
    prompt = instance.reset(prompt=[{"role": "user", "content": ""}], task_id=task.id)
    assert prompt == task.prompt and instance.env.task.id == task.id
    assert instance.calculator(expression="6 * 7") == "42"
    assert instance.calculator(expression="ans + 1") == "43"  # the env's tool state is kept
    assert instance.calculator(expression="1/0").startswith("Error: ")  # an error observation
    assert instance.calculator(expression=3).startswith("Error: invalid arguments")
    assert instance.env.turn == 4 and instance.env.done  # max_turns=4: each call is one turn
    assert instance.calculator(expression="1").startswith("Error: the episode is over")


def test_a_qwen3_tool_call_parsed_by_trl_runs_the_tool(tiny: Any) -> None:
    """The path of a generated tool call: TRL's response parser, then the per-rollout tool dict."""
    from trl.chat_template_utils import add_response_schema, parse_response, supports_tool_calling

    _, tokenizer = tiny
    tokenizer.chat_template = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    assert supports_tool_calling(tokenizer)
    tokenizer = add_response_schema(tokenizer)
    instance = trl_environment(make_calculator)()
    instance.reset(task_id=instance.env.tasks[0].id)
    tools = {name: getattr(instance, name) for name in trl_tools(type(instance))}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "12 * 7?"}], tools=list(tools.values()),
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * (3 + 4)"}}\n</tool_call><|im_end|>'
    ids = tokenizer.encode(text, add_special_tokens=False)
    message = parse_response(tokenizer, ids, prefix=list(prompt), tools=list(tools.values()))
    [call] = message["tool_calls"]
    assert tools[call["function"]["name"]](**call["function"]["arguments"]) == "84"


def test_verdict_reward_grades_the_final_message_with_the_task() -> None:
    cls = trl_environment(make_calculator)
    envs = [cls(), cls(), cls()]
    task = envs[0].env.tasks[1]
    for e in envs:
        e.reset(task_id=task.id)
    completions = [
        [{"role": "assistant", "content": f"<answer>{task.answer}</answer>"}],
        [{"role": "assistant", "content": "<answer>-1</answer>"}],
        "no answer tag at all",
    ]
    assert verdict_reward(completions, envs) == [1.0, 0.0, 0.0]
    assert envs[0].env.done and envs[1].env.done and not envs[2].env.done


def test_names_trl_reserves_and_task_dependent_tools_are_refused() -> None:
    class Clash(ToolEnv):
        @tool
        def reset_board(self) -> str:
            """fine"""
            return ""

        @tool(name="reset")
        def reset_tool(self) -> str:
            """clashes with TRL's reset"""
            return ""

    with pytest.raises(ValueError, match="reserves"):
        trl_environment(lambda: Clash(load_suite("arithmetic", size=4)))
    with pytest.raises(ValueError, match="BFCL"):
        trl_environment(lambda: gym.make("trace/BFCL-v0"))


@settings(max_examples=60, deadline=None)
@given(st.recursive(
    st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "object")])
    | st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v}),
    lambda inner: st.builds(lambda s: {"type": "array", "items": s}, inner)
    | st.lists(inner, min_size=2, max_size=3).map(lambda xs: {"anyOf": xs}),
    max_leaves=4,
))
def test_python_type_renders_back_to_the_same_json_type(schema: dict[str, Any]) -> None:
    def probe(x: Any) -> str:
        """probe

        Args:
            x: the argument
        """
        return ""

    probe.__annotations__ = {"x": python_type(schema), "return": str}
    got = get_json_schema(probe)["function"]["parameters"]["properties"]["x"]
    if "enum" in schema:
        assert got["enum"] == schema["enum"]
    elif "anyOf" not in schema:
        assert got["type"] == schema["type"]


@pytest.mark.slow
def test_one_grpo_step_with_a_tiny_qwen3(tmp_path: Any, tiny: Any) -> None:
    """One real GRPOTrainer step on CPU: tools discovered, rows reset the envs, rewards from verdicts."""
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = tiny
    tokenizer.chat_template = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    tokenizer.padding_side = "left"
    dataset = trl_dataset(make_calculator()).select(range(4))
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
        max_completion_length=16, max_steps=1, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", bf16=False, seed=0,
    )
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=verdict_reward,
                          args=args, train_dataset=dataset, environment_factory=trl_environment(make_calculator))
    assert [t.__name__ for t in trainer.tools] == ["calculator"]
    result = trainer.train()
    assert result.global_step == 1
    logged = trainer.state.log_history[0]
    assert "rewards/verdict_reward/mean" in logged and "tools/call_frequency" in logged
    for wrapper in trainer.environments:  # every rollout was reset to a dataset task and graded
        assert wrapper.env.task.id in set(dataset["task_id"]) and wrapper.env.turn >= 1
