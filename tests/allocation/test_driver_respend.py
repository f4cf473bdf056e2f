"""Stage 2 shares a prompt cannot use are re-spent by the step's later prompts (`ContinuationPool`).

The engine here runs rollouts of unknown cost, as the native sampler does: a "failing" prompt's
sessions all raise (charged, no leaf), the others play two turns after a few scheduler yields, so
the failures are known before anyone plans Stage 2."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation import Budget
from trace_allocation.allocators import TreeAllocator
from trace_allocation.driver import ContinuationPool, Spent, StepDriver
from trace_allocation.predictors import LexicalPredictor
from trace_allocation.tree import Node, RolloutTree, prefix_text


class FailingEngine:
    known_cost = None

    def __init__(self, texts: Sequence[str], failing: set[int], seed: int) -> None:
        self.texts, self.failing = texts, failing
        self.rng = np.random.default_rng(seed)
        self.ran = {"roots": 0, "continuations": 0}

    def open(self, index: int) -> RolloutTree:
        return RolloutTree(index, self.texts[index])

    async def rollouts(self, tree: RolloutTree, node: Node, k: int, *, continuation: bool) -> list[Spent]:
        self.ran["continuations" if continuation else "roots"] += k
        if tree.prompt_id in self.failing:
            return [Spent(1)] * k  # the sessions raised: charged, nothing to branch from
        for _ in range(3):
            await asyncio.sleep(0)
        for _ in range(k):
            cur = node
            while cur.depth < 2:
                cur = cur.add_child(prefix_text(cur.prefix_text, [f"w{self.rng.integers(4)}"]),
                                    continuation=continuation and cur is node)
            cur.finish(float(self.rng.random() < 0.5))
        return [Spent(2 - node.depth)] * k


def grow(n: int, failing: set[int], roots: int, cpr: int, prefixes: str, seed: int, *, pool: bool):
    texts = [f"task {i} of {n}" for i in range(n)]
    allocator = TreeAllocator(LexicalPredictor(), continuations_per_root=cpr, prefixes=prefixes, m_min=2,
                              m_max=4, rng=np.random.default_rng(seed))
    budget = Budget.for_allocator(allocator, roots * (1 + cpr * 0.5))
    driver = StepDriver(allocator)
    engine = FailingEngine(texts, failing, seed)
    if not pool:  # today's driver: nothing is drawn from the pool
        driver_take = ContinuationPool.take
        ContinuationPool.take = lambda self, most: 0.0  # type: ignore[method-assign]
    try:
        grown = asyncio.run(driver.grow(engine, texts, budget))
    finally:
        if not pool:
            ContinuationPool.take = driver_take  # type: ignore[method-assign]
    return grown, budget, engine


steps = st.tuples(st.integers(2, 6), st.integers(0, 2**16), st.integers(4, 12), st.integers(1, 2),
                  st.sampled_from(["active", "uniform"]))


@examples(60)
@given(steps, st.data())
def test_a_failed_prompts_share_is_re_spent_and_the_budget_never_exceeded(shape, data):
    n, seed, roots, cpr, prefixes = shape
    failing = set(data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1)))
    before, b_budget, _ = grow(n, failing, roots, cpr, prefixes, seed, pool=False)
    after, a_budget, engine = grow(n, failing, roots, cpr, prefixes, seed, pool=True)
    assert a_budget.spent <= a_budget.total + 1e-9 and b_budget.spent <= b_budget.total + 1e-9
    assert after.stage1.tolist() == before.stage1.tolist()
    assert a_budget.continuations >= b_budget.continuations
    opened = np.flatnonzero(after.stage1)
    lost = sum(cpr * int(after.stage1[i]) for i in opened if i in failing)
    room = sum(cpr * int(after.stage1[i]) for i in opened if i not in failing)  # the others' draws
    affordable = int(np.floor((a_budget.total - a_budget.roots) / a_budget.continuation_price + 1e-9))
    if prefixes == "uniform":  # every planned continuation runs: the failed shares are re-spent
        expected = min(room + min(lost, room), affordable)
        assert engine.ran["continuations"] == a_budget.continuations == expected
        assert b_budget.continuations == min(room, affordable)


@examples(40)
@given(steps)
def test_without_failures_the_pool_changes_nothing(shape):
    n, seed, roots, cpr, prefixes = shape
    before, b_budget, _ = grow(n, set(), roots, cpr, prefixes, seed, pool=False)
    after, a_budget, _ = grow(n, set(), roots, cpr, prefixes, seed, pool=True)
    assert b_budget.usage == a_budget.usage
    assert [t.rewards() for t in before.trees] == [t.rewards() for t in after.trees]


def test_twelve_trajectories_a_step_with_a_failed_prompt_spend_the_whole_budget():
    """The figure in docs/allocation.md: 4 prompts of 3 roots, 2 continuations per root, prompt 0's
    sessions all raise. Without the pool: 12 roots + 18 continuations = 21.0 of 24 traj-eq."""
    for pool, continuations in ((False, 18), (True, 24)):
        grown, budget, _ = grow(4, {0}, 12, 2, "uniform", 0, pool=pool)
        assert grown.stage1.tolist() == [3, 3, 3, 3]
        assert (budget.roots, budget.continuations) == (12, continuations)
        assert budget.spent == pytest.approx(12 + continuations / 2)


def test_the_pool_hands_out_what_it_holds_and_no_more():
    pool = ContinuationPool()
    pool.give(3)
    pool.give(-2)  # a prompt that overspent its share returns nothing
    assert pool.take(2) == 2 and pool.take(5) == 1 and pool.take(1) == 0 and pool.left == 0
