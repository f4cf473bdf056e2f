"""TRACE steps end to end with a real (tiny, random) transformer, in process and over HTTP,
on the calculator, search and BFCL envs; and a server killed in the middle of a batch."""

from __future__ import annotations

import asyncio
import socket
import sys

import numpy as np
import pytest

from trace_agents.backends import OpenAIBackend, RetryPolicy, SamplingParams, SGLangBackend
from trace_agents.backends.hf import HFBackend
from trace_agents.backends.launch import ServerProcess
from trace_agents.rollout import RolloutRunner, prefix_ids, token_path
from trace_agents.sampler import Candidate, TraceSampler
from trace_allocation.allocators import TreeAllocator
from trace_allocation.budget import Budget
from trace_allocation.predictors import LexicalPredictor
from trace_envs.calculator.env import CalculatorEnv

SAMPLING = SamplingParams(temperature=1.0, max_tokens=12)


def _pool(with_bfcl: bool):
    calc = CalculatorEnv("arithmetic", max_turns=2, suite_options={"size": 8, "seed": 1})
    pool = [Candidate(calc, t.id) for t in calc.tasks[:3]]
    from trace_envs.search.env import SearchEnv

    search = SearchEnv(max_turns=2)
    pool += [Candidate(search, t.id) for t in search.tasks[:2]]
    if not with_bfcl:
        return pool
    try:
        from trace_envs.bfcl.env import BFCLEnv

        bfcl = BFCLEnv("base", max_turns=2)
        pool += [Candidate(bfcl, t.id) for t in bfcl.tasks[:2]]
    except ImportError:  # bfcl-eval is an optional extra
        pass
    return pool


def _backend(kind, tiny, url=None):
    model, tok = tiny
    retry = RetryPolicy(attempts=2, backoff_s=0.01)
    if kind == "inprocess":
        return HFBackend(model, tok)
    if kind == "sglang":
        return SGLangBackend(url, retry=retry)
    return OpenAIBackend(url, "standin", retry=retry)


@pytest.mark.parametrize(("kind", "with_bfcl"), [("inprocess", False), ("sglang", True), ("openai", False)])
def test_trace_step_with_a_tiny_transformer(tiny, standin, fresh_faults, kind, with_bfcl):
    """BFCL's prompts are ~10k tiny-tokenizer tokens (slow on CPU): one variant runs them."""
    _, tok = tiny
    backend = _backend(kind, tiny, standin.url)
    runner = RolloutRunner(backend, tokenizer=tok, sampling=SAMPLING, seed=0)
    # uniform roots in pairs open every prompt of the pool (every env runs); Stage 2 is active
    allocator = TreeAllocator(LexicalPredictor(2**12), continuations_per_root=1, roots="uniform",
                              group_size=2, rng=np.random.default_rng(0))
    sampler = TraceSampler(runner, allocator, progress=False)
    pool = _pool(with_bfcl)
    budget = Budget(3 * len(pool))  # every prompt: 2 roots + 2 continuations x 1/2

    async def run():
        try:
            return await sampler.step(pool, budget)
        finally:
            await backend.aclose()

    result = asyncio.run(run())
    assert all(e.status in ("terminated", "truncated") for e in result.episodes)
    assert budget.spent <= budget.total and budget.roots == 2 * len(pool)
    assert len(result.trees) == len(pool)
    assert budget.continuations >= 1
    for e in result.episodes:
        path = token_path(e.leaf)
        assert sum(path.loss_mask) == sum(len(n.handle.action_ids) for n in e.leaf.path()[1:])
        if e.continuation:
            assert prefix_ids(e.leaf)[: len(prefix_ids(e.start))] == prefix_ids(e.start)
    m = result.metrics
    assert m["generated_tokens"] > 0 and m["seconds"] > 0
    if kind != "inprocess":  # the stand-in served continuations' shared prefixes from its cache
        assert m["cached_tokens"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_killed_mid_batch_loses_no_rollout(tiny):
    _, tok = tiny
    port = _free_port()
    server = ServerProcess(
        [sys.executable, "-m", "trace_agents.testing.standin_server", "--model", "tiny", "--port", str(port)],
        f"http://127.0.0.1:{port}", timeout_s=60,
    )
    backend = SGLangBackend(server.base_url, retry=RetryPolicy(attempts=2, backoff_s=0.05),
                            connect_timeout_s=1.0, timeout_s=10)
    calc = CalculatorEnv("arithmetic", max_turns=6, suite_options={"size": 4, "seed": 0})
    runner = RolloutRunner(backend, tokenizer=tok, sampling=SamplingParams(max_tokens=24), seed=0)
    tree = runner.new_tree(calc, calc.tasks[0].id)

    async def run():
        task = asyncio.create_task(runner.rollouts(tree, tree.root, 8))
        while not tree.root.children and not task.done():  # first turns served: mid-batch now
            await asyncio.sleep(0.01)
        server.kill()  # SIGKILL: in-flight requests die with the server
        try:
            return await asyncio.wait_for(task, timeout=30)
        finally:
            await backend.aclose()

    try:
        episodes = asyncio.run(run())
    finally:
        server.close()
    assert len(episodes) == 8
    failed = [e for e in episodes if e.status == "failed"]
    assert failed, "killing the server must fail the episodes still running"
    assert all("failed after 2 attempts" in e.error for e in failed)
    assert runner.stats["episodes"] == 8 and runner.stats["failed"] == len(failed)
