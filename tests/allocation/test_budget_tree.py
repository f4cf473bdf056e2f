import numpy as np
import pytest

from trace_allocation import Budget, BudgetExceeded, RolloutTree


def test_trajectory_convention_matches_the_paper_shapes():
    for roots, n, total in [(1024, 2, 2048), (512, 6, 2048), (512, 2, 1024)]:
        budget = Budget(total)
        assert budget.roots_affordable(n) == roots
        for _ in range(roots):
            budget.charge_root()
        for _ in range(roots * n):
            budget.charge_continuation()
        assert budget.spent == total and budget.remaining == 0
        with pytest.raises(BudgetExceeded):
            budget.charge_continuation()


def test_exact_units_charge_what_was_generated_and_learn_prices():
    budget = Budget(100, unit="turns", estimates=(8.0, 4.0))
    assert budget.roots_affordable(2) == 6
    budget.charge_root(turns=10)
    budget.charge_continuation(turns=3)
    assert budget.spent == 13 and budget.root_price == 10 and budget.continuation_price == 3
    with pytest.raises(ValueError):
        budget.charge_root()  # turns are required in this unit
    with pytest.raises(BudgetExceeded):
        budget.charge_root(turns=88)
    assert budget.spent == 13  # a refused charge leaves no trace


def _tree() -> RolloutTree:
    """Two bare rollouts (3 turns, reward 1; 2 turns, reward 0) and one continuation."""
    tree = RolloutTree("p0", "prompt")
    a1 = tree.root.add_child("prompt a1", handle="s1")
    a2 = a1.add_child("prompt a1 a2")
    a2.add_child("prompt a1 a2 a3").finish(1.0)
    b1 = tree.root.add_child(lambda: "prompt b1")
    b1.add_child("prompt b1 b2").finish(0.0)
    a1.add_child("prompt a1 c2", continuation=True).add_child("prompt a1 c2 c3").finish(0.0)
    return tree


def test_backup_targets_are_leaf_success_rates():
    tree = _tree()
    tree.backup()
    a1 = tree.root.children[0]
    assert (tree.root.visits, tree.root.target) == (3, pytest.approx(1 / 3))
    assert (a1.visits, a1.target) == (2, 0.5)
    assert tree.root.children[1].target == 0.0
    assert tree.is_mixed and tree.bare_rollouts == 2
    assert sorted(tree.rewards()) == [0.0, 0.0, 1.0]


def test_prefix_candidates_cover_bare_intermediate_turns_only():
    tree = _tree()
    got = sorted((p.node.prefix_text, p.reward) for p in tree.prefix_candidates())
    assert got == [("prompt a1", 1.0), ("prompt a1 a2", 1.0), ("prompt b1", 0.0)]
    got = sorted(p.node.prefix_text for p in tree.prefix_candidates(include_final=False))
    assert got == ["prompt a1"]
    assert [n.depth for n in tree.root.children[0].children[1].path()] == [0, 1, 2]


def test_rewards_only_on_leaves_and_unfinished_rollouts_do_not_count():
    tree = RolloutTree(1, "p")
    node = tree.root.add_child("p x")
    node.add_child("p x y")
    with pytest.raises(ValueError):
        node.finish(1.0)
    tree.root.add_child("p z").finish(1.0)
    tree.backup()
    assert tree.root.visits == 1 and node.target is None and not tree.is_mixed


def test_budget_is_never_exceeded_by_random_charges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        budget = Budget(float(rng.integers(0, 20)))
        for _ in range(40):
            try:
                (budget.charge_root if rng.random() < 0.5 else budget.charge_continuation)()
            except BudgetExceeded:
                pass
            assert budget.spent <= budget.total
