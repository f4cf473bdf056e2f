"""Structured actions: the assistant message as data instead of text.

An agent whose model family writes tool calls in its own syntax (Llama's bare JSON, Qwen3.5's
XML, gpt-oss's harmony channels) parses the reply on its side and hands the env the result: an
:class:`AssistantMessage`, or a dict in the OpenAI chat shape::

    {"role": "assistant", "content": "...", "reasoning_content": "...",
     "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {...}}}]}

(``arguments`` may be a JSON string, as OpenAI sends it; a flat ``{"name", "arguments"}`` call is
accepted too). :func:`to_action` turns either that or a text action (:func:`parse_action`, the
Hermes ``<tool_call>`` dialect) into the one :class:`ParsedAction` the envs act on.

Final answers follow the family's convention: a reply without tool calls *is* the final answer
(its ``<answer>...</answer>`` part when it has one, the Search-R1 style), or a call to a tool
declared ``@tool(final=True)`` (an env's ``answer``/``submit`` tool), whose result is the answer.

Like text parsing, this never raises: every problem becomes a message for the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trace_envs.actions import (
    ANSWER_RE, THINK_RE, ParsedAction, ToolCall, call_with_arguments, parse_action, readable,
)
from trace_envs.tools import Tool, ToolError

_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
EMPTY_REPLY = "empty reply: call a tool, or reply with the final answer"


@dataclass(frozen=True)
class AssistantMessage:
    """A parsed reply: visible text, tool calls (a malformed one carries its ``error``), thinking."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""


def to_action(action: Any, *, max_chars: int = 32_768, env: Any = None) -> ParsedAction:
    """A text action or a structured message as a :class:`ParsedAction`; given the ``env``, a call
    to one of its final tools becomes the answer."""
    parsed = parse_action(action, max_chars=max_chars) if isinstance(action, str) else parse_message(
        action, max_chars=max_chars
    )
    return parsed if env is None else _final_tool_answer(parsed, env)


def parse_message(message: Any, *, max_chars: int = 32_768) -> ParsedAction:
    """An :class:`AssistantMessage` or an OpenAI-shaped dict as a :class:`ParsedAction`."""
    if isinstance(message, Mapping):
        message = _from_mapping(message)
    elif isinstance(message, AssistantMessage):
        message = _checked(message)
    else:
        return ParsedAction(
            "", error=f"action must be a string or an assistant message, got {type(message).__name__}"
        )
    if isinstance(message, ParsedAction):  # a message that could not be read
        return message
    size = len(message.content) + len(message.reasoning) + sum(
        len(c.name) + _json_size(c.arguments) for c in message.tool_calls
    )
    if size > max_chars:
        return ParsedAction("", error=f"action is {size} characters long; the limit is {max_chars}")
    visible = THINK_RE.sub("", message.content)
    answers = ANSWER_RE.findall(visible)
    thought = "\n".join(
        p for p in (message.reasoning.strip(), *(t.strip() for t in THINK_RE.findall(message.content)),
                    ANSWER_RE.sub("", visible).strip()) if p
    )
    calls = message.tool_calls
    if calls and answers:
        return ParsedAction(
            thought, calls, answers[-1].strip(),
            error="use either tool calls or a final answer in one turn, not both",
        )
    if calls:
        return ParsedAction(thought, calls)
    if answers:
        return ParsedAction(thought, answer=answers[-1].strip())
    reply = visible.strip()
    if not reply:
        return ParsedAction(thought, error=EMPTY_REPLY)
    return ParsedAction(thought, answer=reply)


def _from_mapping(message: Mapping[str, Any]) -> AssistantMessage | ParsedAction:
    content = message.get("content") or ""
    if isinstance(content, Sequence) and not isinstance(content, str):  # OpenAI content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping)
                          and isinstance(p.get("text", ""), str))
    reasoning = next((message[k] for k in _REASONING_KEYS if isinstance(message.get(k), str)), "")
    return _checked(AssistantMessage(content, message.get("tool_calls") or (), reasoning))


def _checked(message: AssistantMessage) -> AssistantMessage | ParsedAction:
    """The caller's message as the env's own: text fields must be text (lone surrogates read as
    U+FFFD, as in text actions), and every call is re-read by :func:`tool_call_from`, so a
    hand-built :class:`ToolCall` gets the same bounds as one parsed from text."""
    for name in ("content", "reasoning"):
        value = getattr(message, name)
        if not isinstance(value, str):
            return ParsedAction("", error=f"message {name} must be text, got {type(value).__name__}")
    calls = message.tool_calls
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        return ParsedAction(readable(message.content), error="tool_calls must be a list of calls")
    return AssistantMessage(readable(message.content), tuple(tool_call_from(c) for c in calls),
                            readable(message.reasoning))


def tool_call_from(call: Any) -> ToolCall:
    """One OpenAI ``{"type": "function", "function": {"name", "arguments"}}`` or flat
    ``{"name", "arguments"}`` call; ``arguments`` may be a JSON-encoded object."""
    if isinstance(call, ToolCall):
        if call.error is not None:
            return ToolCall(readable(call.name) if isinstance(call.name, str) else "", error=str(call.error))
        call = {"name": call.name, "arguments": call.arguments}
    if not isinstance(call, Mapping):
        return ToolCall("", error="a tool call must be an object with a name and arguments")
    function = call.get("function", call)
    if not isinstance(function, Mapping):
        return ToolCall("", error="a tool call's 'function' must be an object with a name and arguments")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall("", error="tool call has no string 'name'")
    name = readable(name)
    arguments = function.get("arguments", function.get("parameters"))
    if isinstance(arguments, Mapping):
        # Data from a caller gets the text path's bounds (depth, digits, surrogates) and becomes
        # the env's own copy: encode it, then decode it as a model's JSON would be.
        try:
            arguments = json.dumps(dict(arguments), ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return ToolCall(name, error=f"arguments of '{name}' are not JSON data: {exc}"[:500])
    return call_with_arguments(name, arguments)


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError, RecursionError):
        return 0  # not JSON: the tool's validation reports it


def _final_tool_answer(parsed: ParsedAction, env: Any) -> ParsedAction:
    """A call to a ``final`` tool is the answer: alone in its turn, its result is what is graded."""
    if not parsed.tool_calls:
        return parsed
    tools: Mapping[str, Tool] = env.available_tools()
    finals = [c for c in parsed.tool_calls if (t := tools.get(c.name)) is not None and t.final]
    if parsed.error is not None or not finals:
        return parsed
    if len(parsed.tool_calls) > 1:
        return ParsedAction(parsed.thought, parsed.tool_calls,
                            error=f"call {finals[0].name} alone, after the other tool calls have returned")
    call = finals[0]
    try:
        answer = tools[call.name](env, call.arguments) if call.error is None else None
    except ToolError as exc:
        return ParsedAction(parsed.thought, parsed.tool_calls, error=str(exc))
    if answer is None:
        return ParsedAction(parsed.thought, parsed.tool_calls, error=str(call.error))
    return ParsedAction(parsed.thought, answer=answer)
