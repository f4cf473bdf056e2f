import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.allocation.reference import root_optimum_dp, root_optimum_enumerate
from trace_allocation import allocate_roots
from trace_allocation.root import root_value

SPECIAL = st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.75, 1e-12, 1 - 1e-12])
PROB = st.one_of(st.floats(0.0, 1.0), SPECIAL)


def _check(values, budget, m_min, m_max, optimum):
    counts = allocate_roots(np.asarray(values), budget, m_min=m_min, m_max=m_max)
    assert counts.dtype.kind == "i" and counts.shape == (len(values),)
    assert counts.sum() <= budget
    assert np.all((counts == 0) | ((counts >= m_min) & (counts <= m_max)))
    achieved = float(root_value(np.asarray(values), counts).sum())
    assert achieved == pytest.approx(optimum, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(PROB, min_size=0, max_size=4),
    budget=st.integers(0, 14),
    m_min=st.integers(1, 4),
    extra=st.integers(0, 3),
)
def test_matches_enumeration(values, budget, m_min, extra):
    m_max = m_min + extra
    _check(values, budget, m_min, m_max, root_optimum_enumerate(np.asarray(values), budget, m_min, m_max))


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(PROB, min_size=1, max_size=24),
    budget=st.integers(0, 80),
    m_min=st.integers(1, 5),
    extra=st.integers(0, 10),
)
def test_matches_knapsack_dp(values, budget, m_min, extra):
    m_max = m_min + extra
    _check(values, budget, m_min, m_max, root_optimum_dp(np.asarray(values), budget, m_min, m_max))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), budget=st.integers(0, 200))
def test_matches_dp_on_duplicated_values(seed, n, budget):
    """Ties in u (duplicates and mirror values v, 1-v) must not break exactness."""
    rng = np.random.default_rng(seed)
    base = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, 0.02], size=n)
    _check(base, budget, 2, 16, root_optimum_dp(base, budget, 2, 16))


def test_beats_greedy_where_greedy_fails():
    """Opening in pairs then adding singles by marginal gain spends 3 on 0.59 and strands 1."""
    values = np.array([0.59, 0.34, 0.39])
    counts = allocate_roots(values, 4)
    assert counts.tolist() == [2, 0, 2]
    assert root_value(values, counts).sum() == pytest.approx(0.9596)
    assert root_value(values, np.array([3, 0, 0])).sum() < 0.86  # the greedy's choice


def test_edge_cases():
    assert allocate_roots(np.array([0.5, 0.5]), 1).tolist() == [0, 0]  # budget < m_min
    assert allocate_roots(np.array([0.0, 1.0]), 10).tolist() == [0, 0]  # nothing to gain
    assert allocate_roots(np.array([]), 10).tolist() == []
    assert allocate_roots(np.array([0.5, 0.2, 0.9]), 6, m_min=3, m_max=3).tolist() == [3, 3, 0]
    assert allocate_roots(np.array([0.5]), 100).tolist() == [16]  # capped at m_max


@pytest.mark.parametrize("bad", [{"m_min": 0}, {"m_min": 5, "m_max": 4}])
def test_rejects_bad_bounds(bad):
    with pytest.raises(ValueError):
        allocate_roots(np.array([0.5]), 4, **bad)


def test_rejects_non_probabilities():
    with pytest.raises(ValueError):
        allocate_roots(np.array([1.5]), 4)


def test_optimal_at_benchmark_scale():
    rng = np.random.default_rng(7)
    values = rng.beta(0.5, 0.5, size=512)
    _check(values, 256, 2, 16, root_optimum_dp(values, 256, 2, 16))
