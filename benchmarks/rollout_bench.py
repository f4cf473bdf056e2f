"""Rollout speed, side by side in one run: blocking tools, prefix reuse, TRACE vs GRPO, stand-in.

    python benchmarks/rollout_bench.py                       # all sections, tiny Qwen3 + SmolLM2
    python benchmarks/rollout_bench.py --models tiny --json  # one JSON object on the last line

(a) 8 concurrent search episodes (search, then answer) against a 50 ms engine and a retriever
    that blocks for 0.2 s: env steps on the event loop (how rollouts ran before) vs. in the
    runner's worker pool vs. the HTTP retriever's async path, and the no-blocking ideal.
(b) one TRACE step in process with and without prefix reuse, per model: tokens/s, prompt
    tokens recomputed per generated token, and per continuation the share of its prefix that
    was recomputed.
(c) one TRACE step vs. one GRPO step at equal cost (the README demo's budget: 8 roots + 8
    half-price continuations = 12 = 3 GRPO groups of 4), same engine and seed: wall-time ratio,
    TRACE's time in the predictor (predict + update) and in the allocation solvers, when its
    last bare rollout ended, and the engine's mean batch occupancy.
(d) (c) through the stand-in SGLang server, with its prefix-cache hit rate on continuations.

All runs use the calculator env (3 turns, 48 tokens per action, temperature 1) and the same seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENGINE_S = 0.05
RETRIEVER_S = 0.2


# ------------------------------------------------------------------ (a) blocking tools
class SlowRetriever:
    """A retriever whose every call blocks its thread for ``delay`` seconds (a slow backend)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def search(self, queries, topk=3):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return self.inner.search(queries, topk)


def concurrent_app(retriever: Any) -> Any:
    """A Search-R1 ``/retrieve`` endpoint that answers every request in its own thread (the
    project's server batches concurrent requests and runs one batch at a time)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def retrieve(request):  # type: ignore[no-untyped-def]
        body = await request.json()
        results = await run_in_threadpool(retriever.search, body["queries"], body.get("topk", 3))
        return JSONResponse({"result": [[{"document": {"id": h.passage.id, "contents": h.passage.contents},
                                          "score": h.score} for h in hits] for hits in results]})

    return Starlette(routes=[Route("/retrieve", retrieve, methods=["POST"])])


def _search_policy():  # type: ignore[no-untyped-def]
    """A 50 ms engine: one search for the question's first words, then an answer."""

    async def policy(context: str, params: Any) -> str:
        await asyncio.sleep(ENGINE_S)
        if "<tool_response>\n" in context:  # a result came back (the rules name the tag only)
            return "<answer>unknown</answer>"
        question = context.rsplit("\n", 1)[-1]
        payload = json.dumps({"name": "search", "arguments": {"query": question[:60]}})
        return f"<tool_call>\n{payload}\n</tool_call>"

    return policy


async def _search_episodes(env: Any, n: int) -> tuple[float, list[Any]]:
    from trace_agents.backends import ScriptedBackend
    from trace_agents.rollout import RolloutRunner

    runner = RolloutRunner(ScriptedBackend(_search_policy()), env_workers=n, seed=0)
    trees = [runner.new_tree(env, t.id) for t in env.tasks[:n]]
    if hasattr(env.retriever, "asearch"):  # the loop's HTTP client and connections, made once
        await asyncio.gather(*(env.retriever.asearch(["warm up"], 1) for _ in range(n)))
    started = time.perf_counter()
    groups = await asyncio.gather(*(runner.rollouts(t, t.root, 1) for t in trees))
    return time.perf_counter() - started, [e for g in groups for e in g]


