"""Token segments of a ReAct conversation, cut from the tokenizer's own chat template.

verl trains on the exact token ids the server generated, so nothing is re-tokenized: the prompt is
rendered once, the model's action tokens are kept as generated, and every observation becomes its
own segment (turn closer + a user message wrapped in ``<tool_response>`` + the next generation
prompt), cut from the template's rendering of one more message. The trajectory's tokens are then
the plain concatenation of segments, and a continuation can send the server the exact prefix its
parent saw (so the server's prefix cache hits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trace_envs import ToolEnv
from trace_envs.actions import ANSWER_CLOSE, FORMAT_HINT, TOOL_CALL_CLOSE

STOP_STRINGS = (TOOL_CALL_CLOSE, ANSWER_CLOSE)
"""Generation stops after the action: the env answers before the model speaks again."""

_SENTINEL = "\x00TRACE_SENTINEL\x00"

Message = dict[str, str]


def initial_messages(env: ToolEnv, task_prompt: str) -> list[Message]:
    """System (the env's instructions and the action format) and the task; the tools themselves
    are rendered by the chat template (``tools=``), the way the model was tuned to read them."""
    system = f"{env.instructions.strip()}\n\n{FORMAT_HINT}".strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": task_prompt}]


def observation_content(observation: str) -> str:
    return f"<tool_response>\n{observation}\n</tool_response>"


def stop_params(engine: str) -> dict[str, Any]:
    """Sampling params that stop at the end of an action and keep the stop string in the output
    (the names differ per engine; an unknown engine gets none and relies on end-of-turn)."""
    if engine == "vllm":
        return {"stop": list(STOP_STRINGS), "include_stop_str_in_output": True}
    if engine == "sglang":
        return {"stop": list(STOP_STRINGS), "no_stop_trim": True}
    return {}


class ChatCodec:
    """Renders and tokenizes the conversation in segments (see the module docstring)."""

    def __init__(self, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set one (e.g. ChatML)")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(chat_template_kwargs or {})
        eos = tokenizer.eos_token_id
        self.eos_ids = frozenset(() if eos is None else eos if isinstance(eos, list) else [eos])
        base = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}]
        rendered = self.render(base, generation_prompt=False)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("the chat template does not render assistant content verbatim")
        closer = rendered.split(_SENTINEL)[1]
        with_obs = self.render(base + [{"role": "user", "content": _SENTINEL}], generation_prompt=True)
        if not with_obs.startswith(rendered):
            raise ValueError("the chat template renders a conversation's prefix differently")
        self._observation_template = with_obs[len(rendered):]
        self.closer_ids = self.encode(closer)
        """What the template puts after an assistant message (``<|im_end|>\\n`` in ChatML)."""

    def render(
        self, messages: Sequence[Message], *, generation_prompt: bool, tools: list[dict] | None = None
    ) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tools=tools or None, tokenize=False,
            add_generation_prompt=generation_prompt, **self.template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: Sequence[Message], tools: list[dict]) -> list[int]:
        """The initial prompt, ending with the assistant's generation prompt."""
        text = self.render(messages, generation_prompt=True, tools=tools)
        if tools and text == self.render(messages, generation_prompt=True):
            raise ValueError("the chat template ignores `tools`; use one that renders them "
                             "(Qwen2.5/Qwen3, Hermes, Llama 3.1)")
        return self.encode(text)

    def observation_ids(self, action_ids: Sequence[int], observation: str) -> list[int]:
        """Tokens the env adds after an action: the turn closer (unless the model already ended
        its turn), the observation message and the next generation prompt."""
        body = self._observation_template.replace(_SENTINEL, observation_content(observation))
        return self._closer_after(action_ids) + self.encode(body)

    def action_text(self, action_ids: Sequence[int]) -> str:
        """The action as the env reads it (a trailing end-of-turn token dropped)."""
        ids = list(action_ids)
        while ids and ids[-1] in self.eos_ids:
            ids.pop()
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _closer_after(self, action_ids: Sequence[int]) -> list[int]:
        if action_ids and action_ids[-1] in self.eos_ids:
            closer = self.closer_ids
            # the model's end-of-turn token is the closer's first token; keep only the rest
            return list(closer[1:]) if closer and closer[0] == action_ids[-1] else []
        return list(self.closer_ids)
