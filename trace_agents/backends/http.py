"""Inference servers over HTTP: SGLang's native ``/generate`` and any OpenAI-compatible server
(vLLM, SGLang's ``/v1``), through one bounded, retrying ``httpx.AsyncClient``.

Calls go through :func:`trace_envs.http.acall`: each attempt (connect, send, every read) ends
within ``timeout_s``, the whole call with its retries within ``total_timeout_s``, and replies are
read up to ``max_reply_bytes``. Transient failures (connection refused or reset, timeouts, 5xx,
429, a body cut short) are retried with exponential backoff; after the last attempt, or at once
for a 4xx or a reply of the wrong shape (checked field by field with pydantic), the call raises
:class:`BackendError` saying what went wrong, so a rollout is marked failed instead of vanishing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Annotated, Any, Generic, TypeVar

import httpx
import pydantic

from trace_agents.backends.base import (
    BackendError,
    Completion,
    FinishReason,
    Prompt,
    SamplingParams,
    is_token_prompt,
)
from trace_envs import http
from trace_envs.http import RetryPolicy
from trace_envs.validation import validation_problems

M = TypeVar("M", bound=pydantic.BaseModel)

_JSON_OBJECT = pydantic.TypeAdapter(dict[str, Any])


def _json_object(reply: http.Reply) -> dict[str, Any]:
    try:
        return _JSON_OBJECT.validate_json(reply.body)
    except pydantic.ValidationError:  # cut short or garbled on the way: worth another try
        raise http.Transient(f"reply is not a complete JSON object: {reply.snippet()!r}") from None


class HTTPClient:
    """POST JSON with whole-call deadlines, a reply size cap, bounded concurrency and retries.

    ``timeout_s`` bounds one attempt, ``total_timeout_s`` (default: ``retry.attempts`` times
    ``timeout_s``) the call with its retries and pauses. The time spent waiting for one of the
    ``max_concurrency`` slots is not counted: a busy client queues, it does not fail.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        total_timeout_s: float | None = None,
        max_concurrency: int = 64,
        max_reply_bytes: int = 64 * 2**20,
        retry: RetryPolicy = RetryPolicy(),
        api_key: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.bounds = http.Bounds(
            total_s=total_timeout_s if total_timeout_s is not None else retry.attempts * timeout_s,
            attempt_s=timeout_s, connect_s=connect_timeout_s, max_bytes=max_reply_bytes,
        )
        self._client = http.async_client(httpx.Limits(max_connections=max_concurrency),
                                         headers=headers)
        self._slots = asyncio.Semaphore(max_concurrency)
        self.retries = 0
        """Retries made so far (all calls): a health figure for logs."""

    def _count_retry(self, problem: str) -> None:
        self.retries += 1

    async def post(self, path: str, payload: Mapping[str, Any], *, expect_json: bool = True) -> dict[str, Any]:
        """POST with retries; the reply must be a JSON object. ``expect_json=False`` for admin
        endpoints that answer in plain text (their reply comes back as ``{"text": ...}``)."""
        def parse(reply: http.Reply) -> dict[str, Any]:
            return _json_object(reply) if expect_json else {"text": reply.snippet(len(reply.body))}

        async with self._slots:
            try:
                return await http.acall(
                    self._client, "POST", self.base_url + path, parse=parse, bounds=self.bounds,
                    retry=self.retry, content=json.dumps(payload).encode(),
                    headers={"content-type": "application/json"}, on_retry=self._count_retry,
                )
            except http.CallFailed as exc:
                raise BackendError(str(exc)) from None

    async def post_checked(self, path: str, payload: Mapping[str, Any], reply: type[M]) -> M:
        """:meth:`post`, with the reply checked against ``reply`` (a wrong one: BackendError)."""
        body = await self.post(path, payload)
        try:
            return reply.model_validate(body)
        except pydantic.ValidationError as exc:
            errors = "; ".join(validation_problems(exc, limit=5))
            raise BackendError(f"unexpected reply from {self.base_url}{path} ({errors}): "
                               f"{json.dumps(body)[:300]}") from None

    async def get_ok(self, path: str) -> bool:
        try:
            return await http.acall(self._client, "GET", self.base_url + path,
                                    parse=lambda reply: True,
                                    bounds=self.bounds, retry=RetryPolicy(attempts=1))
        except http.CallFailed:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