def blocking_tools(n: int = 8) -> dict[str, Any]:
    from trace_envs.search.env import SearchEnv
    from trace_envs.search.qa import generated_world
    from trace_envs.search.retrievers import shared_retriever
    from trace_envs.search.server import background_server, create_app

    class OnLoopSearchEnv(SearchEnv):
        """Steps on the event loop, as rollouts did before the worker pool."""

        async def astep(self, action, executor=None):  # type: ignore[no-untyped-def]
            return self.step(action)

    world = generated_world()
    slow = SlowRetriever(shared_retriever("bm25", world.corpus), RETRIEVER_S)
    out: dict[str, Any] = {"episodes": n, "engine_s": ENGINE_S, "retriever_s": RETRIEVER_S,
                           "ideal_s": 2 * ENGINE_S + RETRIEVER_S}
    for name, env in [("blocking_s", OnLoopSearchEnv(retriever=slow)),
                      ("pooled_s", SearchEnv(retriever=slow))]:
        seconds, episodes = asyncio.run(_search_episodes(env, n))
        assert all(len(e.turns) == 2 and e.status == "terminated" for e in episodes), episodes
        out[name] = seconds
    for name, app in [("async_http_s", concurrent_app(slow)),
                      ("async_http_batching_server_s", create_app(slow))]:
        with background_server(app) as url:
            env = SearchEnv(retriever="http", url=url, timeout=5.0)
            seconds, episodes = asyncio.run(_search_episodes(env, n))
            assert all(len(e.turns) == 2 and e.status == "terminated" for e in episodes), episodes
            out[name] = seconds
    out["blocking_over_pooled"] = out["blocking_s"] / out["pooled_s"]
    out["blocking_over_async"] = out["blocking_s"] / out["async_http_s"]
    return out


# ------------------------------------------------------------- (b)-(d) model steps
class TimedPredictor:
    """Wraps a predictor and adds up the seconds spent in ``predict`` and ``update``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds, self.last_predict_s, self.update_s = inner, 0.0, 0.0, 0.0

    def predict(self, texts):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self.inner.predict(texts)
        finally:
            self.last_predict_s = time.perf_counter() - started
            self.seconds += self.last_predict_s

    def update(self, texts, targets, weights=None):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return self.inner.update(texts, targets, weights)
        finally:
            self.update_s = time.perf_counter() - started
            self.seconds += self.update_s


def load(name: str) -> tuple[Any, Any]:
    from trace_agents.models import smollm2, tiny_qwen3

    return tiny_qwen3() if name == "tiny" else smollm2()


def pool_of(args: argparse.Namespace) -> list[Any]:
    from trace_agents.sampler import Candidate
    from trace_envs.calculator.env import CalculatorEnv

    env = CalculatorEnv("arithmetic", max_turns=3,
                        suite_options={"size": 64, "seed": 0, "steps": 2, "digits": 2})
    return [Candidate(env, t.id) for t in env.tasks[: args.pool]]


def allocator_of(name: str, seed: int) -> tuple[Any, TimedPredictor | None]:
    from trace_allocation.allocators import GrpoAllocator, TreeAllocator
    from trace_allocation.predictors import LexicalPredictor

    rng = np.random.default_rng(seed)
    if name == "grpo":
        return GrpoAllocator(4, rng=rng), None
    predictor = TimedPredictor(LexicalPredictor(seed=seed))
    return TreeAllocator(predictor, continuations_per_root=1, m_min=2, m_max=4, group_size=4,  # type: ignore[arg-type]
                         rng=rng, name="trace"), predictor


async def one_step(model: Any, tok: Any, allocator_name: str, args: argparse.Namespace, *,
                   backend_kind: str = "inprocess", reuse: bool = True) -> dict[str, Any]:
    """One sampler step on a fresh backend; figures of the step, its episodes and its engine."""
    from trace_agents.backends import SamplingParams, SGLangBackend
    from trace_agents.backends.hf import HFBackend
    from trace_agents.rollout import RolloutRunner
    from trace_agents.sampler import TraceSampler
    from trace_agents.testing.standin_server import StandinServer
    from trace_allocation.budget import Budget

    server = None
    if backend_kind == "standin":
        server = StandinServer(model, tok, max_batch=args.cap).start()
        backend: Any = SGLangBackend(server.url)
        engine = server.standin.backend.engine
    else:
        backend = HFBackend(model, tok, max_batch=args.cap, prefix_cache_bytes=(1 << 30) if reuse else 0)
        engine = backend.engine
    allocator, predictor = allocator_of(allocator_name, args.seed)
    ended: list[tuple[float, bool]] = []  # (when, continuation) of each episode's end

    class Runner(RolloutRunner):
        def _account(self, episode: Any) -> None:
            ended.append((time.perf_counter(), episode.continuation))
            super()._account(episode)

    runner = Runner(backend, tokenizer=tok, seed=args.seed, max_concurrency=args.cap,
                    sampling=SamplingParams(temperature=1.0, max_tokens=args.max_tokens))
    sampler = TraceSampler(runner, allocator, progress=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = await sampler.step(pool_of(args), Budget(12, continuation_cost=0.5))
    finally:
        await backend.aclose()
        if server is not None:
            server.stop()
    cpu_s = time.process_time() - cpu_started
    m = result.metrics
    conts = [e for e in result.episodes if e.continuation and e.leaf is not None]
    firsts = [e.leaf.path()[len(e.start.path())].handle for e in conts]  # each one's first turn
    prefix = sum(t.prompt_tokens for t in firsts)
    recomputed = sum(t.prompt_tokens - (t.cached_tokens or 0) for t in firsts)
    bare_done = max((t for t, c in ended if not c), default=started) - started
    out = {
        "seconds": m["seconds"], "cpu_s": cpu_s, "episodes": m["episodes"], "roots": m["roots"],
        "continuations": m["continuations"], "cost": m["cost"], "turns": m["turns"],
        "generated_tokens": m["generated_tokens"], "tokens_per_s": m["tokens_per_s"],
        "recomputed_per_generated": (m["prompt_tokens"] - m["cached_tokens"]) / max(m["generated_tokens"], 1),
        "continuation_prefix_tokens": prefix / max(len(firsts), 1),
        "continuation_recomputed_tokens": recomputed / max(len(firsts), 1),
        "continuation_recomputed_share": recomputed / max(prefix, 1),
        "cache_hit_rate": m["cache_hit_rate"],
        "plan_s": m["plan_s"], "fit_s": m["fit_s"],
        "last_bare_episode_s": bare_done,
        "mean_batch_rows": engine.stats["row_steps"] / max(engine.stats["decode_steps"], 1),
        "decode_steps": engine.stats["decode_steps"],
        "queued_steps": engine.stats["queued_steps"],
        "ms_per_decode_step": 1e3 * engine.stats["busy_s"] / max(engine.stats["decode_steps"], 1),
        "engine_idle_share": 1 - engine.stats["busy_s"] / m["seconds"],
    }
    if predictor is not None:
        out["predictor_s"] = predictor.seconds
        out["predictor_share"] = predictor.seconds / m["seconds"]
        out["solver_s"] = max(m["plan_s"] - _planning_predict_s(predictor), 0.0)
        out["solver_share"] = out["solver_s"] / m["seconds"]
    return out


def _planning_predict_s(predictor: TimedPredictor) -> float:
    """Predictor seconds inside planning: all predict calls but the refit's (the last one)."""
    return predictor.seconds - predictor.update_s - predictor.last_predict_s


