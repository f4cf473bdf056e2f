"""Any OpenAI-compatible chat endpoint with native tool calling, for evaluation.

A hosted model, or vLLM/SGLang with their own tool parser behind ``/v1/chat/completions``: the
env's tool schemas go out as ``tools=``, and the server's parsed reply (``tool_calls`` with their
ids, ``reasoning_content``/``reasoning``) comes back as :attr:`Completion.message`, which
:class:`~trace_agents.dialects.native.NativeToolsDialect` hands the env as a structured action.
There are no token ids or log-probabilities and the server's parser decides what the model "did",
so this backend evaluates; training stays on the token-level backends (docs/ecosystem.md).

Only standard request fields are sent (hosted APIs refuse vLLM's extensions), through the same
bounded, retrying :class:`~trace_agents.backends.http.HTTPClient` as every HTTP backend.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import pydantic

from trace_agents.backends.base import (
    BackendError, ChatPrompt, Completion, Prompt, SamplingParams, is_token_prompt,
)
from trace_agents.backends.http import HTTPClient, _finish, _PromptDetails, _Reply, _Usage

MAX_REPLY_BYTES = 4 * 2**20
"""Default reply cap: far above any real turn (the envs refuse actions past 32k characters)."""


class _Function(_Reply):
    name: str
    arguments: str | dict[str, Any]
    """A JSON-encoded object, as OpenAI sends it; some servers send the object itself."""


class _ToolCall(_Reply):
    id: str | None = None
    function: _Function


class _Message(_Reply):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(_Reply):
    message: _Message
    finish_reason: str | None = None


class _ChatReply(_Reply):
    id: str | None = None
    choices: Annotated[list[_Choice], pydantic.Field(min_length=1)]
    usage: _Usage | None = None


def assistant_message(message: _Message) -> dict[str, Any]:
    """The reply as the OpenAI assistant message sent back in the history: content (a refusal's
    text when there is no content), every tool call with an id (``call_<i>`` where the server gave
    none) and JSON-string arguments, and the reasoning under the server's own key."""
    content = message.content if message.content is not None else message.refusal
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id or f"call_{i}", "type": "function",
             "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
            for i, call in enumerate(message.tool_calls)
        ]
    for key in ("reasoning_content", "reasoning"):
        if getattr(message, key) is not None:
            out[key] = getattr(message, key)
            break
    return out


def _arguments(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class OpenAIChatBackend:
    """``POST /v1/chat/completions`` with ``messages`` and ``tools``; the reply's message is kept
    whole. The API key (if any) goes in the ``Authorization`` header only."""

    accepts_token_ids = False
    native_tools = True

    def __init__(self, base_url: str, model: str, **client_options: Any) -> None:
        root = base_url.rstrip("/")
        client_options.setdefault("max_reply_bytes", MAX_REPLY_BYTES)
        self.http = HTTPClient(root if root.endswith("/v1") else root + "/v1", **client_options)
        self.model = model

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        if isinstance(prompt, ChatPrompt):
            messages, tools = list(prompt.messages), list(prompt.tools)
        elif not is_token_prompt(prompt):
            messages, tools = list(prompt), []
        else:
            raise BackendError("a chat-completions endpoint takes messages, not token ids")
        payload: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_completion_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p,
        }
        if tools:
            payload["tools"] = tools
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.seed is not None:
            payload["seed"] = params.seed
        reply = await self.http.post_checked("/chat/completions", payload, _ChatReply)
        choice = reply.choices[0]
        message = assistant_message(choice.message)
        usage = reply.usage or _Usage()
        return Completion(
            text=message["content"] or "", token_ids=[], logprobs=None,
            finish_reason=_finish(choice.finish_reason), prompt_tokens=usage.prompt_tokens,
            cached_tokens=(usage.prompt_tokens_details or _PromptDetails()).cached_tokens,
            meta={"id": reply.id}, message=message,
        )

    async def healthy(self) -> bool:
        return await self.http.get_ok("/models")

    async def aclose(self) -> None:
        await self.http.aclose()
