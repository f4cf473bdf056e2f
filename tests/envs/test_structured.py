"""Structured actions: an assistant message (OpenAI dict or AssistantMessage) acts like its text."""

from __future__ import annotations

import json
from typing import Annotated

import pydantic
import pytest
from hypothesis import given, settings, strategies as st

from tests import fuzz

from trace_envs.actions import ToolCall
from trace_envs.calculator.env import CalculatorEnv
from trace_envs.search.env import SearchEnv
from trace_envs.structured import EMPTY_REPLY, AssistantMessage, parse_message, to_action
from trace_envs.tools import tool


def openai_call(name: str, arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.fixture
def env():
    e = CalculatorEnv(suite_options={"size": 20, "seed": 3}, max_turns=6)
    e.reset(seed=0)
    return e


def test_a_dict_message_acts_like_the_same_text_action(env):
    branch = env.fork()
    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
    as_text = env.step(text)
    as_dict = branch.step({"role": "assistant", "content": "",
                           "tool_calls": [openai_call("calculator", '{"expression": "6 * 7"}')]})
    assert as_text == as_dict and as_text[0] == "42"


def test_parallel_calls_run_in_order_with_one_result_each(env):
    message = AssistantMessage("two at once", (ToolCall("calculator", {"expression": "1 + 1"}),
                                               ToolCall("calculator", {"expression": "ans * 10"})))
    obs, _, _, _, info = env.step(message)
    assert [r["content"] for r in info["tool_results"]] == ["2", "20"] and obs == "2\n\n20"


def test_a_reply_without_tool_calls_is_the_final_answer(env):
    answer = str(env.task.answer)
    assert env.fork().step({"content": answer})[1:3] == (1.0, True)
    assert env.fork().step({"content": f"So it is <answer>{answer}</answer>",
                            "reasoning_content": "think"})[1:3] == (1.0, True)
    assert env.fork().step({"content": "<think>hm</think>-1"})[1:3] == (0.0, True)


@pytest.mark.parametrize("message, problem", [
    ({"content": ""}, EMPTY_REPLY),
    ({"content": "<think>only thinking</think>"}, EMPTY_REPLY),
    ({"content": "<answer>1</answer>", "tool_calls": [openai_call("calculator", {"expression": "1"})]},
     "not both"),
    ({"content": 3}, "must be text"),
    ({"tool_calls": "calculator"}, "must be a list"),
    (None, "must be a string or an assistant message"),
    ({"content": "x" * 40_000}, "limit"),
])
def test_bad_messages_are_error_observations(env, message, problem):
    obs, reward, terminated, truncated, info = env.step(message)
    assert problem in obs and problem in info["error"] and not terminated and reward == 0.0


@pytest.mark.parametrize("call, problem", [
    (openai_call("calculator", '{"expression": '), "not a JSON object"),
    (openai_call("calculator", "[1, 2]"), "must be a JSON object"),
    (openai_call("", {}), "no string 'name'"),
    ({"function": [1]}, "'function' must be an object"),
    ("calculator", "must be an object"),
    (openai_call("calculator", {"expression": 12}), "invalid arguments"),
    (openai_call("nope", {}), "unknown tool"),
])
def test_malformed_calls_become_error_observations(env, call, problem):
    obs, _, terminated, _, info = env.step({"content": "", "tool_calls": [call]})
    assert problem in obs and problem in info["error"] and not terminated


def test_flat_calls_and_parameters_are_read_as_arguments():
    parsed = parse_message({"tool_calls": [{"name": "f", "parameters": {"x": 1}}]})
    assert parsed.tool_calls == (ToolCall("f", {"x": 1}),)


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                    max_leaves=12))
def test_any_json_value_as_a_message_never_raises(value):
    parsed = to_action(value)
    assert parsed.error is not None or parsed.answer is not None or parsed.tool_calls


def test_answer_tool_ends_the_episode_with_its_argument_graded():
    env = CalculatorEnv(suite_options={"size": 20, "seed": 3}, answer_tool=True)
    env.reset(seed=0)
    assert "answer" in env.available_tools() and "answer" not in CalculatorEnv().available_tools()
    right = {"tool_calls": [openai_call("answer", {"answer": str(env.task.answer)})]}
    assert env.fork().step(right)[1:3] == (1.0, True)
    text = f'<tool_call>{{"name": "answer", "arguments": {{"answer": "{env.task.answer}"}}}}</tool_call>'
    assert env.fork().step(text)[1:3] == (1.0, True)  # the text dialect reaches it too
    both = {"tool_calls": [openai_call("calculator", {"expression": "1"}), right["tool_calls"][0]]}
    obs, _, terminated, _, _ = env.fork().step(both)
    assert "alone" in obs and not terminated
    obs, _, terminated, _, _ = env.fork().step({"tool_calls": [openai_call("answer", {"answer": 5})]})
    assert "invalid arguments" in obs and not terminated