def reuse_section(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, tok = load(model_name)
    off = asyncio.run(one_step(model, tok, "trace", args, reuse=False))
    on = asyncio.run(one_step(model, tok, "trace", args, reuse=True))
    keys = ["seconds", "tokens_per_s", "generated_tokens", "recomputed_per_generated",
            "continuation_prefix_tokens", "continuation_recomputed_tokens",
            "continuation_recomputed_share"]
    return {"without_reuse": {k: off[k] for k in keys}, "with_reuse": {k: on[k] for k in keys},
            "speedup": off["seconds"] / on["seconds"]}


def trace_vs_grpo(model_name: str, args: argparse.Namespace, backend_kind: str) -> dict[str, Any]:
    """``--repeats`` interleaved GRPO/TRACE pairs (a shared CPU's load drifts), after one
    discarded warm-up step of each method (first-use costs: lazy imports, allocator pools); pairs alternate
    which method goes first. The ratio is the median of the pairs' ratios, the figures are the
    median pair's; ``cpu_ratios`` compare the process's CPU seconds, which other jobs on the
    machine disturb less than wall time."""
    model, tok = load(model_name)
    warm = argparse.Namespace(**{**vars(args), "max_tokens": min(args.max_tokens, 4)})
    for name in ("grpo", "trace"):  # every code path once, at a few tokens a turn
        asyncio.run(one_step(model, tok, name, warm, backend_kind=backend_kind))
    pairs = []
    for i in range(args.repeats):
        order = ("grpo", "trace") if i % 2 == 0 else ("trace", "grpo")
        run = {name: asyncio.run(one_step(model, tok, name, args, backend_kind=backend_kind))
               for name in order}
        trace, grpo = run["trace"], run["grpo"]
        pairs.append((trace["seconds"] / grpo["seconds"], trace, grpo))
    cpu = sorted(t["cpu_s"] / g["cpu_s"] for _, t, g in pairs)
    pairs.sort(key=lambda pair: pair[0])
    ratio, trace, grpo = pairs[len(pairs) // 2]
    out = {"trace": trace, "grpo": grpo, "trace_over_grpo": ratio,
           "ratios": [round(r, 3) for r, _, _ in pairs],
           "cpu_ratio": cpu[len(cpu) // 2], "cpu_ratios": [round(r, 3) for r in cpu],
           "predictor_share": trace["predictor_share"], "solver_share": trace["solver_share"]}
    if backend_kind == "standin":
        out["continuation_cache_hit_rate"] = 1 - trace["continuation_recomputed_share"]
    return out


# --------------------------------------------------------------------------- report
def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def print_report(report: dict[str, Any]) -> None:
    a = report.get("blocking_tools")
    if a:
        print(f"(a) {a['episodes']} search episodes, {a['engine_s'] * 1e3:.0f} ms engine, retriever "
              f"blocking {a['retriever_s']} s: on the loop {a['blocking_s']:.2f} s | worker pool "
              f"{a['pooled_s']:.2f} s | async HTTP {a['async_http_s']:.2f} s (through the project's "
              f"batching server {a['async_http_batching_server_s']:.2f} s) | ideal {a['ideal_s']:.2f} s"
              f"  -> {a['blocking_over_pooled']:.1f}x / {a['blocking_over_async']:.1f}x faster")
    for model, b in report.get("prefix_reuse", {}).items():
        print(f"(b) {model}: prefix reuse off -> on")
        for k in b["without_reuse"]:
            print(f"    {k:32s} {_fmt(b['without_reuse'][k]):>10} -> {_fmt(b['with_reuse'][k])}")
        print(f"    step speed-up {b['speedup']:.2f}x")
    for section, label in (("trace_vs_grpo", "(c) in process"), ("standin", "(d) stand-in SGLang")):
        for model, c in report.get(section, {}).items():
            print(f"{label}, {model}: TRACE step / GRPO step at equal cost = {c['trace_over_grpo']:.2f} "
                  f"(pairs: {c['ratios']}; CPU seconds {c['cpu_ratio']:.2f}, pairs {c['cpu_ratios']})"
                  f"  (predictor {c['predictor_share']:.1%}, solvers {c['solver_share']:.1%} of TRACE's step)")
            for k in ("seconds", "cpu_s", "episodes", "turns", "generated_tokens", "tokens_per_s",
                      "last_bare_episode_s", "decode_steps", "queued_steps", "mean_batch_rows",
                      "ms_per_decode_step", "engine_idle_share", "cache_hit_rate"):
                print(f"    {k:24s} TRACE {_fmt(c['trace'][k]):>8}  GRPO {_fmt(c['grpo'][k]):>8}")
            if "continuation_cache_hit_rate" in c:
                print(f"    prefix-cache hits on continuations: {c['continuation_cache_hit_rate']:.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="a,b,c,d", help="which of a,b,c,d to run")
    p.add_argument("--models", default="tiny,smollm2", help="tiny and/or smollm2, for (b)-(d)")
    p.add_argument("--pool", type=int, default=16, help="candidate prompts per step")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--cap", type=int, default=16,
                   help="episodes in flight and engine batch rows, the same for every method (the "
                        "demo's backend.max_concurrency)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="TRACE/GRPO pairs per model in (c) and (d)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: one fewer than the CPUs, as the CLI's default; on a "
                        "shared CPU one avoids oversubscription)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from trace_agents.models import set_threads

    threads = set_threads(args.threads)
    sections = set(args.sections.split(","))
    models = [m for m in args.models.split(",") if m]
    report: dict[str, Any] = {"threads": threads, "max_tokens": args.max_tokens, "cap": args.cap,
                              "pool": args.pool, "seed": args.seed}
    runs: list[tuple[str, str, Any]] = []
    if "a" in sections:
        runs.append(("blocking_tools", "", blocking_tools))
    for m in models:
        if "b" in sections:
            runs.append(("prefix_reuse", m, lambda m=m: reuse_section(m, args)))
        if "c" in sections:
            runs.append(("trace_vs_grpo", m, lambda m=m: trace_vs_grpo(m, args, "inprocess")))
        if "d" in sections:
            runs.append(("standin", m, lambda m=m: trace_vs_grpo(m, args, "standin")))
    for i, (section, model, run) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {section} {model} ...", file=sys.stderr, flush=True)
        result = run()
        if model:
            report.setdefault(section, {})[model] = result
            partial = {section: {model: result}}
        else:
            report[section] = partial = result
        if not args.json:
            print_report(partial)  # each section as it ends: SmolLM2 on a shared CPU takes a while
            sys.stdout.flush()
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
