"""Timing of the exact solvers at the sizes named in the issue (run: python benchmarks/alloc_bench.py).

Stage 1: B = 4096 candidates, budget = 2048, m_max = 16 (goal: optimal, <= 50 ms).
Stage 2: 16 rollouts x 10 turns of candidate prefixes, 2 continuations per rollout (goal <= 1 ms).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.allocation.reference import root_optimum_dp  # noqa: E402
from trace_allocation import allocate_prefixes, allocate_roots, root_value  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    report: dict[str, float] = {}
    pools = {"u_shaped": rng.beta(0.4, 0.4, size=4096), "uniform": rng.random(4096), "all_half": np.full(4096, 0.5)}
    for name, values in pools.items():
        report[f"stage1_ms_{name}"] = round(best_ms(lambda: allocate_roots(values, 2048, m_min=2, m_max=16), 10), 2)
        counts = allocate_roots(values, 2048, m_min=2, m_max=16)
        report[f"stage1_gap_to_dp_{name}"] = (root_optimum_dp(values, 2048, 2, 16)
                                              - float(root_value(values, counts).sum()))
    q = rng.random(160)
    report["stage2_ms"] = round(best_ms(lambda: allocate_prefixes(q, 32), 200), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
