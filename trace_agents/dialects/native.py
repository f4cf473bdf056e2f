"""The ``native`` dialect: the server parses tool calls itself (OpenAI ``tools=`` and ``tool_calls``).

For evaluating an API model, or vLLM/SGLang with their own tool parser, through
:class:`~trace_agents.backends.openai_chat.OpenAIChatBackend`. The prompt is a
:class:`~trace_agents.backends.base.ChatPrompt`: the env's instructions and task as messages and
its tool schemas as ``tools``, given once at the start as every dialect renders them (an env that
reveals a tool later announces it in its observation, BFCL's missing functions). The reply is the
server's assistant message, handed to the env as a structured action
(:mod:`trace_envs.structured`: tool calls are calls, a reply without any is the final answer);
results go back as ``role: tool`` messages with the matching ``tool_call_id``. No token segment
is known: the record is the messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trace_agents.backends.base import BackendError, ChatPrompt
from trace_agents.dialects.base import instruction_messages
from trace_agents.dialects.turn import PlayedTurn
from trace_envs import ToolEnv

if TYPE_CHECKING:
    from trace_agents.backends.base import Completion

Message = dict[str, Any]


class NativeToolsDialect:
    """Chat messages with native tool calls; the action text of a turn is the server's assistant
    message as JSON (what :meth:`parse` reads back, ids and reasoning included)."""

    name = "native"
    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = frozenset()

    def initial_messages(self, env: ToolEnv, task_prompt: str) -> list[Message]:
        return instruction_messages(env, task_prompt)

    def initial_ids(self, env: ToolEnv, task_prompt: str) -> list[int]:
        """No token prompt: the server renders the messages and tools."""
        return []

    def prompt(self, ids: Sequence[int], messages: Sequence[Message],
               tools: Sequence[Mapping[str, Any]]) -> ChatPrompt:
        return ChatPrompt(tuple(messages), tuple(dict(t) for t in tools))

    def read(self, completion: Completion) -> str:
        if completion.message is None:
            raise BackendError("the backend returned no assistant message: the native dialect "
                               "needs a backend with native tool calling")
        return json.dumps(completion.message, ensure_ascii=False)

    def parse(self, text: str, env: ToolEnv | None = None) -> Message:
        """The assistant message :meth:`read` wrote; any other text is a reply without tool calls
        (never raises)."""
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict) or message.get("role") != "assistant":
            return {"role": "assistant", "content": text}
        return message

    def after_action_ids(self, action_ids: Sequence[int], action: Message, observation: str | None,
                         info: Mapping[str, Any]) -> list[int]:
        return []

    def extend(self, prompt: ChatPrompt, turn: PlayedTurn) -> ChatPrompt:
        added = self.turn_messages(turn.env_action, turn.observation, turn.info)
        return ChatPrompt((*prompt.messages, *added), prompt.tools)

    def turn_messages(self, action: Message, observation: str | None, info: Mapping[str, Any]) -> list[Message]:
        """The assistant message as the server sent it, then one tool message per call it made
        (the API requires each to be answered), or else the observation as a user message."""
        calls = [c for c in action.get("tool_calls") or [] if isinstance(c, Mapping)]
        messages = [dict(action)]
        if observation is None:
            return messages
        if not calls:  # an error about the reply, or the next user turn (BFCL)
            return [*messages, {"role": "user", "content": observation}]
        results = [r["content"] for r in info.get("tool_results") or []][: len(calls)]
        # calls the env ran none of (a refused action) or that passed its per-turn limit hear why
        rest = observation[len("\n\n".join(results)):].strip() if results else observation
        results += [rest] * (len(calls) - len(results))
        return [*messages, *({"role": "tool", "tool_call_id": c.get("id"), "content": r}
                             for c, r in zip(calls, results))]
