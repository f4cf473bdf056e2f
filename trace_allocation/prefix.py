"""Stage 2: spread one prompt's continuations over the prefixes of its bare rollouts.

V_pref(k) = 1 - q^k is the chance that at least one of k continuations flips the observed
outcome; its increments q^(k-1)(1-q) shrink geometrically, so handing out continuations one at a
time to the largest current increment (a heap) is exactly optimal for the separable concave sum.
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


def allocate_prefixes(reproduce_probs: np.ndarray, budget: int) -> np.ndarray:
    """Continuations per prefix maximizing sum_j 1 - q_j^k_j with sum_j k_j <= budget (exactly).

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
