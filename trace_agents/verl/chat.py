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
_OBSERVATION = "\x00TRACE_OBSERVATION\x00"

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
        # Cut the observation segment from a conversation in which the assistant turn is *not* the
        # last message: templates such as Qwen3's render the last assistant turn differently.
        probe = [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": _SENTINEL},
            {"role": "user", "content": observation_content(_OBSERVATION)},
        ]
        rendered = self.render(probe, generation_prompt=True)
        if rendered.count(_SENTINEL) != 1 or rendered.count(_OBSERVATION) != 1:
            raise ValueError("the chat template does not render message content verbatim")
        self._observation_template = rendered.split(_SENTINEL)[1]
        """Turn closer, observation message and next generation prompt (``<|im_end|>\\n<|im_start|>user...``)."""

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
        """Tokens the env adds after an action: the turn closer (less the end-of-turn token when
        the model already emitted it), the observation message and the next generation prompt."""
        ids = self.encode(self._observation_template.replace(_OBSERVATION, observation))
        if action_ids and action_ids[-1] in self.eos_ids and ids[:1] == [action_ids[-1]]:
            return ids[1:]
        return ids

    def action_text(self, action_ids: Sequence[int]) -> str:
        """The action as the env reads it (a trailing end-of-turn token dropped)."""
        ids = list(action_ids)
        while ids and ids[-1] in self.eos_ids:
            ids.pop()
        return self.tokenizer.decode(ids, skip_special_tokens=False)
