"""Prefix reuse in the in-process engine: the same tokens and log-probabilities with and without
it, continuations that compute almost none of their prefix, a store that keeps its byte bound,
and no reuse across a weight change."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_agents.backends import SamplingParams
from trace_agents.backends.hf import HFBackend, HFEngine, PrefixStore
from trace_agents.react import ChatFormat
from trace_agents.rollout import RolloutRunner
from trace_envs.calculator.env import CalculatorEnv


def _grow(model, tok, cache_bytes):
    """Two trees: 3 bare rollouts each, then 2 continuations from every first and second turn."""
    env = CalculatorEnv("arithmetic", max_turns=3, suite_options={"size": 8, "seed": 1})
    backend = HFBackend(model, tok, prefix_cache_bytes=cache_bytes)
    runner = RolloutRunner(backend, tokenizer=tok, seed=11,
                           sampling=SamplingParams(temperature=1.0, max_tokens=16))

    async def run():
        trees = [runner.new_tree(env, t.id) for t in env.tasks[:2]]
        await asyncio.gather(*(runner.rollouts(t, t.root, 3) for t in trees))
        branches = [(t, n) for t in trees for c in t.root.children for n in (c, c.children[0])
                    if not (n.handle.terminated or n.handle.truncated)]
        conts = await asyncio.gather(*(runner.rollouts(t, n, 2) for t, n in branches))
        await backend.aclose()
        return trees, [e for group in conts for e in group]

    trees, conts = asyncio.run(run())
    return trees, conts, backend.engine


def _turns(trees):
    return [n.handle for t in trees for n in list(t.nodes())[1:]]


def test_reuse_changes_no_token_or_logprob_and_continuations_compute_almost_nothing(tiny):
    model, tok = tiny
    plain_trees, plain_conts, plain = _grow(model, tok, 0)
    trees, conts, engine = _grow(model, tok, 1 << 28)
    plain_turns, turns = _turns(plain_trees), _turns(trees)
    assert len(turns) == len(plain_turns) > 20 and conts
    for a, b in zip(plain_turns, turns):
        assert a.action_ids == b.action_ids
        assert a.action_logprobs == pytest.approx(b.action_logprobs, abs=1e-4)
    assert plain.stats["cached_tokens"] == 0 and all(t.cached_tokens == 0 for t in plain_turns)
    assert engine.stats["prompt_tokens"] == plain.stats["prompt_tokens"]
    firsts = [e.leaf.path()[len(e.start.path())].handle for e in conts]
    prefix = sum(t.prompt_tokens for t in firsts)
    recomputed = sum(t.prompt_tokens - t.cached_tokens for t in firsts)
    assert recomputed <= 0.05 * prefix
    # later turns of an episode reuse the earlier turns: most of each prompt comes from the store
    deep = [t for t in turns if t.info["turn"] > 1]
    assert sum(t.cached_tokens for t in deep) > 0.8 * sum(t.prompt_tokens for t in deep)


def _kv(ids):
    """A fake one-layer KV whose values are the token ids (so a lookup's slice can be checked)."""
    t = torch.tensor(ids, dtype=torch.float32)[None, :, None]
    return [(t, t.clone())]


def _lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


sequences = st.lists(st.integers(0, 2), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(max_bytes=st.integers(8, 240),
       ops=st.lists(st.tuples(st.booleans(), sequences), min_size=1, max_size=30))
def test_store_keeps_its_bound_and_finds_the_longest_common_prefix(max_bytes, ops):
    store = PrefixStore(max_bytes)
    for insert, ids in ops:
        if insert:
            store.insert(ids, _kv(ids))
            if 8 * len(ids) <= max_bytes:  # 8 bytes per token: fits, so it is kept
                assert store.lookup(np.asarray(ids))[1] == len(ids)
        else:
            entry, n = store.lookup(np.asarray(ids))
            assert n == max((_lcp(list(e.ids), ids) for e in store._entries.values()), default=0)
            if entry is not None:
                assert entry.kv[0][0][0, :n, 0].tolist() == ids[:n]
        assert store.nbytes == sum(e.nbytes for e in store._entries.values()) <= max_bytes


def test_engine_respects_the_memory_bound(tiny):
    model, tok = tiny
    fmt = ChatFormat(tok)
    prompts = [fmt.prompt_ids([{"role": "user", "content": f"Question {i}: what is {i} + {i}?" * 3}])
               for i in range(6)]
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # K and V, fp32
    bound = per_token * max(len(p) for p in prompts) * 2  # about two prompts' worth
    engine = HFEngine(model, tok, prefix_cache_bytes=bound)
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=0)
    for p in prompts:
        engine.generate([(p, params)])
        assert 0 < engine.store.nbytes <= bound
    assert engine.store.evictions > 0 and len(engine.store) <= 2


def test_weights_changed_in_place_drop_the_cached_prefixes(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    prompt = ChatFormat(tok).prompt_ids([{"role": "user", "content": "What is 2 + 3?"}])
    params = SamplingParams(temperature=0.0, max_tokens=4)
    engine.generate([(prompt, params)])
    (again,) = engine.generate([(prompt, params)])
    assert again.cached_tokens == len(prompt) - 1
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # an optimizer step: the tensor changed in place
    (after,) = engine.generate([(prompt, params)])
    assert after.cached_tokens == 0 and after.token_ids == again.token_ids
