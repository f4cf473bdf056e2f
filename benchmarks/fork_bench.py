"""Cost of branching a calculator episode at turn t: fork, snapshot+restore, or replay.

Replay is what users do today without fork: build a fresh env, reset to the task, and re-run the
first t actions. Prints a table, or with ``--json`` one JSON object:
``{"fork_us": {turn: us}, "snapshot_restore_us": {...}, "replay_us": {...}}`` (medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from trace_envs.calculator.env import CalculatorEnv

TURNS = (1, 4, 8, 16)


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(samples)


def _action(i: int) -> str:
    expr = "12345 * 6789" if i == 0 else f"ans / {i + 1} + {i} ** 3"
    return f'Step {i}. <tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'


def measure(repeats: int) -> dict[str, dict[int, float]]:
    make = lambda: CalculatorEnv(suite_options={"size": 200}, max_turns=max(TURNS) + 1)  # noqa: E731
    results: dict[str, dict[int, float]] = {"fork_us": {}, "snapshot_restore_us": {}, "replay_us": {}}
    for turn in TURNS:
        env = make()
        env.reset(seed=0)
        task_id = env.task.id
        actions = [_action(i) for i in range(turn)]
        for a in actions:
            env.step(a)
        target = make()

        def replay() -> None:
            fresh = make()
            fresh.reset(options={"task_id": task_id})
            for a in actions:
                fresh.step(a)

        results["fork_us"][turn] = _median_us(env.fork, repeats)
        results["snapshot_restore_us"][turn] = _median_us(
            lambda: target.restore(env.snapshot()), repeats
        )
        results["replay_us"][turn] = _median_us(replay, max(20, repeats // 10))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = measure(args.repeats)
    if args.json:
        print(json.dumps(results))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Branching a calculator episode (median µs)")
    for col in ("turn", "fork", "snapshot+restore", "replay", "replay / fork"):
        table.add_column(col, justify="right")
    for t in TURNS:
        f, s, r = (results[k][t] for k in ("fork_us", "snapshot_restore_us", "replay_us"))
        table.add_row(str(t), f"{f:.1f}", f"{s:.1f}", f"{r:.1f}", f"{r / f:.0f}×")
    Console().print(table)


if __name__ == "__main__":
    main()
