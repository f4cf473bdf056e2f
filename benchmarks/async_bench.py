"""Step period of GRPO and TRACE through the training loop (sampling + update + weight sync),
in process on the tiny Qwen3, at equal sampling budget (12 traj-eq, the shape of
rollout_bench.py's section c): how much a TRACE step's tail of continuations costs
(docs/training.md, "The TRACE step's tail, measured").

    python benchmarks/async_bench.py --steps 10

Prints, per allocator, the steady-state step period (median and min over steps 1.., step 0 pays
the warm-up), the engine's decode steps and mean batch rows per step, mixed trees and effective
ratio, then TRACE/GRPO ratios. The loop is synchronous (an overlapped mode is not built).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from trace_agents.models import set_threads
from trace_agents.train.config import TrainConfig
from trace_agents.train.loop import build_arms, close_envs, run_step


def config(allocator: str, args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": args.seed, "steps": args.steps, "allocators": [allocator], "threads": args.threads,
        "model": {"name": "tiny-qwen3"},
        "backend": {"max_concurrency": args.cap},
        "env": {"id": "trace/Calculator-v0",
                "kwargs": {"max_turns": 3, "suite_options": {"steps": 2, "digits": 2, "size": 64}}},
        "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens},
        "budget": {"pool": 16, "roots": args.roots, "continuations_per_root": 2, "group_size": 4,
                   "m_min": 2, "m_max": 4},
        "optim": {"lr": 1e-3, "micro_batch": 8},
    })


async def run_arm(allocator: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(allocator, args)
    set_threads(cfg.threads)
    (arm,) = build_arms(cfg, progress=False, warm=False, console=Console(quiet=True))
    stats = arm.backend.engine.stats
    periods, decode, rows, mixed, effective = [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as out:
            for step in range(cfg.steps):
                before = dict(stats)
                started = time.perf_counter()
                record = await run_step(arm, step, cfg, Path(out))
                periods.append(time.perf_counter() - started)
                steps = stats["decode_steps"] - before["decode_steps"]
                decode.append(steps)
                rows.append((stats["row_steps"] - before["row_steps"]) / max(steps, 1))
                mixed.append(record["mixed_trees"])
                effective.append(record["effective_ratio"])
    finally:
        close_envs([arm])
        await arm.backend.aclose()
    steady = periods[1:] or periods
    return {"period_median_s": statistics.median(steady), "period_min_s": min(steady),
            "decode_steps": statistics.mean(decode), "mean_batch_rows": statistics.mean(rows),
            "mixed_trees": statistics.mean(mixed), "effective_ratio": statistics.mean(effective),
            "budget": cfg.budget.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--roots", type=int, default=6, help="TRACE's M; GRPO spends M(1+N/2)")
    parser.add_argument("--cap", type=int, default=16, help="engine batch rows / episodes in flight")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {name: asyncio.run(run_arm(name, args)) for name in ("grpo", "trace")}
    keys = list(report["grpo"])
    print(f"{'sync':<6}" + "".join(f"{k:>17}" for k in keys))
    for name, row in report.items():
        print(f"{name:<6}" + "".join(f"{row[k]:>17.3f}" for k in keys))
    g, t = report["grpo"], report["trace"]
    print(f"TRACE/GRPO period median {t['period_median_s'] / g['period_median_s']:.2f}, "
          f"min {t['period_min_s'] / g['period_min_s']:.2f} (goal for async: <= 1.05); "
          f"decode steps {t['decode_steps'] / g['decode_steps']:.2f}; "
          f"mean batch rows {t['mean_batch_rows']:.1f} vs {g['mean_batch_rows']:.1f}")


if __name__ == "__main__":
    main()
