"""No model reply crashes a turn or stalls it: every family's parser over generated hostile
replies (cut at any point, nested past every bound, thousands of calls, marker spam), each read in
bounded CPU time into an action the env answers with an observation.

``pytest --fuzz-long`` runs about 6,000 replies per family (tests/fuzz.py).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import given

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("trl")

from tests import fuzz
from tests.agents.family_tokenizers import TEMPLATES, family_tokenizer
from trace_agents.backends.base import Completion
from trace_agents.dialects import make_dialect
from trace_agents.episode import Limits, play
from trace_agents.dialects.base import template_parser
from trace_agents.dialects.families import FAMILIES as FAMILY_CLASSES
from trace_envs.actions import ToolCall
from trace_envs.calculator.env import CalculatorEnv
from trace_envs.structured import AssistantMessage

FAMILIES = [f for f in TEMPLATES if template_parser() or FAMILY_CLASSES[f].trl_schema]
MAX_CPU_S = 0.5
"""CPU seconds one reply may take to parse (the issue's goal; today's worst was 7.1 s)."""


def _replies(dialect) -> tuple[list[str], list[str]]:
    calls = [ToolCall("calculator", {"expression": "12*(3+4)"}), ToolCall("calculator", {"expression": "[1,2]"})]
    valid = [dialect.render_action(AssistantMessage("The answer is 84.")),
             dialect.render_action(AssistantMessage("", (calls[0],), "let me think")),
             dialect.render_action(AssistantMessage("", tuple(calls[: 1 if dialect.one_call_per_message else 2])))]
    markers = sorted({m for v in valid for m in fuzz.special_markers(v)} | set(dialect.end_of_turn)
                     | {"<think>", "</think>", "<tool_call>", "</tool_call>", "{", "[", '"', "\\"})
    return valid, markers


@pytest.fixture(scope="module")
def dialects():
    return {f: make_dialect(family_tokenizer(f)) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_no_reply_raises_or_stalls_in_any_family(family, dialects):
    dialect = dialects[family]
    env = CalculatorEnv()

    @fuzz.examples(60)
    @given(fuzz.hostile_replies(*_replies(dialect)))
    def check(reply: str) -> None:
        env.reset(seed=0)
        with fuzz.measured(f"reply ({family})"):
            started = time.process_time()
            action = dialect.parse(reply, env)
            spent = time.process_time() - started
        assert isinstance(action, AssistantMessage)
        assert spent <= MAX_CPU_S, f"{len(reply)} characters took {spent:.2f} s of CPU"
        observation, *_ = env.step(action)
        assert isinstance(observation, str)

    check()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_whole_turn_survives_any_reply(family, dialects):
    """Through the one episode loop, tokens in: replies that once raised (RecursionError from
    nesting), went quadratic, or were cut off end their turn with an observation, never as a
    failed episode."""
    dialect = dialects[family]
    env = CalculatorEnv(max_turns=1)
    valid, _ = _replies(dialect)
    nested = fuzz._deepened(valid[-1], 1000, "[", 0.5)
    for reply in (nested, valid[-1] * 2000, valid[-1][: len(valid[-1]) // 2], '<tool_call>{"":"","":' + "[" * 1000):
        env.reset(seed=0)
        ids = dialect.encode(reply)

        async def generate(prompt, max_tokens, turn, ids=ids):
            return Completion(reply, ids, None, "stop", len(prompt))

        episode = asyncio.run(play(generate, dialect, env, [], limits=Limits(turn_tokens=len(ids))))
        assert episode.error is None and episode.status != "failed" and len(episode.turns) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_bounds_come_from_the_env(family, dialects):
    """The env's action limit refuses a long reply before any parser reads it; calls past its
    per-turn limit are counted, not parsed."""
    dialect = dialects[family]
    env = CalculatorEnv(max_action_chars=2_000)
    env.reset(seed=0)
    call = dialect.render_action(AssistantMessage("", (ToolCall("calculator", {"expression": "1+2"}),)))
    refused = dialect.parse(call * (2_001 // len(call) + 1), env)
    assert [c.error for c in refused.tool_calls] == [f"the reply is {len(call) * (2_001 // len(call) + 1)} "
                                                     "characters long; the limit is 2000"]
    if not dialect.one_call_per_message:
        env.max_calls_per_turn = 3
        many = dialect.parse(call * 10, env)
        assert len(many.tool_calls) == 10
        assert [c.name for c in many.tool_calls[:3]] == ["calculator"] * 3
        assert all(c.error == "not run" for c in many.tool_calls[3:])
        observation, *_ = env.step(many)
        assert "10 tool calls in one action; only the first 3 were run" in observation


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_nesting_is_an_error_the_model_reads(family, dialects):
    dialect = dialects[family]
    env = CalculatorEnv()
    env.reset(seed=0)
    call = dialect.render_action(AssistantMessage("", (ToolCall("calculator", {"expression": "1+2"}),)))
    at = call.index("1+2")
    at -= next((len(q) for q in ('"', '<|"|>') if call[:at].endswith(q)), 0)  # before the string
    action = dialect.parse(call[:at] + "[" * 1000 + call[at:], env)
    errors = [c.error for c in action.tool_calls if c.error]
    assert errors, action
    observation, reward, terminated, *_ = env.step(action)
    assert not terminated and observation.startswith("Error")
