"""TRACE and its baselines behind one interface, so one driver runs them all the same way.

Per training step a driver does:

    counts = allocator.plan_roots(prompt_texts, budget)    # root rollouts per candidate prompt
    # ... run counts[i] bare rollouts of prompt i into a RolloutTree ...
    for node, k in allocator.plan_continuations(tree):     # per prompt, as soon as its bare rollouts end
        ...  # run k continuations branched from node
    extra = allocator.plan_refill(trees, prompt_texts)     # DAPO asks for more; the others never do
    # ... repeat the rollouts (and refill) while extra.any() ...
    batch = allocator.training_trees(trees)                # DAPO keeps its quota of mixed groups

Planning only decides counts; the driver charges the `Budget` for what actually ran. Stage 1
prices each prompt with `budget.plan_prices` (its own expected length in the exact units), so
every method fits the same budget in whichever unit it is charged.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from trace_allocation.budget import Budget
from trace_allocation.predictors import SuccessPredictor
from trace_allocation.prefix import allocate_prefixes, reproduce_probs
from trace_allocation.root import allocate_roots
from trace_allocation.tree import Node, RolloutTree

Rule = Literal["active", "uniform"]


class Allocator:
    """Base: flat groups, no continuations, no refill."""

    name = "allocator"
    continuations_per_root = 0
    budget_multiple = 1.0
    """Multiple of the common budget the driver gives this allocator (only DAPO over-samples)."""
    predictor: SuccessPredictor | None = None

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        raise NotImplementedError

    def plan_continuations(
        self, tree: RolloutTree, count: int | None = None, *,
        allowance: float | None = None, price_of: Callable[[Node], float] | None = None,
    ) -> list[tuple[Node, int]]:
        return []

    def plan_refill(self, trees: Sequence[RolloutTree], prompt_texts: Sequence[str]) -> np.ndarray:
        return np.zeros(len(prompt_texts), dtype=np.int64)

    def training_trees(self, trees: Sequence[RolloutTree]) -> list[RolloutTree]:
        """The trees the policy update sees (all of them, except for DAPO)."""
        return list(trees)


def _groups(prompt_texts: Sequence[str], order: np.ndarray, group_size: int, budget: Budget,
            continuations_per_root: float = 0.0) -> np.ndarray:
    """Groups of `group_size` for the prompts in `order` while their expected cost fits the
    budget (at each prompt's own price): uniform methods stop at the first that does not fit."""
    counts = np.zeros(len(prompt_texts), dtype=np.int64)
    prices = budget.plan_prices(prompt_texts, continuations_per_root) * group_size
    left = budget.remaining + 1e-9
    for i in order:
        if prices[i] > left:
            break
        counts[i] = group_size
        left -= prices[i]
    return counts


UNSURE = 1e-6
"""How close to 0 or 1 a prediction may come in Stage 1. A certain prediction makes a prompt worth
nothing to the exact solver, which hands out no rollout of zero gain; when every prediction was
certain (a learned head's clipped output) a TRACE step opened no prompt and spent nothing. Kept
this far off the bounds, such prompts tie and the budget is spent; Stage 2 needs no guard, since a
prompt whose prefixes are all certain hands its share to the step's continuation pool."""


def unsure(values: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=float), UNSURE, 1.0 - UNSURE)


def stage1_values(predictor: SuccessPredictor, prompt_texts: Sequence[str], *, uncertainty: bool = True) -> np.ndarray:
    """The values Stage 1 plans with. A predictor that knows how sure it is (`root_moments(texts)
    -> (mean, variance)`, e.g. `BlendedPredictor`) is scored by the posterior mean of v(1 - v),
    the chance that two rollouts are mixed (E[v(1-v)] = mean(1 - mean) - variance), expressed as
    the value on the mean's side with that v(1 - v): a prompt known to sit near 1/2 outranks one
    merely guessed to. Exact for the opening pair; further rollouts are planned as if at that
    value. Other predictors (or `uncertainty=False`) are scored by their prediction."""
    moments = getattr(predictor, "root_moments", None)
    if moments is None or not uncertainty:
        return unsure(predictor.predict(prompt_texts))
    mean, variance = moments(list(prompt_texts))
    spread = np.clip(mean * (1 - mean) - variance, 0.0, 0.25)
    half_gap = np.sqrt(0.25 - spread)
    return unsure(np.where(mean < 0.5, 0.5 - half_gap, 0.5 + half_gap))


