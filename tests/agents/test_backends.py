"""Backends: the in-process sampler, the HTTP clients against the stand-in server, and faults."""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import replace

import pytest

from tests import fuzz
from tests.hostile_http import SLACK
from trace_agents.backends import (
    BackendError,
    OpenAIBackend,
    RetryPolicy,
    SamplingParams,
    ScriptedBackend,
    SGLangBackend,
)
from trace_agents.backends.hf import HFBackend, HFEngine
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


def test_requests_joining_a_running_batch_each_complete_once_as_if_alone(tiny):
    """The engine steps back to back in its thread; requests that arrive together or at random
    moments (and wait for one of 3 rows) get exactly one completion each, with their tokens and
    log-probabilities of running alone."""
    model, tok = tiny
    rng = random.Random(0)
    requests = [(_prompt(tok, "x" * rng.randint(0, 20)),
                 SamplingParams(1.0, 1.0, rng.randint(1, 10), seed=i)) for i in range(8)]
    # the first four arrive together, so one of them waits for one of the 3 rows however fast the
    # engine steps (with every arrival random, an idle machine finished each before the next came)
    delays = [0.0] * 4 + [rng.uniform(0, 0.05) for _ in requests[4:]]
    alone = [HFEngine(model, tok).generate([r])[0] for r in requests]
    backend = HFBackend(model, tok, max_batch=3)
    calls: collections.Counter[int] = collections.Counter()
    submit = backend.engine.submit

    def counted(prompt, params, done):  # type: ignore[no-untyped-def]
        def once(result):  # type: ignore[no-untyped-def]
            calls[params.seed] += 1
            done(result)

        submit(prompt, params, once)

    backend.engine.submit = counted  # type: ignore[method-assign]

    async def one(request, delay):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)
        return await backend.generate(*request)

    async def run():  # type: ignore[no-untyped-def]
        try:
            return await asyncio.gather(*(one(r, d) for r, d in zip(requests, delays)))
        finally:
            await backend.aclose()

    together = asyncio.run(run())
    assert calls == dict.fromkeys(range(len(requests)), 1)
    assert backend.engine.stats["queued_steps"] > 0  # some waited for a row
    for a, b in zip(alone, together):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_hf_seed_reproduces_and_stop_strings_and_tokens_end_generation(tiny):
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
        e = await backend.generate(prompt, replace(sampled, stop_token_ids=(a.token_ids[3],)))
        return a, b, c, d, e, stop_at

    a, b, c, d, e, stop_at = asyncio.run(run())
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert d.finish_reason == "stop" and stop_at in d.text and len(d.token_ids) <= 3
    first = a.token_ids.index(a.token_ids[3]) + 1  # the stop token may come earlier too
    assert e.finish_reason == "stop" and e.token_ids == a.token_ids[:first]


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


def test_stop_token_ids_end_generation_on_every_backend(tiny, standin, fresh_faults):
    """A dialect's end-of-turn token that is not the model's eos ends the turn everywhere."""
    model, tok = tiny
    prompt = _prompt(tok, "Say something")

    async def run():
        local = HFBackend(model, tok)
        free = await local.generate(prompt, GREEDY)
        params = replace(GREEDY, stop_token_ids=(free.token_ids[4],))
        outs = [await local.generate(prompt, params)]
        for backend in (SGLangBackend(standin.url, retry=FAST_RETRY),
                        OpenAIBackend(standin.url, "standin", retry=FAST_RETRY)):
            outs.append(await backend.generate(prompt, params))
            await backend.aclose()
        return free, outs

    free, outs = asyncio.run(run())
    first = free.token_ids.index(free.token_ids[4]) + 1
    assert first < len(free.token_ids) and free.finish_reason == "length"
    for out in outs:
        assert out.token_ids == free.token_ids[:first] and out.finish_reason == "stop"


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


# ------------------------------------------------------------- hostile servers
SGLANG_REPLY = {"text": "hi", "output_ids": [5, 6],
                "meta_info": {"id": "a", "prompt_tokens": 3, "cached_tokens": 1,
                              "finish_reason": {"type": "stop", "matched": 6},
                              "output_token_logprobs": [[-0.5, 5, None], [-0.25, 6, None]]}}
