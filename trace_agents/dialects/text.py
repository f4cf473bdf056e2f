"""The ``react`` dialect: the Hermes ``<tool_call>`` format written into the system text.

For chat templates that render no tools (ChatML models such as SmolLM2, the tiny test model) and
for Search-R1-style training: the system prompt lists the tools and the turn format itself, the
env parses the reply text with its own parser (:func:`trace_envs.parse_action`), final answers go
in ``<answer>``, and results come back as a user ``<tool_response>`` message.

:class:`TextDialect` speaks it in token ids; :class:`MessagesDialect` speaks it in chat messages,
for servers that take no token ids (OpenAI-compatible chat), which render the template themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trace_agents.dialects.turn import PlayedTurn, TokenPrompt
from trace_agents.react import (
    STOP_STRINGS, ChatFormat, Message, initial_messages, observation_role, turn_messages,
)
from trace_envs import ToolEnv
from trace_envs.structured import AssistantMessage, tool_call_from

if TYPE_CHECKING:
    from trace_agents.backends.base import Completion


class ReactTurns:
    """The react format's turns, whatever carries them: the env parses the reply text itself."""

    name = "react"
    stop = STOP_STRINGS

    def initial_messages(self, env: ToolEnv, task_prompt: str) -> list[Message]:
        return initial_messages(env, task_prompt)

    def parse(self, text: str, env: ToolEnv | None = None) -> str:
        """The reply text itself: the env parses it."""
        return text

    def turn_messages(self, action: str, observation: str | None, info: Mapping[str, Any]) -> list[Message]:
        return turn_messages(action, observation, observation_role(info))


class MessagesDialect(ReactTurns):
    """The react format as chat messages: the prompt is the conversation, the reply the server's
    text, and no token segment is known besides the model's (best-effort) tokens."""

    stop_ids: frozenset[int] = frozenset()

    def initial_ids(self, env: ToolEnv, task_prompt: str) -> list[int]:
        """No token prompt: the server renders the messages."""
        return []

    def prompt(self, ids: Sequence[int], messages: Sequence[Message], tools: Sequence[Any]) -> list[Message]:
        """The prompt a generation gets, of the renderings of the opening: the messages (the
        tools are in the system text)."""
        return list(messages)

    def read(self, completion: Completion) -> str:
        return completion.text

    def after_action_ids(self, action_ids: Sequence[int], action: str, observation: str | None,
                         info: Mapping[str, Any]) -> list[int]:
        return []

    def extend(self, prompt: Sequence[Message], turn: PlayedTurn) -> list[Message]:
        return [*prompt, *self.turn_messages(turn.env_action, turn.observation, turn.info)]


class TextDialect(ReactTurns, ChatFormat, TokenPrompt):
    @property
    def end_ids(self) -> frozenset[int]:
        """Token ids that end a turn."""
        return self.eos_ids

    stop_ids = end_ids

    def initial_ids(self, env: ToolEnv, task_prompt: str) -> list[int]:
        return self.prompt_ids(initial_messages(env, task_prompt))

    def after_action_ids(self, action_ids: Sequence[int], action: str, observation: str | None,
                         info: Mapping[str, Any]) -> list[int]:
        return self.tail_ids(action_ids, observation, observation_role(info))

    def render_action(self, message: AssistantMessage | Mapping[str, Any]) -> str:
        """A structured message in this dialect's text: thinking, content, ``<tool_call>`` blocks."""
        if not isinstance(message, AssistantMessage):
            calls = tuple(tool_call_from(c) for c in message.get("tool_calls") or [])
            message = AssistantMessage(message.get("content") or "", calls,
                                       message.get("reasoning_content") or "")
        parts = [f"<think>{message.reasoning}</think>"] if message.reasoning else []
        if message.content:
            parts.append(message.content)
        parts.append("".join(f"<tool_call>{c.to_json()}</tool_call>" for c in message.tool_calls))
        return "\n".join(p for p in parts if p)
