"""Parse an agent's text action in the Qwen3/Hermes format.

An action is free text (the thought) around either one or more
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks or one final
``<answer>...</answer>``. This is the one parser of the project: the envs use it to act and
the agents use it to render and check turns, so both sides always agree.

Parsing never raises: every problem becomes a message meant for the model to read. Tool-call
JSON is bounded (nesting depth, integer size) and its strings must be valid Unicode (no lone
surrogates), so whatever a call carries can be stored, snapshotted and rendered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from trace_envs import bounded_json

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL)
THINK_RE = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)

MAX_CALL_DEPTH = 32
"""How deeply a tool call's JSON may nest (no tool needs more; deep JSON only costs)."""
MAX_INT_DIGITS = 64
"""The most digits an integer in a tool call may have (a larger one is refused, not parsed)."""
_LONG_INT_RE = re.compile(r"(?<![\w.\"])-?\d{%d,}" % (MAX_INT_DIGITS + 1))
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")

FORMAT_HINT = (
    'Call a tool with <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> '
    "or give the final answer as <answer>...</answer>."
)


@dataclass(frozen=True)
class ToolCall:
    """One requested tool call; ``error`` is set (and ``name`` may be empty) when it is malformed."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)


@dataclass(frozen=True)
class ParsedAction:
    thought: str
    tool_calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    error: str | None = None
    """Why the action as a whole is unusable (no tag, both a tool call and an answer, too long)."""


def parse_tool_call(body: str) -> ToolCall:
    """Parse the JSON inside one ``<tool_call>`` block.

    ``arguments`` may also arrive as a JSON-encoded string (OpenAI style); it is decoded.
    """
    body = body.strip()
    if not body:
        return ToolCall("", error="empty <tool_call> block")
    try:
        obj = _load_json(body)
    except ValueError as exc:
        return ToolCall("", error=f"tool call is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return ToolCall("", error="tool call must be a JSON object with 'name' and 'arguments'")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall("", error="tool call has no string 'name'")
    return call_with_arguments(name, obj.get("arguments", obj.get("parameters", {})))


def call_with_arguments(name: str, arguments: Any) -> ToolCall:
    """A call from its name and its arguments as sent: an object, a JSON-encoded object (OpenAI
    style) or nothing. The same bounds hold whether the arguments arrived as text or as data."""
    if isinstance(arguments, str):
        try:
            arguments = _load_json(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return ToolCall(name, error=f"arguments of '{name}' are not a JSON object: {exc}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name, error=f"arguments of '{name}' must be a JSON object")
    if bounded_json.has_lone_surrogate(arguments):
        return ToolCall(name, error=f"arguments of '{name}' hold an invalid Unicode escape "
                                    "(a lone surrogate such as \\ud800)")
    return ToolCall(name, arguments)


def readable(text: str) -> str:
    """``text`` with each lone surrogate read as U+FFFD, as a UTF-8 decoder reads a broken byte
    sequence: such a character cannot be encoded (to tokens, to a snapshot)."""
    return _LONE_SURROGATE_RE.sub("\ufffd", text)


def _load_json(text: str) -> Any:
    """Bounded JSON: at most :data:`MAX_CALL_DEPTH` levels and :data:`MAX_INT_DIGITS` digits."""
    if _LONG_INT_RE.search(_STRING_LITERAL_RE.sub('""', text)):
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return bounded_json.loads(text, max_depth=MAX_CALL_DEPTH)


_STRING_LITERAL_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def parse_action(text: str, *, max_chars: int = 32_768) -> ParsedAction:
    """Split an action into thought, tool calls and answer.

    An unterminated last block (a generation stopped at ``</tool_call>``) is accepted.
    """
    if not isinstance(text, str):
        return ParsedAction("", error=f"action must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        return ParsedAction(
            "", error=f"action is {len(text)} characters long; the limit is {max_chars}"
        )
    text = readable(text)
    visible = THINK_RE.sub("", text)
    calls = tuple(parse_tool_call(m) for m in _TOOL_CALL_RE.findall(visible))
    answers = ANSWER_RE.findall(visible)
    thought_parts = [m.strip() for m in THINK_RE.findall(text)]
    thought_parts.append(ANSWER_RE.sub("", _TOOL_CALL_RE.sub("", visible)).strip())
    thought = "\n".join(p for p in thought_parts if p)
    if calls and answers:
        return ParsedAction(
            thought, calls, answers[-1].strip(),
            error="use either tool calls or a final answer in one turn, not both",
        )
    if answers:
        return ParsedAction(thought, answer=answers[-1].strip())
    if calls:
        return ParsedAction(thought, calls)
    reason = "empty action" if not text.strip() else "no <tool_call> or <answer> found"
    return ParsedAction(thought, error=f"{reason}. {FORMAT_HINT}")
