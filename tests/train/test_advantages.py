import math

import numpy as np
import pytest

from trace_allocation.tree import RolloutTree
from trace_agents.train.advantages import leaf_advantages, training_samples


def chain(parent, turns, reward=None, *, continuation=False):
    node = parent
    for i in range(turns):
        node = node.add_child(f"t{i}", continuation=continuation and i == 0)
    return node.finish(reward) if reward is not None else node


def z(values):
    v = np.array(values, float)
    return (v - v.mean()) / (v.std() + 1e-6)


@pytest.fixture
def tree():
    """Two bare rollouts (fail, success); the failed one gets two continuations from turn 1."""
    t = RolloutTree("p", "prompt")
    a = chain(t.root, 3, 0.0)              # bare, fails
    b = chain(t.root, 2, 1.0)              # bare, succeeds
    branch_point = a.path()[1]             # a's turn 1
    c = chain(branch_point, 2, 1.0, continuation=True)
    d = chain(branch_point, 2, 0.0, continuation=True)
    return t, a, b, c, d


def test_grpo_mode_is_flat_normalisation(tree):
    t, a, b, c, d = tree
    adv = leaf_advantages(t, mode="grpo")
    expected = z([0, 1, 1, 0])
    assert [adv[x] for x in (a, b, c, d)] == pytest.approx(list(expected), abs=1e-6)


def test_tree_mode_adds_intra_tree_term(tree):
    t, a, b, c, d = tree
    adv = leaf_advantages(t, mode="tree")
    inter = z([0, 1, 1, 0])
    intra_a = z([0, 1, 0])                 # a, c, d share the first bare chain's subtree
    assert adv[a] == pytest.approx(inter[0] + intra_a[0], abs=1e-6)
    assert adv[c] == pytest.approx(inter[2] + intra_a[1], abs=1e-6)
    assert adv[d] == pytest.approx(inter[3] + intra_a[2], abs=1e-6)
    assert adv[b] == pytest.approx(inter[1] + 0.0, abs=1e-6)  # alone in its subtree
    assert sum(adv.values()) == pytest.approx(0.0, abs=1e-5)


def test_uniform_group_has_zero_advantage():
    t = RolloutTree("p", "prompt")
    leaves = [chain(t.root, 2, 1.0) for _ in range(3)]
    assert all(v == 0.0 for v in leaf_advantages(t).values()) and len(leaves) == 3


def test_once_trains_each_turn_exactly_once(tree):
    t, a, b, c, d = tree
    samples = {s.leaf: s for s in training_samples([t], shared="once")}
    adv = leaf_advantages(t)
    assert samples[a].advantages == {1: adv[a], 2: adv[a], 3: adv[a]}
    assert samples[c].advantages == {2: adv[c], 3: adv[c]}  # only its new turns
    assert samples[d].advantages == {2: adv[d], 3: adv[d]}
    trained = [(id(s.path[k]), k) for s in samples.values() for k in s.advantages]
    non_root = [n for n in t.nodes() if n.parent is not None]
    assert len(trained) == len(set(trained)) == len(non_root)


def test_average_gives_shared_turns_the_mean_below(tree):
    t, a, b, c, d = tree
    adv = leaf_advantages(t)
    samples = {s.leaf: s for s in training_samples([t], shared="average")}
    assert samples[a].advantages[1] == pytest.approx((adv[a] + adv[c] + adv[d]) / 3)
    assert samples[a].advantages[3] == pytest.approx(adv[a])
    assert 1 not in samples[c].advantages


def test_per_path_trains_every_turn_of_every_sample(tree):
    t, a, b, c, d = tree
    samples = {s.leaf: s for s in training_samples([t], shared="per_path")}
    assert sorted(samples[c].advantages) == [1, 2, 3]
    assert list(samples[c].advantages.values()) == pytest.approx([leaf_advantages(t)[c]] * 3)


def test_unrewarded_leaves_are_skipped():
    t = RolloutTree("p", "prompt")
    ok, bad = chain(t.root, 1, 1.0), chain(t.root, 1, 0.0)
    chain(t.root, 2)  # generation failed: no reward
    samples = training_samples([t], mode="grpo")
    assert {s.leaf for s in samples} == {ok, bad}
    assert math.isclose(sum(s.advantages[1] for s in samples), 0.0, abs_tol=1e-6)


def test_bad_options():
    t = RolloutTree("p", "prompt")
    with pytest.raises(ValueError):
        training_samples([t], shared="twice")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        leaf_advantages(t, mode="ppo")  # type: ignore[arg-type]
