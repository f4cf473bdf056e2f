"""Slow, obviously-correct reference solvers that the fast ones are checked against."""

from __future__ import annotations

import itertools

import numpy as np

from trace_allocation.prefix import prefix_value
from trace_allocation.root import root_value


def root_optimum_dp(values: np.ndarray, budget: int, m_min: int, m_max: int) -> float:
    """Multiple-choice knapsack DP over exact budget use: O(B * budget * m_max)."""
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    for v in np.asarray(values, dtype=float):
        new = best.copy()
        for m in range(m_min, min(m_max, budget) + 1):
            new[m:] = np.maximum(new[m:], best[: budget + 1 - m] + float(root_value(v, m)))
        best = new
    return float(best.max())


def root_optimum_enumerate(values: np.ndarray, budget: int, m_min: int, m_max: int) -> float:
    choices = [0, *range(m_min, m_max + 1)]
    best = 0.0
    for ms in itertools.product(choices, repeat=len(values)):
        if sum(ms) <= budget:
            best = max(best, float(root_value(np.asarray(values), np.asarray(ms)).sum()))
    return best


def prefix_optimum_enumerate(q: np.ndarray, budget: int) -> float:
    best = 0.0
    for ks in itertools.product(range(budget + 1), repeat=len(q)):
        if sum(ks) <= budget:
            best = max(best, float(prefix_value(np.asarray(q), np.asarray(ks)).sum()))
    return best
