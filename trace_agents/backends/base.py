"""One async interface over every inference engine.

A backend generates from token ids (exact prefixes: what branching needs) or from chat messages
(for servers that only speak chat), and returns what training needs later: the generated token
ids, their log-probabilities, why generation stopped, and how many prompt tokens the server served
from its prefix cache when it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages with the tools the server may call (OpenAI ``tools=``): the prompt of a
    server that parses tool calls itself, which plain messages cannot carry."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()


Prompt = Sequence[int] | Sequence[dict[str, str]] | ChatPrompt
"""Token ids, chat messages ``[{"role": ..., "content": ...}]``, or messages with tools."""

FinishReason = Literal["stop", "length", "abort"]


class BackendError(RuntimeError):
    """A generation failed for good (after the retries a transient failure deserves)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Per-request seed where the engine supports one (reproducible tests)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation besides the model's own end of sequence: a dialect's
    end-of-turn markers, which a base model's generation config may not list (Qwen3-Base stops
    at ``<|endoftext|>`` only, not at the ``<|im_end|>`` its chat template closes turns with)."""
    return_hidden_states: bool = False
    """Return the last layer's hidden state at the prompt's last token (``Completion.prompt_state``):
    the in-process engine takes it from the prefill it runs anyway; SGLang (started with
    ``--enable-return-hidden-states``) for a one-token request; other engines cannot."""

    def with_seed(self, seed: int | None) -> SamplingParams:
        return replace(self, seed=seed)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    """Log-probability of each generated token under the model (before temperature/top-p, as
    vLLM and SGLang report them); None when the engine returned none."""
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int | None = None
    """Prompt tokens served from the engine's prefix cache; None when it does not say."""
    meta: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] | None = None
    """The assistant message as the server parsed it (content, ``tool_calls`` with their ids,
    reasoning), from servers with native tool calling; None from the others."""
    prompt_state: tuple[float, ...] | None = field(default=None, repr=False)
    """The last layer's hidden state at the prompt's last token, when asked for
    (``SamplingParams.return_hidden_states``)."""


def is_token_prompt(prompt: Prompt) -> bool:
    return not isinstance(prompt, ChatPrompt) and (not prompt or not isinstance(prompt[0], dict))


@runtime_checkable
class Backend(Protocol):
    accepts_token_ids: bool
    """False for chat-only engines: rollouts then send messages and token ids are best effort."""
    native_tools: bool
    """The server parses tool calls itself (OpenAI ``tools=`` in, ``tool_calls`` out): rollouts
    then send a :class:`ChatPrompt` and act on the reply's ``message``."""

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion: ...

    async def aclose(self) -> None: ...
