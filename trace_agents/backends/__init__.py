"""Inference backends behind one async interface (see :mod:`trace_agents.backends.base`).

HTTP engines (SGLang, vLLM, any OpenAI-compatible chat endpoint) import only ``httpx``; the
in-process transformers backend imports torch when it is built.
"""

from typing import Any

from trace_agents.backends.base import Backend, BackendError, Completion, SamplingParams
from trace_agents.backends.http import HTTPClient, OpenAIBackend, RetryPolicy, SGLangBackend
from trace_agents.backends.openai_chat import OpenAIChatBackend
from trace_agents.backends.scripted import ScriptedBackend

__all__ = [
    "Backend", "make_backend", "BackendError", "Completion", "HTTPClient", "OpenAIBackend", "OpenAIChatBackend",
    "RetryPolicy",
    "SGLangBackend", "SamplingParams", "ScriptedBackend",
]

def make_backend(
    kind: str, model: Any = None, tokenizer: Any = None, *, url: str | None = None,
    model_name: str = "", timeout_s: float = 120.0, max_concurrency: int = 8, api_key: str | None = None,
) -> Backend:
    """``hf`` (in process, sharing ``model``), ``sglang`` or ``vllm`` (a server at ``url``), or
    ``openai`` (any OpenAI-compatible chat endpoint at ``url`` with native tool calling, serving
    ``model_name``: evaluation only). ``api_key`` is sent as a bearer token to servers."""
    if kind == "hf":
        from trace_agents.backends.hf import HFBackend

        return HFBackend(model, tokenizer, max_batch=max_concurrency)
    if url is None:
        raise ValueError(f"backend {kind!r} needs a server url")
    options = {"timeout_s": timeout_s, "max_concurrency": max_concurrency, "api_key": api_key}
    if kind == "sglang":
        return SGLangBackend(url, tokenizer, **options)
    if kind == "vllm":
        return OpenAIBackend(url, model_name, **options)
    if kind == "openai":
        return OpenAIChatBackend(url, model_name, **options)
    raise ValueError(f"unknown backend {kind!r}: use hf, sglang, vllm or openai")
