"""A verl rollout-server actor backed by the stand-in inference server (SGLang can't run here).

verl's ``LLMServerClient`` asks its load balancer for a server actor and calls
``generate.remote(request_id=..., prompt_ids=..., sampling_params=..., image_data=..., video_data=...)``,
expecting a ``TokenOutput``; verl's SGLang actor (``async_sglang_server.py``) answers from the
engine. This actor answers from ``trace_agents.testing.standin_server`` over SGLang's ``/generate``
protocol, through trace-rl's own SGLang client, and reports the weights version in
``extra_fields["global_steps"]`` as verl's servers do.
"""

from __future__ import annotations

from typing import Any

import ray
from verl.workers.rollout.replica import TokenOutput

from trace_agents.backends import SamplingParams
from trace_agents.backends.http import SGLangBackend


@ray.remote(num_cpus=0)
class StandinReplica:
    def __init__(self, url: str, global_steps: int) -> None:
        self.backend = SGLangBackend(url, timeout_s=120.0)
        self.global_steps = global_steps
        self.requests: list[dict[str, Any]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data=None, video_data=None, **_: Any) -> TokenOutput:
        self.requests.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        params = SamplingParams(temperature=float(sampling_params.get("temperature", 1.0)),
                                top_p=float(sampling_params.get("top_p", 1.0)),
                                max_tokens=int(sampling_params["max_tokens"]),
                                stop=tuple(sampling_params.get("stop") or ()))
        out = await self.backend.generate(list(prompt_ids), params)
        return TokenOutput(token_ids=out.token_ids, log_probs=out.logprobs,
                           stop_reason="length" if out.finish_reason == "length" else "completed",
                           extra_fields={"global_steps": self.global_steps, "num_cached_tokens": out.cached_tokens})

    def served(self) -> list[dict[str, Any]]:
        return self.requests
