"""Weight sync reaches the engine: in process, and over SGLang's and vLLM's HTTP update APIs
(served by the stand-in server, which loads what the trainer exported)."""

import asyncio

import torch

from trace_agents.backends.hf import HFBackend
from trace_agents.backends.http import OpenAIBackend, SGLangBackend
from trace_agents.models import tiny_qwen3
from trace_agents.testing.standin_server import StandinServer
from trace_agents.train.weight_sync import sync_weights


def trained():
    model, tok = tiny_qwen3()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return model, tok


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_in_process_shares_or_copies():
    model, tok = trained()
    assert asyncio.run(sync_weights(HFBackend(model, tok), model, None)) == "in-process"
    other = tiny_qwen3()[0]
    assert not same(other, model)
    assert asyncio.run(sync_weights(HFBackend(other, tok), model, None)) == "in-process"
    assert same(other, model)


def test_in_process_sync_drops_the_stale_prefix_cache():
    from trace_agents.backends.base import SamplingParams

    model, tok = trained()
    backend = HFBackend(model, tok)
    asyncio.run(backend.generate(list(range(5, 40)), SamplingParams(temperature=0.0, max_tokens=4)))
    assert backend.engine.store.nbytes > 0
    asyncio.run(sync_weights(backend, model, None))
    assert backend.engine.store.nbytes == 0


def test_sglang_loads_the_exported_weights_and_flushes(tmp_path):
    model, tok = trained()
    server_model = tiny_qwen3()[0]
    with StandinServer(server_model, tok) as server:
        server.cache.insert([1, 2, 3])

        async def go():
            backend = SGLangBackend(server.url, tok)
            try:
                return await sync_weights(backend, model, tmp_path / "w")
            finally:
                await backend.aclose()

        assert asyncio.run(go()) == "sglang"
        assert same(server_model, model) and server.cache.match([1, 2, 3]) == 0


def test_vllm_reloads_from_its_model_directory(tmp_path):
    model, tok = trained()
    server_model = tiny_qwen3()[0]
    with StandinServer(server_model, tok) as server:
        server.standin.model_path = str(tmp_path / "served")

        async def go():
            backend = OpenAIBackend(server.url, "standin")
            try:
                return await sync_weights(backend, model, tmp_path / "served")
            finally:
                await backend.aclose()

        assert asyncio.run(go()) == "vllm"
        assert same(server_model, model) and server.standin.weight_updates == 1
