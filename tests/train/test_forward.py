"""The prefix-once and packed (tree-mask) forwards are the plain padded forward, in values and in
gradients; the packed trie's mask lets a token see its ancestors only."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_agents.models import tiny_qwen3
from trace_agents.train.forward import choose_layout, common_prefix_length, layout_flops, token_logprobs
from trace_agents.train.packing import pack
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


def _grads(rows, layout):
    MODEL.zero_grad(set_to_none=True)
    batch = collate(rows, pad_id=0)
    logp = token_logprobs(MODEL, batch.tokens, batch.attention, layout=layout)
    (logp * batch.mask * torch.linspace(-1, 1, logp.shape[1])).sum().backward()
    return {name: p.grad.clone() for name, p in MODEL.named_parameters() if p.grad is not None}


def test_gradients_reach_the_prefix_through_the_cache():
    prefix = list(range(5, 45))
    rows = [(prefix + tail, [0.0] * 40 + [1.0] * len(tail), [1.0] * (40 + len(tail)))
            for tail in ([7, 8, 9], [10, 11], [12, 13, 14, 15, 16])]
    plain, shared = _grads(rows, "padded"), _grads(rows, "prefix_once")
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


@st.composite
def trees(draw):
    """Rows as a rollout tree's: a shared prompt, bare rollouts, and continuations that copy an
    earlier row up to a branch point and diverge (ragged, several first tokens possible)."""
    prompt = draw(st.lists(st.integers(1, VOCAB - 1), min_size=0, max_size=30))
    tail = st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=10)
    rows = [prompt + draw(tail) for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(0, 4))):
        parent = rows[draw(st.integers(0, len(rows) - 1))]
        cut = draw(st.integers(0, len(parent)))
        rows.append(parent[:cut] + draw(tail))
    return [(r, [1.0] * len(r), [0.5] * len(r)) for r in rows]


@pytest.mark.parametrize("layout", ["prefix_once", "packed"])
@settings(max_examples=30, deadline=None)
@given(rows=st.one_of(batches(), trees()))
def test_every_layout_matches_the_plain_forward(layout, rows):
    batch = collate(rows, pad_id=0)
    plain = token_logprobs(MODEL, batch.tokens, batch.attention, layout="padded")
    other = token_logprobs(MODEL, batch.tokens, batch.attention, layout=layout)
    valid = batch.attention.bool()
    valid[:, 0] = False  # position 0 has no prediction
    assert other.shape == plain.shape
    torch.testing.assert_close(other[valid], plain[valid], atol=2e-5, rtol=1e-4)
    if layout == "packed":  # nothing is predicted past a row's end
        assert (other[~batch.attention.bool()] == 0).all()


@settings(max_examples=15, deadline=None)
@given(trees())
def test_packed_gradients_match_the_plain_forward(rows):
    plain, packed = _grads(rows, "padded"), _grads(rows, "packed")
    assert plain.keys() == packed.keys()
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], atol=2e-5, rtol=1e-3, msg=name)


@settings(max_examples=60, deadline=None)
@given(trees())
def test_the_tree_mask_shows_a_token_its_ancestors_only(rows):
    batch = collate(rows, pad_id=0)
    packed = pack(batch.tokens, batch.attention)
    paths = []  # each node's token path, from its parent's
    for q in range(packed.nodes):
        p = int(packed.parent[q])
        paths.append((paths[p] if p >= 0 else ()) + (int(packed.tokens[q]),))
    assert len(set(paths)) == packed.nodes  # every distinct prefix once
    allowed = packed.ancestors()
    for q in range(packed.nodes):
        for k in range(packed.nodes):
            assert bool(allowed[q, k]) == (paths[q][: len(paths[k])] == paths[k])
        assert int(packed.depth[q]) == len(paths[q]) - 1
    for r, (ids, _, _) in enumerate(rows):  # every row is read back from its nodes
        assert paths[int(packed.index[r, len(ids) - 1])] == tuple(ids)


def test_eager_attention_takes_the_additive_mask_and_others_fall_back_to_padding(monkeypatch):
    rows = [([5, 6, 7, 8], [1.0] * 4, [0.0] * 4), ([5, 6, 9], [1.0] * 3, [0.0] * 3)]
    batch = collate(rows, pad_id=0)
    plain = token_logprobs(MODEL, batch.tokens, batch.attention, layout="padded")
    valid = batch.attention.bool()
    monkeypatch.setattr(MODEL.config, "_attn_implementation", "eager")
    eager = token_logprobs(MODEL, batch.tokens, batch.attention, layout="packed")
    torch.testing.assert_close(eager[valid], plain[valid], atol=2e-5, rtol=1e-4)
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("custom_kernel", sdpa_attention_forward)  # a kernel packing does not know
    monkeypatch.setattr(MODEL.config, "_attn_implementation", "custom_kernel")
    monkeypatch.setattr("trace_agents.train.forward.packed_logprobs", lambda *a: pytest.fail("packed ran"))
    assert choose_layout(MODEL, batch.tokens, batch.attention) != "packed"
    fallback = token_logprobs(MODEL, batch.tokens, batch.attention, layout="packed")
    torch.testing.assert_close(fallback, plain)


def test_bfloat16_packed_stays_within_a_stated_bound_of_padded():
    """Under bf16 autocast both layouts round differently; the bound docs/training.md states."""
    from trace_agents.models import autocast

    rows = [(list(range(3, 40)) + tail, [1.0] * (37 + len(tail)), [0.0] * (37 + len(tail)))
            for tail in ([7, 8, 9, 10], [11, 12], [7, 8, 13, 14, 15])]
    batch = collate(rows, pad_id=0)
    valid = batch.attention.bool()
    with torch.no_grad(), autocast(MODEL, torch.bfloat16):
        plain = token_logprobs(MODEL, batch.tokens, batch.attention, layout="padded")
        packed = token_logprobs(MODEL, batch.tokens, batch.attention, layout="packed")
    assert float((packed - plain)[valid].abs().max()) <= 0.02


def test_packing_is_chosen_where_it_saves_work():
    """A tree whose rows share long prefixes beyond the common one packs; rows with nothing in
    common stay padded; the estimate counts each distinct prefix once."""
    shared, branch = list(range(3, 43)), list(range(50, 90))
    tree = [shared + branch + [t] * 10 for t in range(100, 106)] + [shared + [106] * 50]
    batch = collate([(r, [1.0] * len(r), [0.0] * len(r)) for r in tree], pad_id=0)
    flops = layout_flops(MODEL, batch.tokens, batch.attention)
    assert flops["packed"] < flops["prefix_once"] < flops["padded"]
    assert choose_layout(MODEL, batch.tokens, batch.attention) == "packed"
    apart = collate([([t] * 20, [1.0] * 20, [0.0] * 20) for t in (5, 6, 7)], pad_id=0)
    assert choose_layout(MODEL, apart.tokens, apart.attention) == "padded"


def test_an_unknown_layout_is_refused():
    batch = collate([([1, 2], [1.0] * 2, [0.0] * 2)], pad_id=0)
    with pytest.raises(ValueError, match="layout must be one of"):
        token_logprobs(MODEL, batch.tokens, batch.attention, layout="sparse")
