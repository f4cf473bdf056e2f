"""The ReAct turn format: system prompt, chat-template rendering and token segments per turn.

One turn is the model's action (optional ``<think>`` thought, then ``<tool_call>`` JSON blocks or a
final ``<answer>``) followed by the env's observation, returned as a user message wrapped in
``<tool_response>`` (the way Qwen/Hermes templates render tool results). Actions are parsed by the
envs' own parser (:func:`trace_envs.parse_action`); this module never parses a second way.

Rollouts work on token ids so a continuation sends the server the exact prefix its parent saw:
the prompt is rendered once with the model's chat template, the model's tokens are kept as
generated, and each observation is appended as its own token segment, cut from the template's
rendering of one more message. Nothing is re-tokenized, so the prefix of a node is the plain
concatenation of the segments on its path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from trace_envs import ToolEnv
from trace_envs.actions import ANSWER_CLOSE, TOOL_CALL_CLOSE

STOP_STRINGS = (TOOL_CALL_CLOSE, ANSWER_CLOSE)
"""Generation stops after the action; the env answers before the model speaks again."""

_FORMAT_RULES = """# Tools
You may call one or more functions to help with the task.
The function signatures are given as JSON schemas within <tools></tools> XML tags:
<tools>
{schemas}
</tools>

For each function call, return a JSON object with the function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>
Each result comes back inside <tool_response></tool_response>. You may think first inside <think></think>. When you know the final answer, reply with it inside <answer></answer> and call no tool in that turn."""

_ACTION = "\x00TRACE_ACTION\x00"
_OBSERVATION = "\x00TRACE_OBSERVATION\x00"

Message = dict[str, str]


def system_prompt(env: ToolEnv) -> str:
    """The env's instructions followed by its tools as JSON schemas and the turn format."""
    schemas = "\n".join(json.dumps(s, ensure_ascii=False) for s in env.tool_schemas())
    rules = _FORMAT_RULES.format(schemas=schemas)
    return f"{env.instructions.strip()}\n\n{rules}" if env.instructions.strip() else rules


def observation_content(observation: str) -> str:
    return f"<tool_response>\n{observation}\n</tool_response>"


def initial_messages(env: ToolEnv, task_prompt: str) -> list[Message]:
    return [{"role": "system", "content": system_prompt(env)}, {"role": "user", "content": task_prompt}]


ObservationRole = Literal["tool", "user"]
"""How an observation reaches the model: tool results in ``<tool_response>`` (the default), or a
new user message as it is (an env says so with ``info["observation_role"] = "user"``)."""


def observation_role(info: Mapping[str, Any]) -> ObservationRole:
    """The role an env's step ``info`` gives its observation."""
    return "user" if info.get("observation_role") == "user" else "tool"


def observation_message(observation: str, role: ObservationRole = "tool") -> str:
    return observation if role == "user" else observation_content(observation)


def turn_text(action: str, observation: str | None, role: ObservationRole = "tool") -> str:
    """One turn of a prefix text H_t as predictors read it (native rollouts and verl alike): the
    action, then the observation unless the episode ended."""
    return action if observation is None else action + "\n" + observation_message(observation, role)


def turn_messages(action: str, observation: str | None, role: ObservationRole = "tool") -> list[Message]:
    """The messages one turn adds: the action, and the observation unless the episode ended."""
    messages = [{"role": "assistant", "content": action}]
    if observation is not None:
        messages.append({"role": "user", "content": observation_message(observation, role)})
    return messages


class ChatFormat:
    """Token segments of the ReAct conversation, cut from the tokenizer's own chat template.

    Every segment is cut from a rendering in which the assistant message is followed by another
    message, never by comparing a conversation's rendering with its extension: templates such as
    Qwen3's render the *last* assistant message unlike earlier ones (an empty ``<think>`` block,
    earlier thinking dropped from history), so that comparison fails for them. The model's own
    tokens, thinking included, are kept as generated: a continuation is conditioned on exactly
    what the model saw, even where the template would re-render history without it.

    Tools go into the system text (:func:`system_prompt`), never through the template's ``tools=``:
    the action format is the envs' parser's, and templates that render tools teach their own call
    format (Llama 3.1's bare JSON, Mistral's ``[TOOL_CALLS]``); Qwen's is the Hermes format that
    :func:`system_prompt` writes. One prompt serves every template and the chat-message backends.

    ``chat_template_kwargs`` go to every rendering (e.g. ``{"enable_thinking": False}``).
    """

    def __init__(self, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; give it one (e.g. ChatML)")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.eos_ids = _eos_ids(tokenizer)
        turn = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _ACTION}]
        ended = self.render(turn, generation_prompt=False)
        self._observation_templates: dict[str, str] = {}
        """Per role: turn closer, observation message, next generation prompt
        (``<|im_end|>\\n<|im_start|>user...``). Tool results are probed wrapped, so templates that
        treat ``<tool_response>`` messages specially (Qwen3's) render them as they would."""
        for role in ("tool", "user"):
            content = observation_message(_OBSERVATION, role)  # type: ignore[arg-type]
            continued = self.render(turn + [{"role": "user", "content": content}], generation_prompt=True)
            if continued.count(_ACTION) != 1 or continued.count(_OBSERVATION) != 1:
                raise ValueError("the chat template does not render message content verbatim")
            self._observation_templates[role] = continued.split(_ACTION)[1]
        if ended.count(_ACTION) != 1:
            raise ValueError("the chat template does not render message content verbatim")
        self.closer = ended.split(_ACTION)[1]
        """What the template puts after the conversation's last assistant message (``<|im_end|>\\n``)."""

    def render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt, **self.template_kwargs
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The initial prompt (system + task), ending with the assistant's generation prompt."""
        return self.encode(self.render(messages, generation_prompt=True))

    def observation_ids(
        self, action_ids: Sequence[int], observation: str, role: ObservationRole = "tool"
    ) -> list[int]:
        """Tokens the env contributes after an action: the turn closer (less the end-of-turn token
        the model already emitted), the observation message and the next generation prompt."""
        body = self._observation_templates[role].replace(_OBSERVATION, observation)
        return self._after(action_ids, self.encode(body))

    def tail_ids(
        self, action_ids: Sequence[int], observation: str | None, role: ObservationRole = "tool"
    ) -> list[int]:
        """What follows an action in the token record: the observation segment, or the closer
        when the episode ended there (``observation is None``)."""
        if observation is None:
            return self.final_ids(action_ids)
        return self.observation_ids(action_ids, observation, role)

    def final_ids(self, action_ids: Sequence[int]) -> list[int]:
        """Tokens that close the last turn of an episode (the closer, less an emitted end-of-turn)."""
        return self._after(action_ids, self.encode(self.closer))

    def action_text(self, action_ids: Sequence[int]) -> str:
        """The action as the env reads it, from the model's tokens (trailing end-of-turn dropped)."""
        ids = list(action_ids)
        while ids and ids[-1] in self.eos_ids:
            ids.pop()
        return self.decode(ids)

    def _after(self, action_ids: Sequence[int], ids: list[int]) -> list[int]:
        if action_ids and action_ids[-1] in self.eos_ids and ids[:1] == [action_ids[-1]]:
            return ids[1:]  # the model ended its turn with the closer's first token itself
        return ids


def _eos_ids(tokenizer: Any) -> frozenset[int]:
    ids = tokenizer.eos_token_id
    if ids is None:
        return frozenset()
    return frozenset(ids if isinstance(ids, list) else [ids])
