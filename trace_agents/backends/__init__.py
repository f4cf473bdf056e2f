"""Inference backends behind one async interface (see :mod:`trace_agents.backends.base`).

HTTP engines (SGLang, vLLM) import only ``httpx``; the in-process transformers backend imports
torch when it is built.
"""

from typing import Any

from trace_agents.backends.base import Backend, BackendError, Completion, SamplingParams
from trace_agents.backends.http import HTTPClient, OpenAIBackend, RetryPolicy, SGLangBackend
from trace_agents.backends.scripted import ScriptedBackend

__all__ = [
    "Backend", "make_backend", "BackendError", "Completion", "HTTPClient", "OpenAIBackend", "RetryPolicy",
    "SGLangBackend", "SamplingParams", "ScriptedBackend",
]

def make_backend(
    kind: str, model: Any = None, tokenizer: Any = None, *, url: str | None = None,
    model_name: str = "", timeout_s: float = 120.0, max_concurrency: int = 8,
) -> Backend:
    """``hf`` (in process, sharing ``model``), ``sglang`` or ``vllm`` (a server at ``url``)."""
    if kind == "hf":
        from trace_agents.backends.hf import HFBackend

        return HFBackend(model, tokenizer, max_batch=max_concurrency)
    if url is None:
        raise ValueError(f"backend {kind!r} needs a server url")
    options = {"timeout_s": timeout_s, "max_concurrency": max_concurrency}
    if kind == "sglang":
        return SGLangBackend(url, tokenizer, **options)
    if kind == "vllm":
        return OpenAIBackend(url, model_name, **options)
    raise ValueError(f"unknown backend {kind!r}: use hf, sglang or vllm")
