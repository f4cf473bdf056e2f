"""Inference servers over HTTP: SGLang's native ``/generate`` and any OpenAI-compatible server
(vLLM, SGLang's ``/v1``), through one retrying ``httpx.AsyncClient``.

Transient failures (connection refused or reset, timeouts, 5xx, a body cut short) are retried with
exponential backoff; after the last attempt, or at once for a 4xx, the call raises
:class:`BackendError` saying what went wrong, so a rollout is marked failed instead of vanishing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from trace_agents.backends.base import (
    BackendError,
    Completion,
    FinishReason,
    Prompt,
    SamplingParams,
    is_token_prompt,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff_s: float = 0.5
    """First wait; doubled at each retry, with up to 25% jitter."""
    max_backoff_s: float = 8.0


class _Transient(Exception):
    """A failure worth retrying."""


class HTTPClient:
    """POST JSON with explicit timeouts, bounded concurrency and retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        max_concurrency: int = 64,
        retry: RetryPolicy = RetryPolicy(),
        api_key: str | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency),
            headers=headers,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self.retries = 0
        """Retries made so far (all calls): a health figure for logs."""

    async def post(self, path: str, payload: Mapping[str, Any], *, expect_json: bool = True) -> dict[str, Any]:
        """POST with retries; ``expect_json=False`` for admin endpoints that answer in plain text
        (their reply comes back as ``{"text": ...}``)."""
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                self.retries += 1
                wait = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(wait * (1 + 0.25 * random.random()))
            try:
                async with self._slots:
                    return await self._post_once(path, payload, expect_json)
            except _Transient as exc:
                last = exc.__cause__ or exc
        raise BackendError(
            f"POST {self.base_url}{path} failed after {self.retry.attempts} attempts: {last!r}"
        )

    async def _post_once(self, path: str, payload: Mapping[str, Any], expect_json: bool) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=payload)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise _Transient() from exc
        if response.status_code >= 500:
            raise _Transient() from BackendError(
                f"HTTP {response.status_code}: {response.text[:200]}"
            )
        if response.status_code >= 400:
            raise BackendError(
                f"POST {self.base_url}{path} was refused: HTTP {response.status_code}: "
                f"{response.text[:500]}"
            )
        if not expect_json:
            return {"text": response.text}
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Transient() from BackendError(f"response is not complete JSON: {exc}")
        if not isinstance(body, dict):
            raise _Transient() from BackendError(f"response is not a JSON object: {body!r:.200}")
        return body

    async def get_ok(self, path: str) -> bool:
        try:
            return (await self._client.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


def _finish(value: Any) -> FinishReason:
    if isinstance(value, dict):  # SGLang: {"type": "stop" | "length" | "abort", "matched": ...}
        value = value.get("type")
    return value if value in ("stop", "length", "abort") else "stop"


def _shape_error(what: str, body: Mapping[str, Any], exc: Exception) -> BackendError:
    return BackendError(f"unexpected {what} response ({exc!r}): {json.dumps(body)[:300]}")


class SGLangBackend:
    """SGLang's native API: token ids in, token ids and log-probabilities out.

    ``POST /generate`` with ``input_ids`` (or ``text``), ``sampling_params`` and
    ``return_logprob``; the reply's ``meta_info`` carries ``output_token_logprobs``
    (``[logprob, token_id, text]`` triples), ``finish_reason``, ``prompt_tokens`` and
    ``cached_tokens`` (prompt tokens RadixAttention served from its cache).
    """

    accepts_token_ids = True

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
        payload: dict[str, Any] = {"sampling_params": sampling, "return_logprob": True}
        if is_token_prompt(prompt):
            payload["input_ids"] = [int(t) for t in prompt]  # type: ignore[union-attr]
        else:
            if self.tokenizer is None:
                raise BackendError("SGLangBackend needs a tokenizer to send chat messages")
            payload["text"] = self.tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True
            )
        body = await self.http.post("/generate", payload)
        try:
            meta = body["meta_info"]
            triples = meta.get("output_token_logprobs") or []
            ids = body.get("output_ids") or [int(t[1]) for t in triples]
            logprobs = [float(t[0]) for t in triples] if len(triples) == len(ids) else None
            return Completion(
                text=body["text"],
                token_ids=[int(t) for t in ids],
                logprobs=logprobs,
                finish_reason=_finish(meta.get("finish_reason")),
                prompt_tokens=int(meta["prompt_tokens"]),
                cached_tokens=meta.get("cached_tokens"),
                meta={"id": meta.get("id")},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _shape_error("SGLang /generate", body, exc) from None

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
        body = await self.http.post(path, payload)
        try:
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            text = choice["message"]["content"] if self.chat else choice["text"]
            return Completion(
                text=text or "",
                token_ids=[int(t) for t in choice.get("token_ids") or []],
                logprobs=_openai_logprobs(choice.get("logprobs"), chat=self.chat),
                finish_reason=_finish(choice.get("finish_reason")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                cached_tokens=details.get("cached_tokens"),
                meta={"id": body.get("id")},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _shape_error(f"OpenAI {path}", body, exc) from None

    async def healthy(self) -> bool:
        return await self.http.get_ok("/models")

    async def aclose(self) -> None:
        await self.http.aclose()


def _openai_logprobs(logprobs: Any, *, chat: bool) -> list[float] | None:
    if not logprobs:
        return None
    if chat:
        return [float(item["logprob"]) for item in logprobs.get("content") or []]
    values = logprobs.get("token_logprobs")
    return None if values is None else [float(v) for v in values]
