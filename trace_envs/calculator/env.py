"""`trace/Calculator-v0`: math word problems with a calculator tool."""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import pydantic

from trace_envs.actions import ToolCall
from trace_envs.calculator.evaluator import (
    MAX_INT_BITS, CalculatorError, Number, evaluate, format_number, normalize,
)
from trace_envs.core import ToolEnv
from trace_envs.structured import AssistantMessage
from trace_envs.tasks.base import Task, TaskSuite
from trace_envs.tasks.suites import load_suite
from trace_envs.tools import Tool, ToolError, tool, with_answer_tool


class CalculatorEnv(ToolEnv):
    """Solve a math problem, calling ``calculator`` as often as needed, then answer.

    The final answer is ``<answer>...</answer>`` in a text action; a structured reply without a
    tool call (every template dialect); or, with ``answer_tool=True``, a call to ``answer``.

    The tool keeps the last result as ``ans`` so a chain of steps can build on it; that result
    is the env's tool state and is what ``fork()`` copies.
    """

    instructions = (
        "Solve the problem step by step. Use the calculator tool for every arithmetic step "
        "(the previous result is available as `ans`). When you are done, reply with the final "
        "answer alone inside <answer></answer>."
    )

    def __init__(
        self,
        suite: str | TaskSuite = "arithmetic",
        *,
        split: str = "all",
        max_turns: int = 8,
        suite_options: dict[str, Any] | None = None,
        answer_tool: bool = False,
        **env_options: Any,
    ) -> None:
        tasks = suite if isinstance(suite, TaskSuite) else load_suite(suite, **(suite_options or {}))
        super().__init__(tasks.split(split), max_turns=max_turns, **env_options)  # type: ignore[arg-type]
        self.ans: Number | None = None
        self.answer_tool = answer_tool

    def available_tools(self) -> Mapping[str, Tool]:
        return with_answer_tool(self.tools, self.answer_tool)

    @tool(final=True)
    def answer(self, answer: str) -> str:
        """Give the final answer; this ends the episode (offered with ``answer_tool=True``).

        Args:
            answer: The final answer alone, e.g. "42".
        """
        return answer

    @tool
    def calculator(self, expression: str) -> str:
        """Evaluate an arithmetic expression exactly.

        Args:
            expression: The expression, e.g. "12 * (3 + 4)": + - * / // % ** (or ^),
                parentheses, and sqrt, log, ln, exp, sin, cos, tan, factorial, gcd, lcm, comb,
                round, floor, ceil, min, max, abs; constants pi and e; `ans` is the previous result.
        """
        names = {} if self.ans is None else {"ans": self.ans}
        try:
            result = evaluate(expression, names)
        except CalculatorError as exc:
            raise ToolError(f"calculator: {exc}") from None
        text = format_number(result)
        self.ans = result  # only a result that evaluated and rendered becomes `ans`
        return text

    def demonstration(self, task: Task) -> list[AssistantMessage] | None:
        """Compute the generated problem's expression with the calculator, then answer."""
        answer = AssistantMessage(f"<answer>{task.answer}</answer>")
        expression = task.metadata.get("expression")
        if not expression:
            return [answer]
        return [AssistantMessage(tool_calls=(ToolCall("calculator", {"expression": expression}),)), answer]

    def reset_tool_state(self, task: Task) -> None:
        self.ans = None

    def get_tool_state(self) -> Any:
        return {"ans": _encode(self.ans)}

    def check_tool_state(self, state: Any, task: Task | None) -> None:
        _decode(CalculatorState.model_validate(state).ans)

    def set_tool_state(self, state: Any) -> None:
        self.ans = _decode(state["ans"])

    def copy_tool_state_to(self, clone: CalculatorEnv) -> None:  # type: ignore[override]
        clone.ans = self.ans  # numbers are immutable: sharing is copying


def _encode(x: Number | None) -> str | None:
    """Exact, JSON-safe encoding (floats as hex so a restore reproduces every bit)."""
    if x is None:
        return None
    if isinstance(x, int):
        return f"i:{x}"
    if isinstance(x, Fraction):
        return f"q:{x.numerator}/{x.denominator}"
    return f"f:{x.hex()}"


_MAX_DIGITS = MAX_INT_BITS * 302 // 1000 + 2  # log10(2) ~ 0.302
_DIGITS = r"\d{1,%d}" % _MAX_DIGITS
_ENCODED = re.compile(
    rf"i:-?{_DIGITS}|q:-?{_DIGITS}/{_DIGITS}|f:-?0x[01]\.[0-9a-f]{{1,13}}p[+-]\d{{1,4}}"
)


class CalculatorState(pydantic.BaseModel):
    """The calculator's tool state as a snapshot holds it: ``ans`` in :func:`_encode`'s form."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    ans: str | None = pydantic.Field(max_length=2 * _MAX_DIGITS + 8)


def _decode(s: str | None) -> Number | None:
    """Inverse of :func:`_encode`; anything it could not have written raises ``ValueError``.

    The text is matched against a bounded pattern before any number is built, so decoding
    costs microseconds whatever the input (``Fraction("1e10000000")`` would take seconds).
    """
    if s is None:
        return None
    if not isinstance(s, str) or not _ENCODED.fullmatch(s):
        raise ValueError(f"bad calculator state {str(s)[:80]!r}")
    kind, body = s[0], s[2:]
    if kind == "i":
        value: Number = int(body)
    elif kind == "q":
        num, den = (int(part) for part in body.split("/"))
        if den == 0:
            raise ValueError("bad calculator state: zero denominator")
        value = Fraction(num, den)
    else:
        value = float.fromhex(body)
    try:
        if normalize(value) != value or type(normalize(value)) is not type(value):
            raise ValueError(f"bad calculator state {s[:80]!r}: not in normal form")
    except CalculatorError as exc:
        raise ValueError(f"bad calculator state: {exc}") from None
    return value
