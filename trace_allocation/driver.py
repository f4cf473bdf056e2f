"""The one allocation step, for every engine (native rollouts, verl's workers, the simulator).

    driver = StepDriver(allocator)
    budget = Budget.for_allocator(allocator, total)               # its budget multiple applied
    step = await driver.grow(engine, prompt_texts, budget)         # roots, Stage 2, refills
    brier, figures = driver.finish(step.trees)                     # predictor refit, contrast

`grow` plans Stage 1, runs each opened prompt's bare rollouts and, **as soon as that prompt's
own bare rollouts end** (no barrier across prompts), plans and runs its Stage 2 continuations;
refilling allocators (DAPO) get more groups while the budget pays for whole groups. Every
rollout is charged, failed ones included (the compute was spent); what the budget refuses is
counted as `unpaid`. An engine that knows a rollout's cost before it runs (the simulator) is
charged first, so nothing runs unpaid, and every opened prompt gets its first pair
(`MIN_GROUP`) before any prompt gets a third: a prompt whose length was underestimated at
planning cannot starve the prompts after it.

verl cannot run this loop (its ``fit()`` owns the order), so its trainer and workers call the same
pieces: `plan_roots` and `continuation_caps` (trainer), `plan_continuations` (each worker, per
prompt), `charge` and `finish` (trainer). Pure: numpy only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from trace_allocation.allocators import Allocator
from trace_allocation.budget import Budget, BudgetExceeded
from trace_allocation.contrast import Contrast, contrast
from trace_allocation.predictors import brier_score
from trace_allocation.tree import Node, RolloutTree, backup_targets

MIN_GROUP = 2
"""Root rollouts every opened prompt gets before any prompt gets more (the fewest that can be mixed)."""


class Spent(NamedTuple):
    """What one rollout generated (from its start node): what the budget charges."""

    turns: int
    tokens: int | None = None


class Engine(Protocol):
    """Runs rollouts for the driver; an adapter per back-end (native runner, simulator)."""

    known_cost: Callable[[Node], Spent] | None
    """What a rollout from a node will generate, if known before it runs (the simulator); else None."""

    def open(self, index: int) -> RolloutTree:
        """A tree for prompt ``index`` of the step's pool."""

    async def rollouts(self, tree: RolloutTree, node: Node, k: int, *, continuation: bool) -> Sequence[Spent]:
        """Run ``k`` rollouts of ``tree`` from ``node`` to the end (failed ones included)."""


@dataclass
class Grown:
    trees: list[RolloutTree]
    """Every tree that got a rollout, in the order the rounds opened them."""
    counts: np.ndarray
    """Root rollouts planned per pool prompt (Stage 1 plus refills)."""
    stage1: np.ndarray
    """Stage 1's counts alone."""


class ContinuationPool:
    """Stage 2 shares that their prompts could not use, for the step's later prompts.

    A prompt plans at most ``continuations_per_root`` per bare rollout; one whose sessions failed,
    or whose tree offers fewer prefixes than its share, hands the rest here, and a prompt planned
    after it may draw up to its own share again. Without it TRACE left that budget unspent and
    spent less than GRPO at "equal" cost. Counted in continuations (or, in an exact unit, in
    budget units); the `Budget` still refuses any overspend, so a draw the budget cannot pay for
    is simply not run."""

    def __init__(self) -> None:
        self.left = 0.0

    def give(self, amount: float) -> None:
        self.left += max(0.0, float(amount))

    def take(self, most: float) -> float:
        got = min(max(0.0, float(most)), self.left)
        self.left -= got
        return got