COMPLETION_REPLY = {"id": "c", "choices": [{"text": "hi", "token_ids": [5, 6],
                                            "logprobs": {"token_logprobs": [-0.5, -0.25]},
                                            "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}}
CHAT_REPLY = {"id": "c", "choices": [{"message": {"role": "assistant", "content": "hi"},
                                      "logprobs": {"content": [{"logprob": -0.5}]},
                                      "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3}}
HOSTILE_TIMEOUT = 0.2
def _hostile_backend(kind: str, url: str, **options):
    options = {"retry": RetryPolicy(attempts=2, backoff_s=0.01), "timeout_s": HOSTILE_TIMEOUT,
               "total_timeout_s": 2 * HOSTILE_TIMEOUT, "max_reply_bytes": 256 * 1024, **options}
    if kind == "sglang":
        return SGLangBackend(url, **options), [1, 2, 3]
    if kind == "chat":
        return OpenAIBackend(url, "m", chat=True, **options), [{"role": "user", "content": "x"}]
    return OpenAIBackend(url, "m", **options), [1, 2, 3]


async def _generate_or_error(backend, prompt):
    try:
        out = await backend.generate(prompt, GREEDY)
    except BackendError as exc:
        return exc
    finally:
        await backend.aclose()
    assert isinstance(out.text, str) and all(isinstance(t, int) and t >= 0 for t in out.token_ids)
    assert out.logprobs is None or all(isinstance(x, float) for x in out.logprobs)
    assert isinstance(out.prompt_tokens, int) and out.finish_reason in ("stop", "length", "abort")
    return out


def test_any_reply_gives_a_completion_or_backend_error_within_the_deadline(hostile):
    from hypothesis import given, target
    from hypothesis import strategies as st

    from tests.hostile_http import plans, timed

    templates = {"sglang": SGLANG_REPLY, "completions": COMPLETION_REPLY, "chat": CHAT_REPLY}

    @fuzz.examples(80)
    @given(data=st.data(), kind=st.sampled_from(sorted(templates)))
    def run(data, kind):
        hostile.plan = data.draw(plans(templates[kind], drip_s=0.02))
        backend, prompt = _hostile_backend(kind, hostile.url)
        with timed() as took:
            asyncio.run(_generate_or_error(backend, prompt))
        target(took[0], label="seconds")  # steer the search towards slow replies
        assert took[0] < 2 * HOSTILE_TIMEOUT + SLACK, (kind, hostile.plan)

    run()


@pytest.mark.parametrize(("field", "value"), [
    (("meta_info",), "abc"), (("text",), 5), (("meta_info", "prompt_tokens"), "many"),
    (("output_ids",), [1, -2]), (("meta_info", "output_token_logprobs"), [["x", 5, None]]),
    (("meta_info",), None),
])
def test_wrong_types_are_a_clear_backend_error(hostile, field, value):
    """The issue's cases: ``meta_info: "abc"`` raised AttributeError, ``text: 5`` was taken."""
    import copy
    import json

    from tests.hostile_http import Plan

    reply = copy.deepcopy(SGLANG_REPLY)
    target = reply
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    hostile.plan = Plan(body=json.dumps(reply).encode())
    backend, prompt = _hostile_backend("sglang", hostile.url)
    before = hostile.requests
    error = asyncio.run(_generate_or_error(backend, prompt))
    assert isinstance(error, BackendError) and "unexpected reply" in str(error)
    assert ".".join(field) in str(error) and hostile.requests == before + 1  # not retried


@pytest.mark.parametrize("drip_head", [False, True])
def test_a_dripping_inference_server_is_cut_off_at_the_deadline(hostile, drip_head):
    """Each attempt ends at ``timeout_s``, the call with its retries at ``total_timeout_s``."""
    from tests.hostile_http import Plan, timed

    hostile.plan = Plan(body=b'{"text": "' + b"a" * 2000 + b'"}', drip_s=0.01, drip_head=drip_head)
    backend, prompt = _hostile_backend("sglang", hostile.url, timeout_s=0.3, total_timeout_s=0.7,
                                       retry=RetryPolicy(attempts=5, backoff_s=0.01))
    with timed() as took:
        error = asyncio.run(_generate_or_error(backend, prompt))
    assert isinstance(error, BackendError) and "after 3 attempts" in str(error)
    assert 0.65 < took[0] < 0.7 + SLACK


def test_an_endless_inference_reply_is_refused_at_the_cap(hostile):
    from tests.hostile_http import Plan, timed

    hostile.plan = Plan(body=b'{"text": "', endless=True)
    backend, prompt = _hostile_backend("completions", hostile.url, timeout_s=10.0,
                                       total_timeout_s=10.0, max_reply_bytes=1 << 20)
    with timed() as took:
        error = asyncio.run(_generate_or_error(backend, prompt))
    assert isinstance(error, BackendError) and "exceeds the limit" in str(error)
    assert took[0] < 2.0
