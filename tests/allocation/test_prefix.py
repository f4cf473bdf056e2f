import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.allocation.reference import prefix_optimum_enumerate
from trace_allocation import allocate_prefixes
from trace_allocation.prefix import prefix_value, reproduce_probs

PROB = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.5]))


@settings(max_examples=300, deadline=None)
@given(q=st.lists(PROB, min_size=0, max_size=4), budget=st.integers(0, 7))
def test_matches_enumeration(q, budget):
    q = np.asarray(q, dtype=float)
    counts = allocate_prefixes(q, budget)
    assert counts.shape == q.shape and counts.sum() <= budget and np.all(counts >= 0)
    achieved = float(prefix_value(q, counts).sum())
    assert achieved == pytest.approx(prefix_optimum_enumerate(q, budget), abs=1e-9)


def test_spends_nothing_where_nothing_can_flip():
    assert allocate_prefixes(np.array([1.0, 1.0]), 5).tolist() == [0, 0]
    assert allocate_prefixes(np.array([0.0, 1.0]), 5).tolist() == [1, 0]


def test_favours_surprising_prefixes():
    # A failed rollout (r=0) whose prefix looked likely to succeed is the best anchor.
    q = reproduce_probs(np.array([0.9, 0.1, 0.5]), np.array([0.0, 0.0, 1.0]))
    assert q.tolist() == pytest.approx([0.1, 0.9, 0.5])
    assert allocate_prefixes(q, 1).tolist() == [1, 0, 0]


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        allocate_prefixes(np.array([-0.1]), 1)
    with pytest.raises(ValueError):
        allocate_prefixes(np.array([0.5]), -1)