class GrpoAllocator(Allocator):
    """Uniform prompt sampling, flat groups of G."""

    name = "grpo"

    def __init__(self, group_size: int = 8, *, rng: np.random.Generator) -> None:
        self.group_size = group_size
        self.rng = rng

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        return _groups(prompt_texts, self.rng.permutation(len(prompt_texts)), self.group_size, budget)


class PclAllocator(Allocator):
    """Prompt curriculum: keep the prompts whose predicted success is nearest 1/2, flat groups."""

    name = "pcl"

    def __init__(self, predictor: SuccessPredictor, group_size: int = 8) -> None:
        self.predictor = predictor
        self.group_size = group_size

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        distance = np.abs(self.predictor.predict(prompt_texts) - 0.5)
        return _groups(prompt_texts, np.argsort(distance, kind="stable"), self.group_size, budget)


class DapoAllocator(Allocator):
    """Dynamic sampling: keep drawing groups of G until the batch holds its quota of mixed groups
    (or the candidate pool or its budget runs out), then train on that quota only. Its extra cost
    is the point of comparison: the driver gives it a multiple of the common budget
    (`budget_multiple`) and reports what it spent."""

    name = "dapo"

    def __init__(self, group_size: int = 8, *, batch_prompts: int, rng: np.random.Generator,
                 budget_multiple: float = 4.0) -> None:
        if budget_multiple < 1:
            raise ValueError(f"DAPO's budget multiple must be >= 1, got {budget_multiple}")
        self.group_size = group_size
        self.batch_prompts = batch_prompts
        self.budget_multiple = budget_multiple
        self.rng = rng
        self._order = np.zeros(0, dtype=np.int64)
        self._drawn = 0

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        self._order = self.rng.permutation(len(prompt_texts))
        self._drawn = 0
        return self._draw(len(prompt_texts), self.batch_prompts)

    def plan_refill(self, trees: Sequence[RolloutTree], prompt_texts: Sequence[str]) -> np.ndarray:
        missing = self.batch_prompts - sum(t.is_mixed for t in trees)
        return self._draw(len(prompt_texts), max(0, missing))

    def training_trees(self, trees: Sequence[RolloutTree]) -> list[RolloutTree]:
        """The first `batch_prompts` mixed groups, in the order they were drawn."""
        return [t for t in trees if t.is_mixed][: self.batch_prompts]

    def _draw(self, n_prompts: int, n: int) -> np.ndarray:
        chosen = self._order[self._drawn : self._drawn + n]
        self._drawn += chosen.size
        counts = np.zeros(n_prompts, dtype=np.int64)
        counts[chosen] = self.group_size
        return counts


