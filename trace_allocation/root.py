"""Stage 1: split the root-rollout budget over candidate prompts, exactly.

Objective: maximize sum_i V_root(v_i, m_i) with m_i in {0} u [m_min, m_max] and sum_i m_i <= budget,
where V_root(v, m) = 1 - v^m - (1-v)^m is the chance that m rollouts of prompt i are mixed.

Why the solver is exact (and fast):
* V_root depends on v only through u = min(v, 1-v) and is nondecreasing in u for every m
  (dV/du = m[(1-u)^(m-1) - u^(m-1)] >= 0 on [0, 1/2]). Swapping the whole allocation of an opened
  prompt onto a closed prompt with larger u never lowers the objective, so some optimum opens
  exactly the K prompts with the largest u, for some K.
* Once the opened set is fixed, each opened prompt holds m_min rollouts and the rest of the budget
  buys single rollouts whose gains d(m) = u^(m-1)(1-u) + (1-u)^(m-1)u decrease in m: a concave
  resource allocation, solved exactly by taking the largest gains.
* Sweeping K upward adds one prompt's gains to the pool while the spare budget shrinks by m_min, so
  the cut-off gain only rises: a gain that once falls out of the top set never returns, and one
  min-heap over the whole sweep evaluates every K in O(K E log) time (E = m_max - m_min).
"""

from __future__ import annotations

import heapq

import numpy as np


def root_value(values: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
    """V_root(v, m) = 1 - v^m - (1-v)^m, and 0 for m < 2 (a single rollout can never be mixed)."""
    v = np.asarray(values, dtype=float)
    m = np.asarray(counts)
    return np.where(m >= 2, 1.0 - v**m - (1.0 - v) ** m, 0.0)


def allocate_roots(values: np.ndarray, budget: int, *, m_min: int = 2, m_max: int = 16) -> np.ndarray:
    """Root rollouts per prompt maximizing the expected number of mixed groups (exactly).

    Returns int64 counts aligned with `values`, each 0 or in [m_min, m_max], summing to at most
    `budget`. Rollouts with zero gain are not handed out, so the sum can be below the budget.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if not 1 <= m_min <= m_max:
        raise ValueError(f"need 1 <= m_min <= m_max, got m_min={m_min}, m_max={m_max}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if np.any(~np.isfinite(v)) or np.any((v < 0) | (v > 1)):
        raise ValueError("values must be probabilities in [0, 1]")
    counts = np.zeros(v.size, dtype=np.int64)
    k_max = min(v.size, int(budget) // m_min)
    if k_max == 0:
        return counts
    u = np.minimum(v, 1.0 - v)
    order = np.argsort(-u, kind="stable")[:k_max]
    u_top = u[order]
    opening = root_value(u_top, m_min)
    gains = _extra_gains(u_top, m_min, m_max)

    best_k, best_value = 0, 0.0
    top: list[float] = []
    top_sum, opened_sum = 0.0, 0.0
    for k, (open_gain, item_gains) in enumerate(zip(opening.tolist(), gains.tolist()), start=1):
        opened_sum += open_gain
        spare = int(budget) - k * m_min
        for g in item_gains:
            if g <= 0.0:
                break  # gains decrease within a prompt: the rest are zero too
            if len(top) < spare:
                heapq.heappush(top, g)
                top_sum += g
            elif top and g > top[0]:
                top_sum += g - heapq.heapreplace(top, g)
        while len(top) > spare:
            top_sum -= heapq.heappop(top)
        if opened_sum + top_sum > best_value:
            best_k, best_value = k, opened_sum + top_sum
    if best_k == 0:
        return counts
    counts[order[:best_k]] = m_min + _top_gain_counts(gains[:best_k], int(budget) - best_k * m_min)
    return counts


def _extra_gains(u: np.ndarray, m_min: int, m_max: int) -> np.ndarray:
    """Gain of the m-th rollout, m = m_min+1..m_max, per prompt (rows nonincreasing)."""
    m = np.arange(m_min + 1, m_max + 1)
    uu = u[:, None]
    return uu ** (m - 1) * (1.0 - uu) + (1.0 - uu) ** (m - 1) * uu


def _top_gain_counts(gains: np.ndarray, spare: int) -> np.ndarray:
    """How many of each row's gains fall in the `spare` largest positive gains overall.

    Rows are nonincreasing, so a row's selected gains form a prefix up to ties of equal value,
    which makes the count a valid allocation with the same total gain.
    """
    flat = gains.ravel()
    positive = np.flatnonzero(flat > 0.0)
    if spare < positive.size:
        positive = positive[np.argpartition(-flat[positive], spare - 1)[:spare]] if spare > 0 else positive[:0]
    chosen = np.zeros(flat.size, dtype=np.int64)
    chosen[positive] = 1
    return chosen.reshape(gains.shape).sum(axis=1)
