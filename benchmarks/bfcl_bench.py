"""Fork and snapshot cost of `trace/BFCL-v0` on its largest long-context state.

    python benchmarks/bfcl_bench.py [--repeats 200] [--json]

The entry is the long-context one whose back-end state is largest (bytes of its snapshot) at
its last user turn, reached by replaying BFCL's ground truth. Medians, in microseconds, of:
``fork()``; ``snapshot()`` + ``restore()`` into a fresh env; replaying the calls from
``reset()`` to reach the same turn; ``copy.deepcopy`` of the back-end objects.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

from trace_envs.bfcl.env import BFCLEnv
from trace_envs.bfcl.replay import END_OF_TURN, ground_truth_actions


def at_last_turn(env: BFCLEnv, task_id: str) -> None:
    """Reset to ``task_id`` and play its ground truth up to (not closing) the last user turn."""
    env.reset(options={"task_id": task_id})
    actions = ground_truth_actions(env.task)  # type: ignore[arg-type]
    for i, action in enumerate(actions):
        if action:
            env.step(action)
        if i < len(actions) - 1:
            env.step(END_OF_TURN)


def largest_state_entry(env: BFCLEnv) -> tuple[str, int]:
    sizes = {}
    for task in env.tasks:
        at_last_turn(env, task.id)
        sizes[task.id] = len(env.snapshot())
    task_id = max(sizes, key=sizes.__getitem__)
    return task_id, sizes[task_id]


def median_us(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)

    env = BFCLEnv("long_context")
    task_id, size = largest_state_entry(env)
    at_last_turn(env, task_id)
    assert env.task is not None
    actions_played = sum(1 for a in ground_truth_actions(env.task)[:-1] if a)
    target = BFCLEnv("long_context")

    def snapshot_restore() -> None:
        target.restore(env.snapshot())

    results = {
        "entry": task_id,
        "classes": sorted(env.instances),
        "snapshot_bytes": size,
        "fork_us": median_us(env.fork, args.repeats),
        "snapshot_restore_us": median_us(snapshot_restore, args.repeats),
        "replay_us": median_us(lambda: at_last_turn(target, task_id), max(10, args.repeats // 10)),
        "deepcopy_us": median_us(lambda: copy.deepcopy(env.instances), args.repeats),
    }
    for key, value in results.items():
        print(f"{key:>20}: {value:.1f}" if isinstance(value, float) else f"{key:>20}: {value}")
    print(f"{'(replay steps)':>20}: {actions_played} tool-calling actions + turn ends")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
