import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_allocation import Budget, RolloutTree
from trace_allocation.budget import ExpectedCost
from trace_allocation.allocators import DapoAllocator, GrpoAllocator, PclAllocator, TreeAllocator
from trace_allocation.predictors import OraclePredictor


def _table_predictor(values: dict[str, float]) -> OraclePredictor:
    return OraclePredictor(lambda text: values.get(text, 0.5))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    pool=st.integers(0, 40),
    total=st.floats(0, 200),
    n=st.integers(0, 4),
    unit=st.sampled_from(["trajectory", "turns"]),
)
def test_root_plans_fit_the_budget(seed, pool, total, n, unit):
    rng = np.random.default_rng(seed)
    texts = [f"p{i}" for i in range(pool)]
    predictor = _table_predictor(dict(zip(texts, rng.random(pool))))
    estimates = None if unit == "trajectory" else (6.0, 3.0)
    planners = [
        GrpoAllocator(8, rng=rng),
        PclAllocator(predictor, 8),
        TreeAllocator(predictor, continuations_per_root=n, rng=rng),
        TreeAllocator(None, roots="uniform", prefixes="uniform", continuations_per_root=n, rng=rng),
    ]
    for planner in planners:
        budget = Budget(total, unit=unit, estimates=estimates)
        counts = planner.plan_roots(texts, budget)
        assert counts.shape == (pool,) and counts.min(initial=0) >= 0
        planned = counts.sum() * (budget.root_price + planner.continuations_per_root * budget.continuation_price)
        assert planned <= total + 1e-9


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), pool=st.integers(1, 30), total=st.floats(0, 400), n=st.integers(0, 3))
def test_root_plans_priced_per_prompt_fit_the_budget(seed, pool, total, n):
    """In turns, each prompt is planned at its own expected length (with its continuations at
    half of it): every method's plan fits the budget at those prices."""
    rng = np.random.default_rng(seed)
    texts = [f"p{i}" for i in range(pool)]
    lengths = ExpectedCost(initial=5.0)
    for text in texts[: pool // 2]:
        lengths.observe(text, float(rng.integers(1, 12)))
    predictor = _table_predictor(dict(zip(texts, rng.random(pool))))
    for planner in (GrpoAllocator(4, rng=rng), PclAllocator(predictor, 4),
                    TreeAllocator(predictor, continuations_per_root=n, rng=rng),
                    TreeAllocator(None, roots="uniform", prefixes="uniform", continuations_per_root=n, rng=rng)):
        budget = Budget(total, unit="turns", estimates=(5.0, 2.5), prices=lengths)
        counts = planner.plan_roots(texts, budget)
        per_root = lengths(texts) * (1 + 0.5 * planner.continuations_per_root)
        assert float(counts @ per_root) <= total + 1e-9
        assert set(np.unique(counts)) <= {0} | set(range(2, 17))


def test_active_roots_with_prices_still_use_the_budget():
    predictor = _table_predictor({"short": 0.5, "long": 0.5})
    lengths = ExpectedCost(initial=5.0)
    lengths.observe("short", 2.0)
    lengths.observe("long", 8.0)
    budget = Budget(40, unit="turns", estimates=(2.0, 1.0), prices=lengths)
    counts = TreeAllocator(predictor, continuations_per_root=0, m_max=16,
                           rng=np.random.default_rng(0)).plan_roots(["short", "long"], budget)
    assert float(counts @ np.array([2.0, 8.0])) <= 40 and counts.sum() >= 8


def _two_rollout_tree() -> RolloutTree:
    tree = RolloutTree(0, "p")
    a = tree.root.add_child("p\na1")
    a.add_child("p\na1\na2").add_child("p\na1\na2\na3").finish(0.0)
    tree.root.add_child("p\nb1").add_child("p\nb1\nb2").finish(1.0)
    return tree


def test_trace_continuations_go_to_surprising_prefixes_and_spend_m_times_n():
    tree = _two_rollout_tree()
    # a failed rollout whose second prefix looked like a success is the best anchor
    predictor = _table_predictor({"p\na1": 0.3, "p\na1\na2": 0.95, "p\nb1": 0.9})
    plan = TreeAllocator(predictor, continuations_per_root=2, rng=np.random.default_rng(0)).plan_continuations(tree)
    # gains: a1a2 0.95, then a1 0.3, 0.21, 0.147 beat a1a2's second (0.0475) and b1's 0.1
    assert {n.prefix_text: k for n, k in plan} == {"p\na1\na2": 1, "p\na1": 3}


def test_uniform_continuations_spread_over_eligible_prefixes():
    tree = _two_rollout_tree()
    allocator = TreeAllocator(None, roots="uniform", prefixes="uniform", continuations_per_root=3,
                              rng=np.random.default_rng(1))
    plan = allocator.plan_continuations(tree)
    assert sum(k for _, k in plan) == 6
    assert {n.prefix_text for n, _ in plan} <= {"p\na1", "p\na1\na2", "p\nb1"}
    assert allocator.plan_continuations(tree, count=0) == []


def test_active_needs_a_predictor():
    with pytest.raises(ValueError):
        TreeAllocator(None, rng=np.random.default_rng(0))


def test_pcl_keeps_prompts_nearest_one_half():
    texts = ["a", "b", "c", "d"]
    pcl = PclAllocator(_table_predictor({"a": 0.05, "b": 0.45, "c": 0.9, "d": 0.6}), group_size=2)
    assert pcl.plan_roots(texts, Budget(4)).tolist() == [0, 2, 0, 2]


def test_dapo_refills_until_its_batch_has_enough_mixed_groups():
    texts = [f"p{i}" for i in range(6)]
    dapo = DapoAllocator(2, batch_prompts=2, rng=np.random.default_rng(0))
    first = dapo.plan_roots(texts, Budget(1000))
    assert (first > 0).sum() == 2
    flat = RolloutTree(0, "x")
    for _ in range(2):
        flat.root.add_child("x y").finish(1.0)
    mixed = _two_rollout_tree()
    again = dapo.plan_refill([flat, mixed], texts)
    assert (again > 0).sum() == 1 and not np.any((again > 0) & (first > 0))
    assert not dapo.plan_refill([mixed, mixed], texts).any()


class _Posterior:
    """Fixed posterior means and variances per prompt."""

    def __init__(self, moments: dict[str, tuple[float, float]]) -> None:
        self.moments = moments

    def predict(self, texts):
        return np.array([self.moments[t][0] for t in texts])

    def update(self, texts, targets, weights=None):
        pass

    def root_moments(self, texts):
        return tuple(np.array([self.moments[t][i] for t in texts]) for i in (0, 1))


@settings(max_examples=80, deadline=None)
@given(st.floats(0.01, 0.99), st.floats(0, 1))
def test_stage1_scores_a_posterior_by_its_mean_v_times_one_minus_v(mean, share):
    """The value Stage 1 plans with keeps the mean's side and has v(1-v) = E[v(1-v)] =
    mean(1-mean) - variance; a sure prompt outranks an equally centred unsure one."""
    from trace_allocation.allocators import UNSURE, stage1_values

    variance = share * mean * (1 - mean)
    v = stage1_values(_Posterior({"a": (mean, variance)}), ["a"])[0]
    target = mean * (1 - mean) - variance
    if min(v, 1 - v) == pytest.approx(UNSURE):  # never planned as certain (allocators.UNSURE)
        assert target <= UNSURE * (1 - UNSURE) + 1e-9
    else:
        assert v * (1 - v) == pytest.approx(target, abs=1e-9)
    assert (v <= 0.5) == (mean <= 0.5) or mean == pytest.approx(0.5)
    sure, unsure = stage1_values(_Posterior({"s": (0.5, 0.0), "u": (0.5, 0.05)}), ["s", "u"])
    counts = TreeAllocator(_Posterior({"s": (0.5, 0.0), "u": (0.5, 0.05)}), rng=np.random.default_rng(0)).plan_roots(
        ["u", "s"], Budget(2 * 2.0))
    assert sure == 0.5 and abs(unsure - 0.5) > 0.2 and counts.tolist() == [0, 2]