def _prompt_state(meta: _SGLangMeta) -> tuple[float, ...]:
    """The last row of a one-token request's hidden states: the prompt's end (no decode step ran),
    whether the prefill's rows come as one nested block or flat."""
    row: Any = meta.hidden_states
    while isinstance(row, list) and row and isinstance(row[-1], list):
        row = row[-1]
    if not isinstance(row, list) or not row or not all(isinstance(x, (int, float)) for x in row):
        raise BackendError("asked for the prompt's hidden state, the server sent none "
                           "(start SGLang with --enable-return-hidden-states)")
    return tuple(float(x) for x in row)


def _finish(value: Any) -> FinishReason:
    if isinstance(value, dict):  # SGLang: {"type": "stop" | "length" | "abort", "matched": ...}
        value = value.get("type")
    return value if value in ("stop", "length", "abort") else "stop"


TokenId = Annotated[int, pydantic.Field(ge=0, lt=2**31)]
Count = Annotated[int, pydantic.Field(ge=0, lt=2**31)]


class _Reply(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")


class _SGLangMeta(_Reply):
    prompt_tokens: Count
    finish_reason: dict[str, Any] | str | None = None
    output_token_logprobs: list[tuple[float, TokenId] | tuple[float, TokenId, Any]] | None = None
    """``[logprob, token_id, text]`` triples (the text is None unless asked for)."""
    cached_tokens: Count | None = None
    id: str | None = None
    hidden_states: list[Any] | None = None
    """With ``return_hidden_states``: rows of the positions the server computed (the prompt's
    uncached part, nested as one block or flat, then one per generated token)."""


class _SGLangGenerate(_Reply):
    text: str
    output_ids: list[TokenId] | None = None
    meta_info: _SGLangMeta


class _ChatMessage(_Reply):
    content: str | None = None


class _ChatLogprob(_Reply):
    logprob: float


class _ChatLogprobs(_Reply):
    content: list[_ChatLogprob] | None = None


class _TextLogprobs(_Reply):
    token_logprobs: list[float] | None = None


class _Choice(_Reply):
    token_ids: list[TokenId] | None = None
    finish_reason: str | None = None

    def output(self) -> tuple[str, list[float] | None]:
        """The generated text and its tokens' log-probabilities."""
        raise NotImplementedError


class _TextChoice(_Choice):
    text: str
    logprobs: _TextLogprobs | None = None

    def output(self) -> tuple[str, list[float] | None]:
        return self.text, None if self.logprobs is None else self.logprobs.token_logprobs


class _ChatChoice(_Choice):
    message: _ChatMessage
    logprobs: _ChatLogprobs | None = None

    def output(self) -> tuple[str, list[float] | None]:
        content = None if self.logprobs is None else self.logprobs.content
        return (self.message.content or "",
                None if content is None else [item.logprob for item in content])


class _PromptDetails(_Reply):
    cached_tokens: Count | None = None


class _Usage(_Reply):
    prompt_tokens: Count = 0
    prompt_tokens_details: _PromptDetails | None = None


C = TypeVar("C", bound=_Choice)


class _OpenAIReply(_Reply, Generic[C]):
    id: str | None = None
    choices: Annotated[list[C], pydantic.Field(min_length=1)]
    usage: _Usage | None = None


class SGLangBackend:
    """SGLang's native API: token ids in, token ids and log-probabilities out.

    ``POST /generate`` with ``input_ids`` (or ``text``), ``sampling_params`` and
    ``return_logprob``; the reply's ``meta_info`` carries ``output_token_logprobs``
    (``[logprob, token_id, text]`` triples), ``finish_reason``, ``prompt_tokens`` and
    ``cached_tokens`` (prompt tokens RadixAttention served from its cache).
    """

    accepts_token_ids = True
    native_tools = False

    def __init__(self, base_url: str, tokenizer: Any = None, **client_options: Any) -> None:
        self.http = HTTPClient(base_url, **client_options)
        self.tokenizer = tokenizer
        """Needed only to render chat messages; token-id prompts need none."""

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        sampling: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_tokens,
            "stop": list(params.stop),
            "no_stop_trim": True,  # keep "</tool_call>" in the text: the env parses it
        }
        if params.seed is not None:
            sampling["sampling_seed"] = params.seed
        if params.stop_token_ids:
            sampling["stop_token_ids"] = list(params.stop_token_ids)
        payload: dict[str, Any] = {"sampling_params": sampling, "return_logprob": True}
        if params.return_hidden_states:
            if params.max_tokens != 1:  # past one token, the rows go on with the generated ones
                raise ValueError("SGLang returns the prompt's hidden state for one-token requests only")
            payload["return_hidden_states"] = True  # the HTTP contract's bool (its "last" is not)
        if is_token_prompt(prompt):
            payload["input_ids"] = [int(t) for t in prompt]  # type: ignore[union-attr]
        else:
            if self.tokenizer is None:
                raise BackendError("SGLangBackend needs a tokenizer to send chat messages")
            payload["text"] = self.tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True
            )
        body = await self.http.post_checked("/generate", payload, _SGLangGenerate)
        meta = body.meta_info
        triples = meta.output_token_logprobs or []
        ids = body.output_ids or [t[1] for t in triples]
        return Completion(
            text=body.text,
            token_ids=list(ids),
            logprobs=[t[0] for t in triples] if len(triples) == len(ids) else None,
            finish_reason=_finish(meta.finish_reason),
            prompt_tokens=meta.prompt_tokens,
            cached_tokens=meta.cached_tokens,
            meta={"id": meta.id},
            prompt_state=_prompt_state(meta) if params.return_hidden_states else None,
        )

    async def healthy(self) -> bool:
        return await self.http.get_ok("/health")

    async def aclose(self) -> None:
        await self.http.aclose()


