"""TRACE sampler steps end to end on CPU: step time, tokens/s, prefix-cache hits of continuations.

    python benchmarks/rollout_bench.py --model smollm2 --backend standin --steps 2
    python benchmarks/rollout_bench.py --model tiny --backend inprocess --env bfcl --json

Runs the calculator (or search, or BFCL) env with a real transformer (tiny random Qwen3 or SmolLM2-135M-
Instruct), in process or through the stand-in SGLang server on loopback, allocator TRACE (or a
baseline), and prints one line per step; ``--json`` prints a JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_pool(env_name: str, n: int, max_turns: int):
    from trace_agents.sampler import Candidate

    if env_name == "search":
        from trace_envs.search.env import SearchEnv

        env = SearchEnv(max_turns=max_turns)
    elif env_name == "bfcl":
        from trace_envs.bfcl.env import BFCLEnv

        env = BFCLEnv("base", max_turns=max_turns)
    else:
        from trace_envs.calculator.env import CalculatorEnv

        env = CalculatorEnv("arithmetic", max_turns=max_turns, suite_options={"size": 64, "seed": 0})
    return [Candidate(env, t.id) for t in env.tasks[:n]]


def build_allocator(name: str, seed: int):
    from trace_allocation.allocators import GrpoAllocator, TreeAllocator
    from trace_allocation.predictors import LexicalPredictor

    rng = np.random.default_rng(seed)
    if name == "grpo":
        return GrpoAllocator(4, rng=rng)
    if name == "random_branch":
        return TreeAllocator(None, roots="uniform", prefixes="uniform", group_size=4, rng=rng)
    return TreeAllocator(LexicalPredictor(2**14), continuations_per_root=2, m_max=8, rng=rng, name="trace")


async def main_async(args: argparse.Namespace) -> dict:
    from trace_agents.backends import SamplingParams, SGLangBackend
    from trace_agents.backends.hf import HFBackend
    from trace_agents.models import smollm2, tiny_qwen3
    from trace_agents.rollout import RolloutRunner
    from trace_agents.sampler import TraceSampler
    from trace_agents.standin_server import StandinServer
    from trace_allocation.budget import Budget

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # on a shared CPU, fewer threads avoid oversubscription
    t0 = time.perf_counter()
    model, tok = tiny_qwen3() if args.model == "tiny" else smollm2()
    load_s = time.perf_counter() - t0
    server = None
    if args.backend == "standin":
        server = StandinServer(model, tok, max_batch=args.max_batch).start()
        backend = SGLangBackend(server.url)
    else:
        backend = HFBackend(model, tok, max_batch=args.max_batch)
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    runner = RolloutRunner(backend, tokenizer=tok, sampling=sampling, seed=args.seed)
    sampler = TraceSampler(runner, build_allocator(args.allocator, args.seed), progress=not args.json)
    pool = build_pool(args.env, args.pool, args.max_turns)
    steps = []
    try:
        for _ in range(args.steps):
            result = await sampler.step(pool, Budget(args.budget))
            m = result.metrics
            steps.append(m)
            if not args.json:
                print(f"step {m['step']}: {m['seconds']:.1f} s, {m['episodes']} episodes "
                      f"({m['roots']} roots + {m['continuations']} continuations), "
                      f"{m['generated_tokens']} tokens ({m['tokens_per_s']:.1f}/s), "
                      f"cost {m['cost']:g}, effective ratio {m['effective_ratio']:.2f}, "
                      f"reward {m['reward_mean']:.2f}, prefix-cache hits {m['cache_hit_rate']:.1%}")
    finally:
        await backend.aclose()
        if server is not None:
            server.stop()
    return {
        "model": args.model, "backend": args.backend, "env": args.env, "allocator": args.allocator,
        "budget": args.budget, "threads": args.threads or None, "load_s": round(load_s, 2),
        "step_s": [round(m["seconds"], 2) for m in steps],
        "tokens_per_s": [round(m["tokens_per_s"], 1) for m in steps],
        "episodes": [m["episodes"] for m in steps],
        "cache_hit_rate": [round(m["cache_hit_rate"], 3) for m in steps],
        "effective_ratio": [m["effective_ratio"] for m in steps],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--backend", choices=["inprocess", "standin"], default="inprocess")
    p.add_argument("--env", choices=["calculator", "search", "bfcl"], default="calculator")
    p.add_argument("--allocator", choices=["trace", "grpo", "random_branch"], default="trace")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--budget", type=float, default=16)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report) if args.json else f"model load {report['load_s']} s")


if __name__ == "__main__":
    main()
