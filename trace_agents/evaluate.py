"""Evaluate an agent on named benchmarks: accuracy, mean score, EM/F1 for QA, BFCL subsets.

A benchmark is an env plus arguments; the names below cover the built-in suites, and a path to a
math file (``.jsonl``/``.json``/``.parquet``) or ``qa:<path>`` (HotpotQA, 2Wiki, MuSiQue,
Bamboogle, FlashRAG JSONL) evaluates your own data. Each task gets one greedy episode (or
``samples`` sampled ones), run through the same rollout machinery as training.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import trace_envs  # noqa: F401  (registers the envs)
from trace_agents.backends.base import Backend, SamplingParams
from trace_agents.rollout import Episode, RolloutRunner


@dataclass(frozen=True)
class Benchmark:
    name: str
    env_id: str
    kwargs: dict[str, Any]
    metrics: tuple[str, ...] = ()
    """Per-episode ``info`` scores to average (an episode that never answered scores 0)."""


QA_METRICS = ("em", "f1")


BENCHMARKS: dict[str, Benchmark] = {
    "arithmetic": Benchmark("arithmetic", "trace/Calculator-v0", {"split": "test"}),
    "gsm_symbolic": Benchmark("gsm_symbolic", "trace/Calculator-v0", {"suite": "gsm_symbolic"}),
    "champ": Benchmark("champ", "trace/Calculator-v0", {"suite": "champ"}),
    "multihop": Benchmark("multihop", "trace/Search-v0", {"split": "test"}, QA_METRICS),
    **{
        f"bfcl_{s}": Benchmark(f"bfcl_{s}", "trace/BFCL-v0", {"subset": s, "split": "test"})
        for s in ("base", "long_context", "miss_func", "miss_param")
    },
}


def resolve(spec: str) -> Benchmark:
    """A benchmark name, ``qa:<path>``, a math task file path, or a training config (``.yaml``):
    that config's env on its test split, so a model is evaluated on what it was trained for."""
    if spec in BENCHMARKS:
        return BENCHMARKS[spec]
    if Path(spec).suffix.lower() in {".yaml", ".yml"}:
        from trace_agents.train.config import load_config

        env = load_config(spec).env
        return Benchmark(Path(spec).stem, env.id, {**env.kwargs, "split": "test"})
    if spec.startswith("qa:"):
        return Benchmark(Path(spec[3:]).stem, "trace/Search-v0", {"suite": spec[3:]}, QA_METRICS)
    if Path(spec).suffix.lower() in {".jsonl", ".json", ".parquet"}:
        return Benchmark(Path(spec).stem, "trace/Calculator-v0", {"suite": spec})
    raise ValueError(f"unknown benchmark {spec!r}: use one of {', '.join(sorted(BENCHMARKS))}, "
                     "qa:<path>, a math file path or a training config (.yaml)")


async def evaluate(
    benchmark: Benchmark,
    backend: Backend,
    tokenizer: Any,
    *,
    limit: int | None = None,
    samples: int = 1,
    sampling: SamplingParams = SamplingParams(temperature=0.0, max_tokens=256),
    max_concurrency: int = 16,
    env_overrides: dict[str, Any] | None = None,
    dialect: str = "auto",
    env: Any = None,
    on_episode: Callable[[Episode], None] | None = None,
) -> dict[str, Any]:
    """Run the episodes and average their metrics; ``on_episode`` sees each one as it ends
    (progress). ``env`` is the benchmark's env when the caller already built it (and closes it);
    otherwise the env made here is closed here."""
    if env is None:
        opened = gym.make(benchmark.env_id, **{**benchmark.kwargs, **(env_overrides or {})})
    else:
        opened = contextlib.nullcontext(env)
    with opened as env:
        task_ids = [t.id for t in env.tasks][:limit]
        runner = RolloutRunner(backend, tokenizer=tokenizer, sampling=sampling,
                               max_concurrency=max_concurrency, dialect=dialect)

        async def one(task_id: str) -> list[Any]:
            tree = runner.new_tree(env.fork(), task_id)
            return await runner.rollouts(tree, tree.root, samples, on_episode=on_episode)

        episodes = [e for batch in await asyncio.gather(*(one(t) for t in task_ids)) for e in batch]
        finished = [e for e in episodes if e.status != "failed"]
        infos = [e.leaf.handle.info for e in finished if e.leaf is not None]  # no answer → 0
        report: dict[str, Any] = {
            "benchmark": benchmark.name, "tasks": len(task_ids), "episodes": len(episodes),
            "failed": len(episodes) - len(finished),
            "accuracy": float(np.mean([e.reward or 0.0 for e in finished])) if finished else 0.0,
            "score": float(np.mean([i.get("score", 0.0) for i in infos])) if infos else 0.0,
            "turns": float(np.mean([len(e.turns) for e in finished])) if finished else 0.0,
        }
        for key in benchmark.metrics:
            report[key] = float(np.mean([i.get(key, 0.0) for i in infos])) if infos else 0.0
        return report
