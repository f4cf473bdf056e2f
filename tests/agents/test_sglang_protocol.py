"""The SGLang client's requests, weight-sync calls and the stand-in's replies, checked against the
real SGLang's HTTP contract (its generated ``api_types`` and its server source, from the wheel)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_agents.backends.base import SamplingParams
from trace_agents.backends.http import SGLangBackend
from trace_agents.backends.sglang_protocol import ProtocolError, SGLangContract, find_wheel

pytest.importorskip("msgspec")
WHEEL = find_wheel()
pytestmark = pytest.mark.skipif(
    WHEEL is None or not WHEEL.exists(),
    reason="no SGLang wheel: scripts/install.sh downloads it to .cache/wheels (or set TRACE_RL_SGLANG_WHEEL)")


@pytest.fixture(scope="module")
def contract() -> SGLangContract:
    return SGLangContract(WHEEL)


class Recorder:
    """Wraps the backend's HTTP client: every (path, body, reply) the real client exchanged."""

    def __init__(self, backend: SGLangBackend) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        post = backend.http.post

        async def recorded(path: str, payload: Any, **kw: Any) -> dict[str, Any]:
            reply = await post(path, payload, **kw)
            self.calls.append((path, dict(payload), reply))
            return reply

        backend.http.post = recorded  # type: ignore[method-assign]


def _generate(backend: SGLangBackend, prompt: Any, params: SamplingParams) -> Any:
    async def go() -> Any:
        try:
            return await backend.generate(prompt, params)
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, stop=("</tool_call>", "</answer>"), seed=3),
    SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1, stop=()),
    SamplingParams(temperature=0.0, max_tokens=4, stop_token_ids=(0, 2)),
    SamplingParams(temperature=0.0, max_tokens=1, return_hidden_states=True),  # a policy-state probe
])
def test_generate_request_and_standin_reply_follow_the_contract(contract, standin, tiny, params) -> None:
    _, tokenizer = tiny
    backend = SGLangBackend(standin.url, tokenizer=tokenizer)
    recorder = Recorder(backend)
    _generate(backend, [1, 2, 3, 4], params)
    [(path, body, reply)] = recorder.calls
    assert path == "/generate"
    contract.check_generate_request(body)
    contract.check_generate_response(reply)


def test_a_chat_prompt_is_sent_as_text(contract, standin, tiny) -> None:
    _, tokenizer = tiny
    backend = SGLangBackend(standin.url, tokenizer=tokenizer)
    recorder = Recorder(backend)
    _generate(backend, [{"role": "user", "content": "2 + 2?"}], SamplingParams(max_tokens=3))
    [(_, body, reply)] = recorder.calls
    assert "text" in body and "input_ids" not in body
    contract.check_generate_request(body)
    contract.check_generate_response(reply)


def test_weight_sync_calls_follow_the_contract(contract, standin, tiny, tmp_path: Path) -> None:
    from trace_agents.train.weight_sync import sync_weights

    model, tokenizer = tiny
    backend = SGLangBackend(standin.url, tokenizer=tokenizer)
    recorder = Recorder(backend)

    async def go() -> str:
        try:
            return await sync_weights(backend, model, tmp_path / "weights")
        finally:
            await backend.aclose()

    assert asyncio.run(go()) == "sglang"
    assert [p for p, _, _ in recorder.calls] == ["/update_weights_from_disk", "/flush_cache"]
    (_, disk, _), (_, flush, _) = recorder.calls
    contract.check_admin_request("/update_weights_from_disk", disk, "UpdateWeightFromDiskReqInput")
    contract.check_admin_request("/flush_cache", flush, None)


def test_the_checks_can_fail(contract) -> None:
    ok = {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 4}, "return_logprob": True}
    contract.check_generate_request(ok)
    with pytest.raises(ProtocolError, match="unknown field `max_tokens`"):
        contract.check_generate_request({**ok, "sampling_params": {"max_tokens": 4}})
    with pytest.raises(ProtocolError, match="keys SGLang ignores: \\['logprobs'\\]"):
        contract.check_generate_request({**ok, "logprobs": True})
    with pytest.raises(ProtocolError, match="contract"):
        contract.check_generate_request({**ok, "input_ids": "1 2"})
    reply = {"text": "x", "output_ids": [5], "meta_info": {"id": "a", "prompt_tokens": 2,
                                                            "finish_reason": {"type": "length", "length": 1}}}
    contract.check_generate_response(reply)
    with pytest.raises(ProtocolError, match="meta_info.tokens"):
        contract.check_generate_response({**reply, "meta_info": {**reply["meta_info"], "tokens": 3}})
    with pytest.raises(ProtocolError, match="missing required field 'model_path'"):
        contract.check_admin_request("/update_weights_from_disk", {"path": "/w"}, "UpdateWeightFromDiskReqInput")
    with pytest.raises(ProtocolError, match="no route"):
        contract.check_route("/update_weights", "POST")


@settings(max_examples=40, deadline=None)
@given(temperature=st.floats(0, 2), top_p=st.floats(0.01, 1), max_tokens=st.integers(1, 4096),
       stop=st.lists(st.text(min_size=1, max_size=8), max_size=3), seed=st.none() | st.integers(0, 2**31))
def test_any_sampling_params_make_a_valid_request(contract, temperature, top_p, max_tokens, stop, seed) -> None:
    """The request body the client builds, for any sampling settings (no server needed)."""
    sent: list[dict[str, Any]] = []
    backend = SGLangBackend("http://127.0.0.1:9")

    async def fake_post(path: str, payload: Any, **kw: Any) -> dict[str, Any]:
        sent.append(dict(payload))
        return {"text": "", "output_ids": [], "meta_info": {"prompt_tokens": 1, "finish_reason": None}}

    backend.http.post = fake_post  # type: ignore[method-assign]
    _generate(backend, [1], SamplingParams(temperature, top_p, max_tokens, tuple(stop), seed))
    contract.check_generate_request(sent[0])