class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, SGLang ``/v1``).

    ``chat=False`` uses ``/v1/completions``, which accepts token-id prompts, so branching sends
    exact prefixes; vLLM's ``return_token_ids`` gives the generated ids back. ``chat=True`` uses
    ``/v1/chat/completions`` for servers that only render their own template: prompts are then
    messages and prefix reuse is up to the server. Cached prompt tokens are read from
    ``usage.prompt_tokens_details.cached_tokens`` (vLLM: ``--enable-prompt-tokens-details``).
    """

    native_tools = False

    def __init__(self, base_url: str, model: str, *, chat: bool = False, **client_options: Any) -> None:
        root = base_url.rstrip("/")
        self.http = HTTPClient(root if root.endswith("/v1") else root + "/v1", **client_options)
        self.model = model
        self.chat = chat
        self.accepts_token_ids = not chat

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "include_stop_str_in_output": True,  # vLLM extension: keep "</tool_call>"
            "skip_special_tokens": False,
            "return_token_ids": True,  # vLLM extension
            "logprobs": True if self.chat else 1,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop_token_ids:
            payload["stop_token_ids"] = list(params.stop_token_ids)  # vLLM extension
        token_prompt = is_token_prompt(prompt)
        if self.chat:
            if token_prompt:
                raise BackendError("a chat-completions backend takes messages, not token ids")
            payload["messages"] = list(prompt)
            path = "/chat/completions"
        else:
            if not token_prompt:
                raise BackendError("a completions backend takes token ids; use chat=True for messages")
            payload["prompt"] = [int(t) for t in prompt]  # type: ignore[union-attr]
            path = "/completions"
        shape = _OpenAIReply[_ChatChoice] if self.chat else _OpenAIReply[_TextChoice]
        reply = await self.http.post_checked(path, payload, shape)
        choice = reply.choices[0]
        text, logprobs = choice.output()
        usage = reply.usage or _Usage()
        details = usage.prompt_tokens_details or _PromptDetails()
        return Completion(
            text=text,
            token_ids=list(choice.token_ids or []),
            logprobs=logprobs,
            finish_reason=_finish(choice.finish_reason),
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=details.cached_tokens,
            meta={"id": reply.id},
        )

    async def healthy(self) -> bool:
        return await self.http.get_ok("/models")

    async def aclose(self) -> None:
        await self.http.aclose()

