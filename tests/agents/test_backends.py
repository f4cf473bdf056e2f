"""Backends: the in-process sampler, the HTTP clients against the stand-in server, and faults."""

from __future__ import annotations

import asyncio

import pytest

from trace_agents.backends import (
    BackendError,
    OpenAIBackend,
    RetryPolicy,
    SamplingParams,
    ScriptedBackend,
    SGLangBackend,
)
from trace_agents.backends.hf import HFBackend
from trace_agents.react import ChatFormat

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01)


def _prompt(tokenizer, text: str = "What is 2 + 3?") -> list[int]:
    return ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": text}])


@pytest.mark.parametrize("max_batch_tokens", [16_384, 80])
def test_hf_batched_matches_one_at_a_time(tiny, max_batch_tokens):
    """Same tokens whether requests share a padded batch or are split into length groups."""
    model, tok = tiny
    prompts = [_prompt(tok, "x" * n) for n in (30, 1, 7)]

    async def run():
        backend = HFBackend(model, tok, max_batch_tokens=max_batch_tokens)
        alone = [await backend.generate(p, GREEDY) for p in prompts]
        together = await asyncio.gather(*(backend.generate(p, GREEDY) for p in prompts))
        await backend.aclose()
        return alone, together

    alone, together = asyncio.run(run())
    for a, b in zip(alone, together):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert len(a.token_ids) == 12 and a.finish_reason == "length"
        assert all(lp <= 0 for lp in a.logprobs)


def test_hf_seed_reproduces_and_stop_strings_end_generation(tiny):
    model, tok = tiny
    prompt = _prompt(tok)
    sampled = SamplingParams(temperature=1.0, max_tokens=20, seed=7)

    async def run():
        backend = HFBackend(model, tok)
        a = await backend.generate(prompt, sampled)
        b = await backend.generate(prompt, sampled)
        c = await backend.generate(prompt, sampled.with_seed(8))
        stop_at = tok.decode(a.token_ids[:3])
        d = await backend.generate(prompt, SamplingParams(1.0, 1.0, 20, (stop_at,), seed=7))
        return a, b, c, d, stop_at

    a, b, c, d, stop_at = asyncio.run(run())
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert d.finish_reason == "stop" and stop_at in d.text and len(d.token_ids) <= 3


def test_sglang_and_openai_clients_match_in_process(tiny, standin, fresh_faults):
    model, tok = tiny
    prompt = _prompt(tok, "Say something")

    async def run():
        local = await HFBackend(model, tok).generate(prompt, GREEDY)
        sglang = SGLangBackend(standin.url, retry=FAST_RETRY)
        openai = OpenAIBackend(standin.url, "standin", retry=FAST_RETRY)
        chat = OpenAIBackend(standin.url, "standin", chat=True, retry=FAST_RETRY)
        outs = [await sglang.generate(prompt, GREEDY), await openai.generate(prompt, GREEDY),
                await chat.generate([{"role": "user", "content": "Say something"}], GREEDY)]
        assert await sglang.healthy() and await openai.healthy()
        for b in (sglang, openai, chat):
            await b.aclose()
        return local, outs

    local, outs = asyncio.run(run())
    for out in outs:
        assert out.token_ids == local.token_ids
        assert out.logprobs == pytest.approx(local.logprobs, abs=1e-4)
        assert out.finish_reason == "length" and out.prompt_tokens == len(prompt)
    # the same prompt again: the stand-in's prefix cache serves all but the last prompt token
    assert outs[1].cached_tokens == len(prompt) - 1


def test_continuation_prompt_hits_the_prefix_cache(tiny, standin, fresh_faults):
    _, tok = tiny
    prompt = _prompt(tok, "A fresh question about caching")

    async def run():
        backend = SGLangBackend(standin.url, retry=FAST_RETRY)
        first = await backend.generate(prompt, GREEDY)
        observation = tok.encode("<tool_response>\n5\n</tool_response>")
        second = await backend.generate(prompt + first.token_ids + observation, GREEDY)
        await backend.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert first.cached_tokens < len(prompt) // 2
    assert second.cached_tokens == len(prompt) + len(first.token_ids)


@pytest.mark.parametrize("fault", ["error500", "truncate", "slow"])
def test_transient_faults_are_retried(tiny, standin, fresh_faults, fault):
    _, tok = tiny
    fresh_faults.inject(fault)

    async def run():
        # only the slow fault should outlast the timeout; a loaded 2-core CI machine can take a
        # second or more for an honest reply, so the others get plenty
        timeout = 3.0 if fault == "slow" else 60.0
        backend = SGLangBackend(standin.url, retry=FAST_RETRY, timeout_s=timeout)
        out = await backend.generate(_prompt(tok), GREEDY)
        retries = backend.http.retries
        await backend.aclose()
        return out, retries

    out, retries = asyncio.run(run())
    assert len(out.token_ids) == 12 and retries == 1
    assert fresh_faults.applied[-1] == fault


def test_persistent_failure_raises_a_clear_error(tiny, standin, fresh_faults):
    _, tok = tiny
    fresh_faults.inject("error500", times=3)

    async def run():
        backend = OpenAIBackend(standin.url, "standin", retry=FAST_RETRY)
        try:
            await backend.generate(_prompt(tok), GREEDY)
        finally:
            await backend.aclose()

    with pytest.raises(BackendError, match="after 3 attempts.*HTTP 500"):
        asyncio.run(run())


def test_bad_request_is_not_retried(standin, fresh_faults):
    async def run():
        backend = OpenAIBackend(standin.url, "standin", retry=FAST_RETRY)
        try:
            await backend.http.post("/completions", {"max_tokens": 3})
        finally:
            assert backend.http.retries == 0
            await backend.aclose()

    with pytest.raises(BackendError, match="refused: HTTP 400"):
        asyncio.run(run())


def test_unreachable_server_fails_after_retries():
    # the discard port: nothing listens there on loopback
    backend = SGLangBackend("http://127.0.0.1:9", retry=FAST_RETRY, connect_timeout_s=0.5)

    async def run():
        try:
            await backend.generate([1, 2, 3], GREEDY)
        finally:
            await backend.aclose()

    with pytest.raises(BackendError, match="after 3 attempts"):
        asyncio.run(run())


def test_scripted_backend_cuts_at_stop_and_tokenizes(tiny):
    _, tok = tiny
    backend = ScriptedBackend(lambda prompt, p: '<tool_call>{"name": "x"}</tool_call> trailing', tok)
    out = asyncio.run(backend.generate(_prompt(tok), SamplingParams(stop=("</tool_call>",))))
    assert out.text.endswith("</tool_call>") and tok.decode(out.token_ids) == out.text
