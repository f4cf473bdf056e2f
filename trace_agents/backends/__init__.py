"""Inference backends behind one async interface (see :mod:`trace_agents.backends.base`).

HTTP engines (SGLang, vLLM) import only ``httpx``; the in-process transformers backend imports
torch when it is built.
"""

from trace_agents.backends.base import Backend, BackendError, Completion, SamplingParams
from trace_agents.backends.http import HTTPClient, OpenAIBackend, RetryPolicy, SGLangBackend
from trace_agents.backends.scripted import ScriptedBackend

__all__ = [
    "Backend", "BackendError", "Completion", "HTTPClient", "OpenAIBackend", "RetryPolicy",
    "SGLangBackend", "SamplingParams", "ScriptedBackend",
]
