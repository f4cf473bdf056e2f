"""Opt-in: the agent layer against a real vLLM server (CPU build), e.g.

    TRACE_RL_VLLM_URL=http://127.0.0.1:8000 TRACE_RL_VLLM_MODEL=smollm2 pytest -m vllm tests/agents

Skipped unless ``TRACE_RL_VLLM_URL`` is set (a server serving SmolLM2 from
``trace_agents.models.smollm2_dir()``, started with --enable-prefix-caching
--enable-prompt-tokens-details); ``scripts/vllm_cpu_check.py`` launches one itself.
"""

from __future__ import annotations

import asyncio
import os

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not os.environ.get("TRACE_RL_VLLM_URL"), reason="set TRACE_RL_VLLM_URL"),
]


def test_branching_through_vllm_reuses_the_prefix_cache():
    from transformers import AutoTokenizer

    from trace_agents.backends import OpenAIBackend, SamplingParams
    from trace_agents.models import smollm2_dir
    from trace_agents.rollout import RolloutRunner, prefix_ids
    from trace_envs.calculator.env import CalculatorEnv

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    backend = OpenAIBackend(os.environ["TRACE_RL_VLLM_URL"], os.environ.get("TRACE_RL_VLLM_MODEL", "smollm2"))
    runner = RolloutRunner(backend, tokenizer=tok, sampling=SamplingParams(0.8, 1.0, 48))
    env = CalculatorEnv("arithmetic", max_turns=2, suite_options={"size": 4, "seed": 0})
    tree = runner.new_tree(env, env.tasks[0].id)

    async def run():
        try:
            bare = await runner.rollouts(tree, tree.root, 2)
            node = next((c for c in tree.root.children if not c.is_leaf), None)
            conts = await runner.rollouts(tree, node, 2) if node is not None else []
            return bare, conts, node
        finally:
            await backend.aclose()

    bare, conts, node = asyncio.run(run())
    assert all(e.status != "failed" for e in bare + conts)
    assert all(len(e.leaf.handle.action_ids) > 0 for e in bare)
    if node is not None:
        assert all(c.cached_tokens > 0 for c in conts)  # vLLM served the shared prefix from cache
        assert all(prefix_ids(c.leaf)[: len(prefix_ids(node))] == prefix_ids(node) for c in conts)
