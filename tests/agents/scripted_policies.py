"""Scripted ReAct policies for the calculator env, shared by the agent tests."""

from __future__ import annotations

import json
import random

from trace_agents.backends import SamplingParams


def call(expression: str) -> str:
    payload = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return f"<think>step</think>\n<tool_call>\n{payload}\n</tool_call>"


def chain_policy(answers: dict[str, str], *, steps: int = 2, p_correct: float = 0.5):
    """Call the calculator ``steps`` times (``ans`` chains across turns), then answer the task,
    correctly with probability ``p_correct`` (seeded by the request's seed)."""

    def policy(context: str, params: SamplingParams) -> str:
        done = context.count("<tool_response>\n")  # results, not the system prompt's mention
        if done < steps:
            return call("2 + 3" if done == 0 else "ans * 2")
        prompt = next(p for p in answers if p in context)
        rng = random.Random(params.seed)
        answer = answers[prompt] if rng.random() < p_correct else "-1"
        return f"<answer>{answer}</answer>"

    return policy
