"""Stage 2: spread one prompt's continuations over the prefixes of its bare rollouts.

V_pref(k) = 1 - q^k is the chance that at least one of k continuations flips the observed
outcome; its increments q^(k-1)(1-q) shrink geometrically, so handing out continuations one at a
time to the largest current increment (a heap) is exactly optimal for the separable concave sum.
When continuations have different prices (an exact cost unit: one branched at turn t of a T-turn
rollout generates T - t turns), `allocate_prefixes(q, budget, costs=...)` hands them out by gain per
unit of cost instead: the usual greedy for a budgeted concave sum, near-optimal but not exact.
"""

from __future__ import annotations

import heapq

import numpy as np


def prefix_value(reproduce_probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """V_pref = 1 - q^k: the chance that k continuations produce at least one flipped outcome."""
    return 1.0 - np.asarray(reproduce_probs, dtype=float) ** np.asarray(counts)


def reproduce_probs(values: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """q = r V + (1 - r)(1 - V): the chance that one continuation reproduces the observed reward."""
    v = np.asarray(values, dtype=float)
    r = np.asarray(rewards, dtype=float)
    return r * v + (1.0 - r) * (1.0 - v)


def allocate_prefixes(reproduce_probs: np.ndarray, budget: float, costs: np.ndarray | None = None) -> np.ndarray:
    """Continuations per prefix maximizing sum_j 1 - q_j^k_j with sum_j k_j <= budget (exactly),
    or, with `costs`, sum_j k_j costs_j <= budget (greedy by gain per cost).

    Returns int64 counts aligned with the input. Zero-gain continuations (q = 1) are not handed
    out; ties go to the lower index, so the result is deterministic.
    """
    q = np.asarray(reproduce_probs, dtype=float)
    if q.ndim != 1:
        raise ValueError("reproduce_probs must be one-dimensional")
    if np.any(~np.isfinite(q)) or np.any((q < 0) | (q > 1)):
        raise ValueError("reproduce_probs must be probabilities in [0, 1]")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if costs is not None:
        return _allocate_priced(q, float(budget), np.asarray(costs, dtype=float))
    counts = np.zeros(q.size, dtype=np.int64)
    qs = q.tolist()
    heap = [(q_j - 1.0, j) for j, q_j in enumerate(qs) if q_j < 1.0]  # first gain: 1 - q
    heapq.heapify(heap)
    for _ in range(int(budget)):
        if not heap:
            break
        neg_gain, j = heapq.heappop(heap)
        counts[j] += 1
        next_gain = -neg_gain * qs[j]
        if next_gain > 0.0:
            heapq.heappush(heap, (-next_gain, j))
    return counts


def _allocate_priced(q: np.ndarray, budget: float, costs: np.ndarray) -> np.ndarray:
    if costs.shape != q.shape or np.any(~np.isfinite(costs)) or np.any(costs <= 0):
        raise ValueError("costs must be positive and aligned with reproduce_probs")
    counts = np.zeros(q.size, dtype=np.int64)
    heap = [(-(1.0 - q_j) / c_j, j) for j, (q_j, c_j) in enumerate(zip(q.tolist(), costs.tolist())) if q_j < 1.0]
    heapq.heapify(heap)
    left = budget
    while heap:
        neg_rate, j = heapq.heappop(heap)
        if costs[j] > left + 1e-9:
            continue  # never fits again: the budget only shrinks
        counts[j] += 1
        left -= costs[j]
        next_rate = -neg_rate * q[j]
        if next_rate > 0.0:
            heapq.heappush(heap, (-next_rate, j))
    return counts