class StepDriver:
    """Plans with one allocator and charges one `Budget` per step (see the module docstring).

    ``plan_in`` runs allocator calls elsewhere (the native sampler's planning thread, so episodes
    keep stepping while a prompt is planned); by default they run inline."""

    def __init__(self, allocator: Allocator, *,
                 plan_in: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.allocator = allocator
        self.plan_in = plan_in
        self.unpaid = 0.0
        """Cost of rollouts that ran but the budget refused to charge (exact units only)."""
        self._pending_roots = 0
        """Roots planned whose charge has not come in: Stage 2 may not spend their budget."""
        self.pool = ContinuationPool()
        """This step's unused Stage 2 shares (`grow` starts a fresh one)."""
        self._bare_left = 0
        self._on_tail: Callable[[], None] | None = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self.plan_in is None else await self.plan_in(fn, *args)

    # ------------------------------------------------------------------ planning
    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        """Stage 1 counts per prompt; their bare rollouts' price is reserved until charged."""
        counts = np.asarray(self.allocator.plan_roots(list(prompt_texts), budget), dtype=np.int64)
        self._pending_roots = int(counts.sum())
        return counts

    def continuation_caps(self, counts: Sequence[int], budget: Budget) -> np.ndarray:
        """Each prompt's Stage 2 cap (``continuations_per_root`` per root), in prompt order while
        the budget left after these planned roots pays for them (verl's trainer ships these)."""
        counts = np.asarray(counts, dtype=np.int64)
        left = budget.continuations_affordable(reserved=float(counts.sum()) * budget.root_price)
        caps = []
        for m in counts.tolist():
            caps.append(min(self.allocator.continuations_per_root * m, left))
            left -= caps[-1]
        return np.asarray(caps, dtype=np.int64)

    def plan_continuations(self, tree: RolloutTree, cap: int, *, extra: int = 0) -> list[tuple[Node, int]]:
        """One prompt's Stage 2 from its bare rollouts: ``continuations_per_root`` per bare
        rollout plus ``extra`` (drawn from the pool), at most ``cap``, spread as the allocator
        chooses."""
        count = min(self.allocator.continuations_per_root * tree.bare_rollouts + extra, cap)
        if count <= 0:
            return []
        return [(n, k) for n, k in self.allocator.plan_continuations(tree, count=count) if k > 0]

    def plan_pooled(self, tree: RolloutTree, share: int, cap: int) -> list[tuple[Node, int]]:
        """`plan_continuations` with the step's pool: the prompt draws up to its own share again
        from what earlier prompts left, and hands back what its ``share`` (planned with its roots)
        and the draw did not buy."""
        extra = int(self.pool.take(self.allocator.continuations_per_root * tree.bare_rollouts))
        plan = self.plan_continuations(tree, cap, extra=extra)
        self.pool.give(share + extra - sum(k for _, k in plan))
        return plan

    # ------------------------------------------------------------------ charging
    def charge(self, budget: Budget, spent: Spent, *, continuation: bool) -> None:
        """Charge one rollout that ran; what the budget refuses counts as unpaid."""
        try:
            (budget.charge_continuation if continuation else budget.charge_root)(**spent._asdict())
        except BudgetExceeded:
            self.unpaid += budget.cost(continuation=continuation, **spent._asdict())

    def _prepay(self, budget: Budget, spent: Spent, n: int, *, continuation: bool, whole: bool = False) -> int:
        """Charge up to ``n`` rollouts of known cost before they run (``whole``: all or none)."""
        if whole and not budget.can_afford(n * budget.cost(continuation=continuation, **spent._asdict())):
            return 0
        for paid in range(n):
            try:
                (budget.charge_continuation if continuation else budget.charge_root)(**spent._asdict())
            except BudgetExceeded:
                return paid
        return n

    # ------------------------------------------------------------------ the step
    async def grow(self, engine: Engine, prompt_texts: Sequence[str], budget: Budget, *,
                   on_tail: Callable[[], None] | None = None) -> Grown:
        """Stage 1, every opened prompt's rollouts and Stage 2, then refills while affordable.
        ``on_tail`` is called once every Stage 1 prompt's bare rollouts have ended: what is left
        is Stage 2's tail (and refills), which an asynchronous loop fills with the next step."""
        counts = await self._call(self.plan_roots, prompt_texts, budget)
        self.pool = ContinuationPool()
        self._bare_left, self._on_tail = int(np.count_nonzero(counts)), on_tail
        self._tail_check()
        stage1, total = counts.copy(), counts.copy()
        trees: list[RolloutTree] = []
        while counts.any():
            trees += await self._round(engine, prompt_texts, counts, budget)
            refill = await self._call(self.allocator.plan_refill, trees, prompt_texts)
            counts = budget.affordable_groups(np.asarray(refill, dtype=np.int64))
            self._pending_roots = int(counts.sum())
            total += counts
        return Grown(trees, total, stage1)

    async def _round(self, engine: Engine, texts: Sequence[str], counts: np.ndarray,
                     budget: Budget) -> list[RolloutTree]:
        """Trees are opened first, in pool order, so each draws its seeds the same way however
        the episodes interleave; then every prompt grows concurrently."""
        opened = np.flatnonzero(counts)
        trees = [engine.open(int(i)) for i in opened]
        prices = budget.plan_prices([texts[i] for i in opened])
        ran = await asyncio.gather(*(self._grow_prompt(engine, t, int(counts[i]), float(p), budget)
                                     for t, i, p in zip(trees, opened, prices)))
        return [t for t, r in zip(trees, ran) if r]

    async def _grow_prompt(self, engine: Engine, tree: RolloutTree, m: int, price: float,
                           budget: Budget) -> int:
        """One prompt: its bare rollouts, then at once its Stage 2. Returns the roots that ran."""
        known = engine.known_cost
        if known is None:
            await self._run(engine, tree, tree.root, m, budget, continuation=False)
            ran = m
            self._settled(m)
        else:
            cost, first = known(tree.root), min(m, MIN_GROUP)
            ran = self._prepay(budget, cost, first, continuation=False, whole=True)
            self._settled(first)
            await self._run(engine, tree, tree.root, ran, budget, continuation=False, paid=True)
            await asyncio.sleep(0)  # every opened prompt's pair before anyone's third
            if ran:
                rest = self._prepay(budget, cost, m - ran, continuation=False)
                await self._run(engine, tree, tree.root, rest, budget, continuation=False, paid=True)
                ran += rest
            self._settled(m - first)
            await asyncio.sleep(0)
        self._bare_left -= 1
        self._tail_check()
        if ran:
            await self._continue(engine, tree, m, ran * price, budget)
        return ran

    def _tail_check(self) -> None:
        if self._bare_left <= 0 and self._on_tail is not None:
            on_tail, self._on_tail = self._on_tail, None
            on_tail()

    def _settled(self, roots: int) -> None:
        """Planned roots that are charged (or refused) now: no longer reserved from Stage 2. A
        prepaid root is in ``budget.spent`` already; reserving it too left a fifth of TRACE's
        budget unspent at a dozen trajectories a step."""
        self._pending_roots = max(0, self._pending_roots - roots)

    async def _continue(self, engine: Engine, tree: RolloutTree, roots: int, roots_price: float,
                        budget: Budget) -> None:
        """One prompt's Stage 2, its planned share (for ``roots`` roots) pooled with the step's."""
        known = engine.known_cost
        if known is not None and budget.unit != "trajectory":
            # exact units: the prompt's planned share of Stage 2, each continuation at its own cost
            share = roots_price * self.allocator.continuations_per_root * budget.continuation_cost
            extra = self.pool.take(share)
            allowance = min(budget.remaining, share + extra)
            price_of = lambda n: budget.cost(continuation=True, **known(n)._asdict())  # noqa: E731
            plan = await self._call(lambda: [(n, k) for n, k in self.allocator.plan_continuations(
                tree, allowance=allowance, price_of=price_of) if k > 0])
            self.pool.give(share + extra - sum(price_of(n) * k for n, k in plan))
        else:
            cap = budget.continuations_affordable(reserved=self._pending_roots * budget.root_price)
            share = self.allocator.continuations_per_root * roots
            plan = await self._call(self.plan_pooled, tree, share, cap)
        if known is None:
            await asyncio.gather(*(self._run(engine, tree, node, k, budget, continuation=True) for node, k in plan))
            return
        for node, k in plan:
            paid = self._prepay(budget, known(node), k, continuation=True)
            await self._run(engine, tree, node, paid, budget, continuation=True, paid=True)

    async def _run(self, engine: Engine, tree: RolloutTree, node: Node, k: int, budget: Budget, *,
                   continuation: bool, paid: bool = False) -> None:
        if k <= 0:
            return
        spent = await engine.rollouts(tree, node, k, continuation=continuation)
        if not paid:
            for s in spent:
                self.charge(budget, s, continuation=continuation)

    # ------------------------------------------------------------------ after the rollouts
    def finish(self, trees: Sequence[RolloutTree], *, refit: bool = True) -> tuple[float | None, Contrast]:
        """Refit the predictor on the trees' backup targets (returning its Brier score on them
        before the update: how well it foresaw this step) and measure the step's contrast."""
        return (refit_predictor(self.allocator, trees) if refit else None), contrast(trees)


def refit_predictor(allocator: Allocator, trees: Sequence[RolloutTree]) -> float | None:
    """Update the allocator's predictor on every non-terminal node's backup target, weighted by
    its leaves; the Brier score before the update, or None without a predictor or targets."""
    predictor = allocator.predictor
    texts, targets, weights = backup_targets(trees)
    if predictor is None or not texts:
        return None
    brier = float(brier_score(predictor.predict(texts), targets, weights))
    predictor.update(texts, targets, weights)
    return brier


__all__ = ["MIN_GROUP", "ContinuationPool", "Engine", "Grown", "Spent", "StepDriver", "refit_predictor"]
