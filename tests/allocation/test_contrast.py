"""The one effective-ratio function, against hand-counted trees."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trace_allocation.budget import Budget, ExpectedCost
from trace_allocation.contrast import contrast
from trace_allocation.prefix import allocate_prefixes
from trace_allocation.tree import RolloutTree


def flat(rewards, prompt="p"):
    tree = RolloutTree(prompt, prompt)
    for r in rewards:
        tree.root.add_child("a").finish(r)
    return tree


def test_hand_examples():
    branched = RolloutTree("b", "b")
    first = branched.root.add_child("t1")
    first.add_child("t2").finish(0.0)
    first.add_child("c", continuation=True).finish(1.0)  # a continuation: also a trajectory
    branched.root.add_child("u1").finish(0.0)
    never_ran = RolloutTree("n", "n")  # opened by a plan, but no rollout: not counted
    figures = contrast([flat([1, 1, 1, 1]), flat([0, 1, 0, 0]), flat([0, 0]), branched, never_ran])
    assert (figures.mixed_trees, figures.prompts_opened) == (2, 4)
    assert figures.ratio == pytest.approx(0.5)
    # informative: flat [0,1,0,0] -> all 4 differ from 0.25; branched [0,1,0] -> all 3 differ from 1/3
    assert (figures.trajectories, figures.informative_trajectories) == (4 + 4 + 2 + 3, 7)
    assert figures.informative_share == pytest.approx(7 / 13)
    assert figures.as_dict()["mixed_trees"] == 2


def test_empty_step():
    figures = contrast([])
    assert (figures.ratio, figures.informative_share, figures.mixed_trees) == (0.0, 0.0, 0)


@given(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=6), max_size=8))
def test_binary_rewards_informative_means_mixed(groups):
    """With 0/1 rewards a trajectory has a non-zero advantage exactly when its group is mixed."""
    figures = contrast([flat(g, str(i)) for i, g in enumerate(groups)])
    mixed = [g for g in groups if 0 < sum(g) < len(g)]
    assert figures.mixed_trees == len(mixed)
    assert figures.informative_trajectories == sum(len(g) for g in mixed)


def test_budget_records_both_units_whatever_it_charges():
    for unit in ("trajectory", "turns"):
        budget = Budget(100, unit=unit, estimates=(4.0, 2.0))
        budget.charge_root(turns=6, tokens=60)
        budget.charge_continuation(turns=2, tokens=25)
        assert budget.usage == {"trajectory": 1.5, "turns": 8.0, "tokens": 85.0}
        assert budget.spent == (1.5 if unit == "trajectory" else 8.0)


def test_expected_cost_prices_each_prompt_at_its_own_length():
    lengths = ExpectedCost(initial=5.0)
    assert lengths(["a"]).tolist() == [5.0]
    lengths.observe("a", 2)
    lengths.observe("a", 4)
    lengths.observe("b", 9)
    assert lengths(["a", "b", "new"]).tolist() == [3.0, 9.0, 5.0]
    budget = Budget(100, unit="turns", estimates=(5.0, 2.5), prices=lengths)
    assert budget.plan_prices(["a", "b"], continuations_per_root=2).tolist() == [6.0, 18.0]
    assert Budget(10).plan_prices(["a"], continuations_per_root=2).tolist() == [2.0]


def test_priced_prefixes_fit_the_allowance_and_prefer_cheap_surprises():
    q = np.array([0.5, 0.5, 0.9])
    costs = np.array([6.0, 1.0, 1.0])
    counts = allocate_prefixes(q, 6.0, costs)
    assert float(counts @ costs) <= 6.0
    assert counts[1] >= counts[0]  # same gain, cheaper
    with pytest.raises(ValueError):
        allocate_prefixes(q, 6.0, np.array([1.0, 0.0, 1.0]))
