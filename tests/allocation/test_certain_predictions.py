"""A predictor that is certain (predictions of exactly 0 or 1) must not starve a step: the exact
solvers hand out no rollout of zero gain, and a TRACE step whose every prediction was certain
opened no prompt and spent nothing (seen with the policy-state head's clipped output)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation.allocators import TreeAllocator
from trace_allocation.budget import Budget


class Certain:
    def __init__(self, values):
        self.values = values

    def predict(self, texts):
        return np.resize(np.asarray(self.values, dtype=float), len(texts))

    def update(self, *args, **kwargs):
        pass


@examples(60)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=12), st.integers(2, 12))
def test_certain_predictions_still_spend_stage_one(values, roots):
    allocator = TreeAllocator(Certain(values), continuations_per_root=1, m_min=2, m_max=4,
                              group_size=4, rng=np.random.default_rng(0))
    budget = Budget.for_allocator(allocator, roots * 1.5)
    counts = allocator.plan_roots([f"p{i}" for i in range(len(values))], budget)
    affordable = min(roots, 4 * len(values)) // 2 * 2  # whole opening pairs the pool can take
    assert counts.sum() >= affordable - 1
    assert counts.sum() * 1.5 <= budget.total + 1e-9