def test_search_env_answers_by_reply_tag_or_tool():
    env = SearchEnv(answer_tool=True)
    env.reset(seed=0)
    gold = env.task.answer[0] if isinstance(env.task.answer, (list, tuple)) else env.task.answer
    for action in ({"content": gold}, f"<answer>{gold}</answer>",
                   {"tool_calls": [openai_call("answer", {"answer": gold})]}):
        assert env.fork().step(action)[1:3] == (1.0, True)


# ------------------------------------------------------------------ tool schemas
class _Env:
    @tool
    def lookup(
        self,
        city: str,
        days: Annotated[int, pydantic.Field(ge=1, le=14)] = 3,
        unit: Annotated[str, "celsius or fahrenheit"] = "celsius",
    ) -> str:
        """Weather forecast for a city.

        Uses the offline table.

        Args:
            city: The city's name,
                e.g. "Paris".
            days (int): How many days ahead.

        Returns:
            The forecast.
        """
        return f"{city}:{days}:{unit}"


def test_schema_carries_argument_descriptions_from_args_and_annotated():
    schema = _Env.lookup.schema()["function"]
    assert schema["description"] == "Weather forecast for a city. Uses the offline table."
    props = schema["parameters"]["properties"]
    assert props["city"]["description"] == 'The city\'s name, e.g. "Paris".'
    assert props["days"] == {"default": 3, "description": "How many days ahead.", "maximum": 14,
                             "minimum": 1, "type": "integer"}
    assert props["unit"]["description"] == "celsius or fahrenheit"
    assert schema["parameters"]["required"] == ["city"]


def test_the_schema_and_the_validation_are_one_model():
    check = _Env.lookup.validate
    assert check({"city": "Oslo"}) == {"city": "Oslo", "days": 3, "unit": "celsius"}
    with pytest.raises(Exception, match="less than or equal to 14"):
        check({"city": "Oslo", "days": 15})


def test_a_docstring_describing_an_unknown_argument_is_refused():
    with pytest.raises(TypeError, match="unknown argument"):
        @tool
        def f(self, x: int) -> str:
            """F.

            Args:
                y: not a parameter.
            """
            return ""


def test_transformers_reads_the_same_descriptions():
    get_json_schema = pytest.importorskip("transformers.utils").get_json_schema

    def lookup(city: str, days: int = 3) -> str:
        """Weather forecast for a city.

        Uses the offline table.

        Args:
            city: The city's name,
                e.g. "Paris".
            days: How many days ahead.
        """
        return ""

    theirs = get_json_schema(lookup)["function"]
    ours = _Env.lookup.schema()["function"]
    for name in ("city", "days"):
        assert (theirs["parameters"]["properties"][name]["description"]
                == ours["parameters"]["properties"][name]["description"])
    assert json.dumps(ours)  # JSON-serialisable, as templates need


def test_bfcl_replies_without_calls_end_the_user_turn_in_either_form():
    pytest.importorskip("bfcl_eval")
    import gymnasium as gym

    env = gym.make("trace/BFCL-v0", subset="base").unwrapped
    env.reset(options={"task_id": "multi_turn_base_0"})
    questions = env.task.metadata["entry"]["question"]
    _, _, _, _, info = env.step({"content": "", "tool_calls": [openai_call("pwd", {})]})
    assert info["tool_results"][0]["name"] == "pwd" and info["user_turn"] == 0
    for reply in ({"content": "All done."}, {"content": ""}, AssistantMessage(reasoning="hm")):
        obs, _, terminated, _, info = env.step(reply)
        if terminated:
            break
        assert info["observation_role"] == "user" and obs == questions[info["user_turn"]][0]["content"]
    assert info["user_turn"] == min(3, len(questions))  # each reply ended one user turn


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("arguments, problem", [
    ({"expression": _deep_list(100)}, "nested"),
    ({"expression": 10 ** 2000}, "digits"),
    ({"expression": "\ud800"}, "lone surrogate"),
    ({"expression": object()}, "not JSON data"),
])
def test_structured_arguments_get_the_text_paths_bounds(env, arguments, problem):
    call = openai_call("calculator", arguments)
    _, _, terminated, _, info = env.step({"content": "", "tool_calls": [call]})
    assert problem in info["error"] and not terminated


_ANY = st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.just("\ud800x\udfff")
_CALLS = st.lists(
    st.builds(ToolCall, name=st.sampled_from(["calculator", "calc\udc00"]) | _ANY,
              arguments=st.dictionaries(st.text(max_size=4), _ANY, max_size=2) | _ANY,
              error=st.none() | st.just("malformed")) | _ANY,
    max_size=3,
) | _ANY


@fuzz.examples(120)
@given(content=_ANY, reasoning=_ANY, calls=_CALLS)
def test_a_hand_built_message_is_read_like_a_dict_and_stays_encodable(content, reasoning, calls):
    """A typed message from the caller is checked as thoroughly as a dict: wrong field types are
    errors for the model, never a failure of the env; what it returns can be tokenized and
    snapshotted (no lone surrogate survives)."""
    env = CalculatorEnv(suite_options={"size": 4, "seed": 1}, max_turns=2)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(AssistantMessage(content, calls, reasoning))
    assert "the environment failed" not in obs
    obs.encode("utf-8")
    env.snapshot().to_bytes()
