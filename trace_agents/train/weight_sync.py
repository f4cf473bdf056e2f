"""Give the inference engine the policy's new weights after an update.

- In process (:class:`HFBackend`): the backend samples with the very module the trainer updates,
  so there is nothing to send (a backend holding another module gets a state-dict copy); its
  prefix cache, now stale, is dropped.
- SGLang: the weights are written as safetensors to a directory and the server is asked to load
  them (``POST /update_weights_from_disk``), then to drop its now-stale prefix cache
  (``POST /flush_cache``).
- vLLM: the server must have been started on that same directory with ``VLLM_SERVER_DEV_MODE=1``;
  it reloads from disk through ``POST /collective_rpc`` (method ``reload_weights``) and resets its
  prefix cache (``POST /reset_prefix_cache``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def export_weights(model: torch.nn.Module, directory: Path) -> Path:
    """Config + safetensors in Hugging Face layout (tied weights written once)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


async def sync_weights(backend: Any, model: torch.nn.Module, directory: Path) -> str:
    """Push the weights; returns how (``in-process``, ``sglang`` or ``vllm``)."""
    from trace_agents.backends.hf import HFBackend
    from trace_agents.backends.http import HTTPClient, OpenAIBackend, SGLangBackend

    if isinstance(backend, HFBackend):
        if backend.model is not model:
            backend.load_weights(model.state_dict())
        backend.flush_cache()
        return "in-process"
    export_weights(model, directory)
    if isinstance(backend, SGLangBackend):
        await backend.http.post("/update_weights_from_disk", {"model_path": str(directory)})
        await backend.http.post("/flush_cache", {}, expect_json=False)
        return "sglang"
    if isinstance(backend, OpenAIBackend):
        admin = HTTPClient(backend.http.base_url.removesuffix("/v1"))  # dev endpoints: no /v1
        try:
            await admin.post("/collective_rpc", {"method": "reload_weights"})
            await admin.post("/reset_prefix_cache", {}, expect_json=False)
        finally:
            await admin.aclose()
        return "vllm"
    raise TypeError(f"no weight sync for backend {type(backend).__name__}")
