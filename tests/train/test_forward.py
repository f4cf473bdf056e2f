"""The shared-prefix forward is the plain padded forward, in values and in gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_agents.models import tiny_qwen3
from trace_agents.train.forward import common_prefix_length, token_logprobs
from trace_agents.train.update import collate

MODEL, _ = tiny_qwen3(seed=3)
MODEL.train()  # as in the update; the tiny Qwen3 has no dropout
VOCAB = MODEL.config.vocab_size


@st.composite
def batches(draw):
    """Rows that share a prefix of some length, then diverge, with ragged lengths."""
    prefix = draw(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=40))
    rows = draw(st.lists(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=12),
                         min_size=1, max_size=5))
    return [(prefix + tail, [1.0] * (len(prefix) + len(tail)), [0.5] * (len(prefix) + len(tail)))
            for tail in rows]


@settings(max_examples=25, deadline=None)
@given(batches())
def test_shared_prefix_matches_the_plain_forward(rows):
    batch = collate(rows, pad_id=0)
    plain = token_logprobs(MODEL, batch.tokens, batch.attention, min_shared=10**9)
    shared = token_logprobs(MODEL, batch.tokens, batch.attention, min_shared=1)
    valid = batch.attention.bool()
    assert shared.shape == plain.shape
    torch.testing.assert_close(shared[valid], plain[valid], atol=2e-5, rtol=1e-4)


def _grads(rows, min_shared):
    MODEL.zero_grad(set_to_none=True)
    batch = collate(rows, pad_id=0)
    logp = token_logprobs(MODEL, batch.tokens, batch.attention, min_shared=min_shared)
    (logp * batch.mask * torch.linspace(-1, 1, logp.shape[1])).sum().backward()
    return {name: p.grad.clone() for name, p in MODEL.named_parameters() if p.grad is not None}


def test_gradients_reach_the_prefix_through_the_cache():
    prefix = list(range(5, 45))
    rows = [(prefix + tail, [0.0] * 40 + [1.0] * len(tail), [1.0] * (40 + len(tail)))
            for tail in ([7, 8, 9], [10, 11], [12, 13, 14, 15, 16])]
    plain, shared = _grads(rows, 10**9), _grads(rows, 1)
    assert plain.keys() == shared.keys()
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize(("rows", "expected"), [
    ([[1, 2, 3], [1, 2, 3]], 2),        # identical rows still keep one token each
    ([[1, 2, 3, 4], [1, 2, 9]], 2),
    ([[1, 2], [3, 4]], 0),
    ([[1, 2, 3, 4, 5], [1, 2]], 1),     # capped by the shortest row
])
def test_common_prefix_length(rows, expected):
    batch = collate([(r, [1.0] * len(r), [0.0] * len(r)) for r in rows], pad_id=0)
    assert common_prefix_length(batch.tokens, batch.attention) == expected


def test_prefix_once_pays_by_length_on_cpu_and_by_work_saved_elsewhere():
    """On CPU a prefix of MIN_SHARED tokens is enough; on a GPU the padded forward is nearly free,
    so the prefix must save (rows - 1) x tokens x parameters >= GPU_MIN_SAVED (a meta-device model
    stands in for a GPU one: only where the parameters live and how many matter)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from trace_agents.train.forward import GPU_MIN_SAVED, MIN_SHARED, prefix_once_pays

    assert prefix_once_pays(MODEL, 2, MIN_SHARED) and not prefix_once_pays(MODEL, 2, MIN_SHARED - 1)
    assert not prefix_once_pays(MODEL, 1, 10_000)
    with torch.device("meta"):
        big = Qwen3ForCausalLM(Qwen3Config(vocab_size=1000, hidden_size=1024, intermediate_size=4096,
                                           num_hidden_layers=8, num_attention_heads=8,
                                           num_key_value_heads=4, head_dim=128))
    params = sum(p.numel() for p in big.parameters())
    enough = int(GPU_MIN_SAVED // (7 * params)) + 1  # tokens of prefix that 8 rows need
    assert prefix_once_pays(big, 8, enough) and not prefix_once_pays(big, 8, enough - 1)
    assert not prefix_once_pays(big, 8, MIN_SHARED)
