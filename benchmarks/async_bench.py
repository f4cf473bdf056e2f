"""Step period of GRPO and TRACE through the training loop (sampling + update + weight sync),
in process on the tiny Qwen3, at equal sampling budget (12 traj-eq, the shape of
rollout_bench.py's section c), synchronous and asynchronous (``pipeline.staleness``): how much a
TRACE step's tail of continuations costs, and how much of it the next step's sampling fills
(docs/training.md, "Asynchronous steps").

    python benchmarks/async_bench.py --steps 10 --staleness 0 1 [--env parity] [--launch ready]
        [--backend standin]

Prints, per mode and allocator, the steady-state step period (mean and median of the time
between consecutive steps' ends, from step 1 on: step 0 pays the warm-up; overlapping steps end
in bursts, so the mean is the throughput figure), the engine's decode
steps and mean batch rows per step, mixed trees, effective ratio, the share of trained tokens
an older policy sampled and the share of those whose weight was truncated, then TRACE/GRPO ratios
per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.train.parity_env import ENV_ID as PARITY  # noqa: E402  (registers the env)
from trace_agents.models import load_model, set_threads  # noqa: E402
from trace_agents.testing.standin_server import StandinServer  # noqa: E402
from trace_agents.train.config import TrainConfig  # noqa: E402
from trace_agents.train.loop import Pipeline, build_arms, close_envs  # noqa: E402

ENVS = {
    "calculator": {"id": "trace/Calculator-v0",
                   "kwargs": {"max_turns": 3, "suite_options": {"steps": 2, "digits": 2, "size": 64}}},
    "parity": {"id": PARITY},
}
"""The tiny model earns nothing on the calculator (no update runs: sampling alone); on the test
suite's parity env its outcomes are mixed, so every step updates and stale tokens are corrected."""


def config(allocator: str, staleness: int, args: argparse.Namespace, url: str | None = None) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": args.seed, "steps": args.steps, "allocators": [allocator], "threads": args.threads,
        "model": {"name": "tiny-qwen3"},
        "backend": {"max_concurrency": args.cap, **({"kind": "sglang", "url": url} if url else {})},
        "env": ENVS[args.env],
        "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens},
        "budget": {"pool": 16, "roots": args.roots, "continuations_per_root": 2, "group_size": 4,
                   "m_min": 2, "m_max": 4},
        "optim": {"lr": 1e-3, "micro_batch": 8},
        "pipeline": {"staleness": staleness, "launch": args.launch}, "checkpoint_every": args.steps,
    })


async def run_arm(allocator: str, staleness: int, args: argparse.Namespace) -> dict[str, Any]:
    server = None
    if args.backend == "standin":  # its own copy of the same start weights, synced from disk
        model, tokenizer = load_model("tiny-qwen3", "float32")
        server = StandinServer(model, tokenizer, max_batch=args.cap).start()
    cfg = config(allocator, staleness, args, url=server and server.url)
    set_threads(cfg.threads)
    (arm,) = build_arms(cfg, progress=False, warm=False, console=Console(quiet=True))
    stats = (server.standin.backend if server else arm.backend).engine.stats
    pipe = Pipeline(arm, cfg, drains={cfg.steps - 1})
    periods, decode, rows, mixed, effective, stale, trained, capped = [], [], [], [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as out:
            for step in range(cfg.steps):
                before = dict(stats)
                record = await pipe.step(step, Path(out))
                steps = stats["decode_steps"] - before["decode_steps"]
                if record["period_s"] is not None:  # steady state: from step 1 on
                    periods.append(record["period_s"])
                    decode.append(steps)
                    rows.append((stats["row_steps"] - before["row_steps"]) / max(steps, 1))
                mixed.append(record["mixed_trees"])
                effective.append(record["effective_ratio"])
                stale.append(record["stale_tokens"])
                trained.append(record["trained_tokens"])
                capped.append(record["stale_capped"])
    finally:
        await pipe.cancel()
        close_envs([arm])
        await arm.backend.aclose()
        if server is not None:
            server.stop()
    return {"period_mean_s": statistics.mean(periods), "period_median_s": statistics.median(periods),
            "decode_steps": statistics.mean(decode), "mean_batch_rows": statistics.mean(rows),
            "mixed_trees": statistics.mean(mixed), "effective_ratio": statistics.mean(effective),
            "stale_share": sum(stale) / max(sum(trained), 1),
            "capped_share": sum(capped) / max(sum(stale), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--env", choices=sorted(ENVS), default="calculator")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1],
                        help="modes to run: 0 synchronous, s > 0 asynchronous")
    parser.add_argument("--backend", choices=["inprocess", "standin"], default="inprocess",
                        help="standin: the stand-in SGLang server (own model copy, weights synced "
                             "from disk, generating through the update)")
    parser.add_argument("--launch", choices=["ready", "tail"], default="ready",
                        help="pipeline.launch of the asynchronous modes")
    parser.add_argument("--roots", type=int, default=6, help="TRACE's M; GRPO spends M(1+N/2)")
    parser.add_argument("--cap", type=int, default=16, help="engine batch rows / episodes in flight")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {(s, name): asyncio.run(run_arm(name, s, args))
              for s in args.staleness for name in ("grpo", "trace")}
    keys = list(next(iter(report.values())))
    print(f"{'mode':<14}" + "".join(f"{k:>17}" for k in keys))
    for (s, name), row in report.items():
        print(f"{('sync' if s == 0 else f'async s={s}') + ' ' + name:<14}"
              + "".join(f"{row[k]:>17.3f}" for k in keys))
    base = report.get((0, "grpo"))
    for s in args.staleness:
        g, t = report[s, "grpo"], report[s, "trace"]
        line = (f"s={s}: TRACE/GRPO period mean {t['period_mean_s'] / g['period_mean_s']:.2f}, "
                f"median {t['period_median_s'] / g['period_median_s']:.2f}; decode steps "
                f"{t['decode_steps'] / g['decode_steps']:.2f}; rows {t['mean_batch_rows']:.1f} vs "
                f"{g['mean_batch_rows']:.1f}")
        if base is not None and s:
            line += f"; TRACE async / GRPO sync mean {t['period_mean_s'] / base['period_mean_s']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
