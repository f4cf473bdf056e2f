"""A Stage 1 guarded against a predictor without skill (`SkillShrunk`, `TreeAllocator(min_prompts=)`),
and the ranking metrics the replay world reports (AUC, Spearman, Brier skill)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation.allocators import TreeAllocator
from trace_allocation.budget import Budget
from trace_allocation.predictors import (
    OraclePredictor,
    SkillShrunk,
    auc,
    brier_skill,
    spearman,
)
from trace_allocation.predictors.calibration import average_ranks
from trace_allocation.tree import TURN_MARK

probabilities = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), min_size=1, max_size=12)


@examples(100)
@given(data=st.data())
def test_auc_is_the_share_of_correctly_ordered_pairs(data):
    probs = data.draw(probabilities)
    y = data.draw(st.lists(st.booleans(), min_size=len(probs), max_size=len(probs)))
    pairs = [(p, q) for (p, a), (q, b) in itertools.product(zip(probs, y), repeat=2) if a and not b]
    expected = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs]) if pairs else None
    assert auc(np.array(probs), np.array(y, dtype=float)) == (None if expected is None else pytest.approx(expected))


@examples(100)
@given(data=st.data())
def test_spearman_is_pearson_on_average_ranks(data):
    a = data.draw(probabilities)
    b = data.draw(st.lists(st.integers(0, 3), min_size=len(a), max_size=len(a)))
    ranks = average_ranks(np.array(a))
    assert ranks.sum() == pytest.approx(len(a) * (len(a) + 1) / 2)
    rho = spearman(np.array(a), np.array(b, dtype=float))
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        assert rho is None
    else:
        assert rho == pytest.approx(np.corrcoef(ranks, average_ranks(np.array(b, dtype=float)))[0, 1])
        assert spearman(np.array(a), np.array(a)) == pytest.approx(1.0)


def test_ties_share_their_mean_rank():
    assert average_ranks(np.array([0.5, 0.1, 0.5, 0.9])) == pytest.approx([2.5, 1.0, 2.5, 4.0])


def test_brier_skill_against_the_base_rate():
    y = np.array([1.0, 0.0, 0.0, 0.0])
    assert brier_skill(np.full(4, 0.25), y, 0.25) == pytest.approx(0.0)
    assert brier_skill(y, y, 0.25) == pytest.approx(1.0)
    assert brier_skill(1 - y, y, 0.25) < 0
    assert brier_skill(np.ones(2), np.ones(2), 1.0) is None


def _confident_and_wrong(text: str) -> float:
    """Calls every prompt a coin flip and every prefix a sure thing."""
    return 0.5 if TURN_MARK not in text else 0.9


def test_an_unskilled_predictor_is_shrunk_to_the_base_rate_and_its_prefixes_kept():
    shrunk = SkillShrunk(OraclePredictor(_confident_and_wrong), memory=0.5)
    assert shrunk.skill == 0.0 and shrunk.base_rate == 0.5
    rng = np.random.default_rng(0)
    for _ in range(6):  # prompts that always fail or always pass, 1 in 5 passing
        rates = (rng.random(20) < 0.2).astype(float)
        shrunk.update([f"p{i}" for i in range(20)], rates, np.full(20, 4.0))
    assert shrunk.skill == 0.0
    assert shrunk.base_rate == pytest.approx(0.2, abs=0.08)
    assert shrunk.predict(["p1", f"p1{TURN_MARK}x"]) == pytest.approx([shrunk.base_rate, 0.9])
    # all-or-nothing prompts: two rollouts of a random one are never mixed, so the variance
    # left unexplained takes E[v(1-v)] to its pseudo-group's share, far below b(1-b)
    mean, variance = shrunk.root_moments(["p1"])
    b = shrunk.base_rate
    assert variance[0] > 0.8 * b * (1 - b) and mean[0] == pytest.approx(b)


def test_a_skilled_predictor_passes_unchanged_and_its_state_round_trips():
    truth = {f"p{i}": float(i % 2) for i in range(10)}
    shrunk = SkillShrunk(OraclePredictor(lambda t: truth.get(t, 0.3)))
    shrunk.update(list(truth), np.array(list(truth.values())), np.full(10, 4.0))
    assert shrunk.skill == 1.0
    assert shrunk.predict(["p1", "p2"]) == pytest.approx([1.0, 0.0])
    assert shrunk.root_moments(["p1"])[1][0] == 0.0
    copy = SkillShrunk(OraclePredictor(lambda t: 0.3))
    copy.load_state_dict(shrunk.state_dict())
    assert (copy.skill, copy.base_rate, copy.spread) == (shrunk.skill, shrunk.base_rate, shrunk.spread)
    with pytest.raises(ValueError, match="memory"):
        SkillShrunk(OraclePredictor(lambda t: 0.3), memory=1.0)


@pytest.mark.parametrize("min_prompts, opened", [(0, 2), (3, 3), (4, 4), (9, 4)])
def test_the_floor_caps_roots_per_prompt_so_the_plan_spreads(min_prompts, opened):
    values = np.array([0.5, 0.5] + [0.02] * 10)  # two near 1/2: the solver would put 4 roots on each
    allocator = TreeAllocator(OraclePredictor(dict(zip(map(str, range(12)), values)).__getitem__),
                              continuations_per_root=0, m_max=4, min_prompts=min_prompts,
                              rng=np.random.default_rng(0))
    counts = allocator.plan_roots([str(i) for i in range(12)], Budget(8))
    assert counts.sum() == 8 and (counts > 0).sum() == opened  # 8 roots: at most 4 prompts of 2
    assert counts.max() <= max(2, -(-8 // min_prompts) if min_prompts else 4)
