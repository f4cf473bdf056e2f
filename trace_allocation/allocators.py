"""TRACE and its baselines behind one interface, so one driver runs them all the same way.

Per training step a driver does:

    counts = allocator.plan_roots(prompt_texts, budget)    # root rollouts per candidate prompt
    # ... run counts[i] bare rollouts of prompt i into a RolloutTree ...
    for node, k in allocator.plan_continuations(tree):     # per prompt, as soon as its bare rollouts end
        ...  # run k continuations branched from node
    extra = allocator.plan_refill(trees, prompt_texts)     # DAPO asks for more; the others never do
    # ... repeat the rollouts (and refill) while extra.any() ...

Planning only decides counts; the driver charges the `Budget` for what actually ran.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    predictor: SuccessPredictor | None = None

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        raise NotImplementedError

    def plan_continuations(self, tree: RolloutTree, count: int | None = None) -> list[tuple[Node, int]]:
        return []

    def plan_refill(self, trees: Sequence[RolloutTree], prompt_texts: Sequence[str]) -> np.ndarray:
        return np.zeros(len(prompt_texts), dtype=np.int64)


def _groups(n_prompts: int, chosen: np.ndarray, group_size: int) -> np.ndarray:
    counts = np.zeros(n_prompts, dtype=np.int64)
    counts[chosen] = group_size
    return counts


class GrpoAllocator(Allocator):
    """Uniform prompt sampling, flat groups of G."""

    name = "grpo"

    def __init__(self, group_size: int = 8, *, rng: np.random.Generator) -> None:
        self.group_size = group_size
        self.rng = rng

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        n = min(len(prompt_texts), budget.roots_affordable() // self.group_size)
        return _groups(len(prompt_texts), self.rng.choice(len(prompt_texts), n, replace=False), self.group_size)


class PclAllocator(Allocator):
    """Prompt curriculum: keep the prompts whose predicted success is nearest 1/2, flat groups."""

    name = "pcl"

    def __init__(self, predictor: SuccessPredictor, group_size: int = 8) -> None:
        self.predictor = predictor
        self.group_size = group_size

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        n = min(len(prompt_texts), budget.roots_affordable() // self.group_size)
        distance = np.abs(self.predictor.predict(prompt_texts) - 0.5)
        return _groups(len(prompt_texts), np.argsort(distance, kind="stable")[:n], self.group_size)


class DapoAllocator(Allocator):
    """Dynamic sampling: keep drawing groups of G until the batch holds its quota of mixed groups
    (or the candidate pool runs out). Its extra cost is the point of comparison: give it a budget
    larger than the others' and report what it spent."""

    name = "dapo"

    def __init__(self, group_size: int = 8, *, batch_prompts: int, rng: np.random.Generator) -> None:
        self.group_size = group_size
        self.batch_prompts = batch_prompts
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

    def _draw(self, n_prompts: int, n: int) -> np.ndarray:
        chosen = self._order[self._drawn : self._drawn + n]
        self._drawn += chosen.size
        return _groups(n_prompts, chosen, self.group_size)


class TreeAllocator(Allocator):
    """TRACE: Stage 1 roots and Stage 2 continuations, each `active` (predictor-guided, exact
    solvers) or `uniform` (random prompts in groups of `group_size`; random eligible prefixes).
    active/active is TRACE; uniform/uniform is TreePO-style random branching with the same tree
    shape; the mixed pairs are the ablation of Table 1."""

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
        self.rng = rng
        self.name = name or f"tree_{roots}_{prefixes}"

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        n_roots = budget.roots_affordable(self.continuations_per_root)
        if self.roots == "active":
            values = self.predictor.predict(prompt_texts)
            return allocate_roots(values, n_roots, m_min=self.m_min, m_max=self.m_max)
        n = min(len(prompt_texts), n_roots // self.group_size)
        return _groups(len(prompt_texts), self.rng.choice(len(prompt_texts), n, replace=False), self.group_size)

    def plan_continuations(self, tree: RolloutTree, count: int | None = None) -> list[tuple[Node, int]]:
        """Continuations per prefix of this prompt's bare rollouts; `count` defaults to
        continuations_per_root x bare rollouts (m_i N)."""
        candidates = tree.prefix_candidates(include_final=self.include_final)
        count = self.continuations_per_root * tree.bare_rollouts if count is None else count
        if not candidates or count <= 0:
            return []
        if self.prefixes == "active":
            values = self.predictor.predict([c.node.prefix_text for c in candidates])
            q = reproduce_probs(values, np.array([c.reward for c in candidates]))
            ks = allocate_prefixes(q, count)
        else:
            ks = np.bincount(self.rng.integers(len(candidates), size=count), minlength=len(candidates))
        return [(c.node, int(k)) for c, k in zip(candidates, ks) if k]
