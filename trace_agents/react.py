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
from collections.abc import Sequence
from typing import Any

from trace_envs import ToolEnv

STOP_STRINGS = ("</tool_call>", "</answer>")
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

_SENTINEL = "\x00TRACE_SENTINEL\x00"

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


def turn_messages(action: str, observation: str | None) -> list[Message]:
    """The messages one turn adds: the action, and the observation unless the episode ended."""
    messages = [{"role": "assistant", "content": action}]
    if observation is not None:
        messages.append({"role": "user", "content": observation_content(observation)})
    return messages


class ChatFormat:
    """Token segments of the ReAct conversation, cut from the tokenizer's own chat template."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; give it one (e.g. ChatML)")
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(tokenizer)
        base = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}]
        rendered = self.render(base, generation_prompt=False)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("the chat template does not render assistant content verbatim")
        self.closer = rendered.split(_SENTINEL)[1]
        """What the template puts after an assistant message (``<|im_end|>\\n`` in ChatML)."""
        with_obs = self.render(base + [{"role": "user", "content": _SENTINEL}], generation_prompt=True)
        if not with_obs.startswith(rendered):
            raise ValueError("the chat template renders a conversation's prefix differently")
        self._observation_template = with_obs[len(rendered):]
        self.closer_ids = self.encode(self.closer)

    def render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The initial prompt (system + task), ending with the assistant's generation prompt."""
        return self.encode(self.render(messages, generation_prompt=True))

    def observation_ids(self, action_ids: Sequence[int], observation: str) -> list[int]:
        """Tokens the env contributes after an action: the turn closer (unless the model already
        emitted its end-of-turn token), the observation message and the next generation prompt."""
        head = self._closer_after(action_ids)
        body = self._observation_template.replace(_SENTINEL, observation_content(observation))
        return head + self.encode(body)

    def final_ids(self, action_ids: Sequence[int]) -> list[int]:
        """Tokens that close the last turn of an episode (the closer, unless already emitted)."""
        return self._closer_after(action_ids)

    def _closer_after(self, action_ids: Sequence[int]) -> list[int]:
        if action_ids and action_ids[-1] in self.eos_ids:
            closer = self.closer_ids
            # the model's end-of-turn token is the closer's first token; keep only the rest
            return list(closer[1:]) if closer and closer[0] == action_ids[-1] else []
        return list(self.closer_ids)


def _eos_ids(tokenizer: Any) -> frozenset[int]:
    ids = tokenizer.eos_token_id
    if ids is None:
        return frozenset()
    return frozenset(ids if isinstance(ids, list) else [ids])
