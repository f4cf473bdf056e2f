"""The policy's hidden states as predictor features (``predictor.kind: policy``): what the engines
return, and a sampler step that registers every text the allocator plans with."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.agents.test_sampler import calc  # noqa: F401  (fixture)
from tests.fuzz import examples
from trace_agents.backends.base import SamplingParams
from trace_agents.backends.hf import HFBackend
from trace_agents.backends.http import SGLangBackend
from trace_agents.policy_states import PROBE, PolicyStates
from trace_agents.rollout import RolloutRunner
from trace_agents.sampler import Candidate, TraceSampler
from trace_allocation.allocators import TreeAllocator
from trace_allocation.budget import Budget
from trace_allocation.predictors import PolicyStatePredictor
from trace_allocation.tree import backup_targets


def last_state(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].float().numpy()


async def states_of(backend, prompts, params=PROBE):
    try:
        return [np.asarray((await backend.generate(p, params)).prompt_state) for p in prompts]
    finally:
        await backend.aclose()


def test_the_engine_returns_its_prefills_prompt_state(tiny):
    """Cold, and from the prefix store (only the last token computed): the same state as a plain
    forward's last position; a turn's request (more tokens) returns it too."""
    model, tok = tiny
    prompt = [5, 17, 230, 41, 9, 77]
    longer = prompt + [12, 13]
    turn = SamplingParams(temperature=1.0, max_tokens=5, seed=1, return_hidden_states=True)
    got = asyncio.run(states_of(HFBackend(model, tok), [prompt, prompt, longer]))
    got.append(asyncio.run(states_of(HFBackend(model, tok), [longer], turn))[0])
    for ids, state in zip([prompt, prompt, longer, longer], got):
        np.testing.assert_allclose(state, last_state(model, ids), atol=1e-4)
    chunked = HFBackend(model, tok)
    chunked.engine.prefill_chunk = 4  # a prefill in two chunks: the state is the last one's
    np.testing.assert_allclose(asyncio.run(states_of(chunked, [longer]))[0], last_state(model, longer), atol=1e-4)
    plain = asyncio.run(HFBackend(model, tok).generate(prompt, SamplingParams(max_tokens=2)))
    assert plain.prompt_state is None  # not asked: nothing computed or sent


def test_sglang_returns_the_prompt_state_of_a_one_token_request(tiny, standin):
    model, tok = tiny
    prompt = [5, 17, 230, 41, 9, 77]
    [state] = asyncio.run(states_of(SGLangBackend(standin.url), [prompt]))
    np.testing.assert_allclose(state, last_state(model, prompt), atol=1e-4)
    asking_a_turn = SamplingParams(max_tokens=4, return_hidden_states=True)
    with pytest.raises(ValueError, match="one-token"):
        asyncio.run(states_of(SGLangBackend(standin.url), [prompt], asking_a_turn))


def test_unregistered_texts_are_a_clear_error(tiny):
    states = PolicyStates(HFBackend(*tiny))
    with pytest.raises(KeyError, match="no policy state registered"):
        states(["never seen"])


@pytest.mark.parametrize("engine", ["inprocess", "sglang"])
def test_a_step_registers_every_text_it_plans_with(tiny, standin, calc, engine):  # noqa: F811
    """Candidates are probed before Stage 1; the prefixes come free in process (each turn's
    prefill) and are probed on SGLang; the refit finds every backup target's state."""
    model, tok = tiny
    backend = HFBackend(model, tok) if engine == "inprocess" else SGLangBackend(standin.url)
    sampling = SamplingParams(temperature=1.0, max_tokens=12, return_hidden_states=engine == "inprocess")
    runner = RolloutRunner(backend, tokenizer=tok, seed=0, sampling=sampling)
    states = PolicyStates(backend)
    predictor = PolicyStatePredictor(states)
    allocator = TreeAllocator(predictor, continuations_per_root=1, m_min=2, m_max=2,
                              rng=np.random.default_rng(0))
    sampler = TraceSampler(runner, allocator, progress=False, states=states)
    candidates = [Candidate(calc, t.id) for t in calc.tasks[:6]]

    async def two_steps():
        try:
            return [await sampler.step(candidates, Budget.for_allocator(allocator, 6)) for _ in range(2)]
        finally:
            await backend.aclose()

    first, second = asyncio.run(two_steps())
    for result in (first, second):
        m = result.metrics
        assert m["cost_trajectory"] == pytest.approx(6.0)  # the head's certain outputs never starve it
        texts, _, _ = backup_targets(result.trees)
        assert states(texts).shape == (len(texts), model.config.hidden_size)
        if engine == "inprocess":
            assert m["state_free"] > 0 and m["state_probes"] >= len(candidates)
        else:
            assert m["state_free"] == 0 and m["state_probes"] > len(candidates)
        assert 0 <= m["state_share"] < 1
    assert predictor.penalty is not None  # refit after the first step, on the policy's states


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=3),
                           lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@examples(300)
@given(json_values)
def test_any_hidden_states_reply_is_a_state_or_a_clear_error(value):
    """Server replies are untrusted: whatever ``meta_info.hidden_states`` holds, the client gets the
    prompt's state (a flat row of numbers) or a BackendError, never another exception."""
    from trace_agents.backends.base import BackendError
    from trace_agents.backends.http import _prompt_state, _SGLangMeta

    try:
        meta = _SGLangMeta.model_validate({"prompt_tokens": 1, "hidden_states": value})
    except ValueError:  # pydantic refuses a non-list: the reply is reported as malformed
        return
    try:
        state = _prompt_state(meta)
    except BackendError:
        return
    assert state and all(isinstance(x, float) for x in state)


def test_nested_and_flat_prefill_rows_give_the_prompts_end():
    from trace_agents.backends.http import _prompt_state, _SGLangMeta

    rows = [[0.0, 1.0], [2.0, 3.0]]
    for layout in (rows, [rows]):
        assert _prompt_state(_SGLangMeta(prompt_tokens=2, hidden_states=layout)) == (2.0, 3.0)