class TreeAllocator(Allocator):
    """TRACE: Stage 1 roots and Stage 2 continuations, each `active` (predictor-guided, exact
    solvers) or `uniform` (random prompts in groups of `group_size`; random eligible prefixes).
    active/active is TRACE; uniform/uniform is `random_branch`, the baseline the TRACE paper calls
    "TreePO" (same tree shape, prefixes drawn uniformly at random; TreePO's own segment-level
    heuristic branching, early stopping and sub-group advantages are not implemented); the mixed
    pairs are the ablation of Table 1. `uncertainty`: Stage 1 scores a predictor that reports
    posterior variances (`root_moments`) by E[v(1-v)] rather than its mean (`stage1_values`).
    `min_prompts`: Stage 1 opens at least about this many prompts a step (GRPO's count, say) by
    capping each prompt's roots at ceil(M / min_prompts); the exact solver stays exact within
    those bounds, and a predictor wrong about which prompts are near 1/2 then cannot concentrate
    the step on two of them."""

    def __init__(
        self,
        predictor: SuccessPredictor | None,
        *,
        continuations_per_root: int = 2,
        roots: Rule = "active",
        prefixes: Rule = "active",
        m_min: int = 2,
        m_max: int = 16,
        group_size: int = 4,
        include_final: bool = True,
        uncertainty: bool = True,
        min_prompts: int = 0,
        rng: np.random.Generator,
        name: str | None = None,
    ) -> None:
        if predictor is None and "active" in (roots, prefixes):
            raise ValueError("active allocation needs a predictor")
        self.predictor = predictor
        self.continuations_per_root = continuations_per_root
        self.roots = roots
        self.prefixes = prefixes
        self.m_min = m_min
        self.m_max = m_max
        self.group_size = group_size
        self.include_final = include_final
        self.uncertainty = uncertainty
        self.min_prompts = min_prompts
        self.rng = rng
        self._step_key = 0
        """Drawn from ``rng`` by every Stage 1 plan: the step's part of each prompt's draws."""
        self.name = name or f"tree_{roots}_{prefixes}"

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        counts = self._plan_roots(prompt_texts, budget)
        if self.prefixes == "uniform":
            self._step_key = int(self.rng.integers(2**63))
        return counts

    def _plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        prices = budget.plan_prices(prompt_texts, self.continuations_per_root)
        if self.roots == "uniform":
            order = self.rng.permutation(len(prompt_texts))
            return _groups(prompt_texts, order, self.group_size, budget, self.continuations_per_root)
        values = stage1_values(self.predictor, prompt_texts, uncertainty=self.uncertainty)
        solve = lambda m: allocate_roots(values, m, m_min=self.m_min, m_max=self._m_cap(m))  # noqa: E731
        if not len(prices) or np.ptp(prices) == 0:
            return solve(int(budget.remaining / prices[0] + 1e-9) if len(prices) else 0)
        # prompts of different expected lengths: the most roots M whose plan fits the budget
        lo, hi = 0, int(budget.remaining / prices.min() + 1e-9)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if float(solve(mid) @ prices) <= budget.remaining + 1e-9:
                lo = mid
            else:
                hi = mid - 1
        return solve(lo)

    def _m_cap(self, roots: int) -> int:
        """Most roots a prompt may get when the plan buys `roots`: m_max, lowered so that spending
        them takes at least `min_prompts` prompts."""
        if self.min_prompts < 1 or roots < 1:
            return self.m_max
        return max(self.m_min, min(self.m_max, math.ceil(roots / self.min_prompts)))

    def plan_continuations(
        self, tree: RolloutTree, count: int | None = None, *,
        allowance: float | None = None, price_of: Callable[[Node], float] | None = None,
    ) -> list[tuple[Node, int]]:
        """Continuations per prefix of this prompt's bare rollouts. By default `count` =
        continuations_per_root x bare rollouts (m_i N); with `allowance` and `price_of` (an
        exact cost unit) the continuations' total price must fit the allowance instead."""
        candidates = tree.prefix_candidates(include_final=self.include_final)
        count = self.continuations_per_root * tree.bare_rollouts if count is None else count
        priced = allowance is not None and price_of is not None
        if not candidates or (allowance <= 0 if priced else count <= 0):
            return []
        costs = np.array([price_of(c.node) for c in candidates], dtype=float) if priced else None
        if self.prefixes == "active":
            values = self.predictor.predict([c.node.prefix_text for c in candidates])
            q = reproduce_probs(values, np.array([c.reward for c in candidates]))
            ks = allocate_prefixes(q, allowance, costs) if priced else allocate_prefixes(q, count)
        elif priced:
            rng = self._prompt_rng(tree)
            ks = np.zeros(len(candidates), dtype=np.int64)
            left = allowance + 1e-9
            while True:
                j = int(rng.integers(len(candidates)))
                if costs[j] > left:
                    break
                ks[j] += 1
                left -= costs[j]
        else:
            ks = np.bincount(self._prompt_rng(tree).integers(len(candidates), size=count),
                             minlength=len(candidates))
        return [(c.node, int(k)) for c, k in zip(candidates, ks) if k]

    def _prompt_rng(self, tree: RolloutTree) -> np.random.Generator:
        """Uniform prefix draws from a stream of (step, prompt): prompts finish their bare rollouts
        in whatever order the engine and tools allow, so a shared stream would hand the same draws
        to different prompts run to run (and resume would not be exact)."""
        prompt = f"{tree.prompt_id}\0{tree.root.prefix_text}".encode("utf-8", "surrogatepass")
        return np.random.default_rng([self._step_key, zlib.crc32(prompt)])
