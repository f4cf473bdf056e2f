"""Rollouts and branching: exact token prefixes, exact env state, no lost episodes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_agents.backends import BackendError, SamplingParams, ScriptedBackend
from trace_agents.react import ChatFormat
from trace_agents.rollout import (
    RolloutRunner,
    prefix_ids,
    prefix_messages,
    resume_env,
    token_path,
)
from trace_envs.calculator.env import CalculatorEnv

from tests.agents.scripted_policies import chain_policy


@pytest.fixture(scope="module")
def calc():
    return CalculatorEnv("arithmetic", suite_options={"size": 20, "seed": 0})


class Recorder(ScriptedBackend):
    """Scripted backend that remembers every prompt it was sent."""

    def __init__(self, policy, tokenizer, fail_on: set[int] = frozenset()):
        super().__init__(policy, tokenizer)
        self.prompts: list[tuple[int, ...]] = []
        self.fail_on = fail_on

    async def generate(self, prompt, params):
        self.prompts.append(tuple(prompt))
        if len(self.prompts) in self.fail_on:
            raise BackendError("injected: server gone")
        return await super().generate(prompt, params)


def _answers(env):
    return {t.prompt: t.answer for t in env.tasks}


def test_turns_record_token_segments_that_match_the_chat_template(tiny, calc):
    _, tok = tiny
    backend = Recorder(chain_policy(_answers(calc)), tok)
    runner = RolloutRunner(backend, tokenizer=tok, seed=1)
    tree = runner.new_tree(calc, calc.tasks[0].id)
    episodes = asyncio.run(runner.rollouts(tree, tree.root, 3))
    fmt = ChatFormat(tok)
    assert [e.status for e in episodes] == ["terminated"] * 3
    assert all(len(e.turns) == 3 for e in episodes) and all(n.bare for n in tree.nodes())
    for node in tree.nodes():
        if node.is_leaf:
            continue
        ids = prefix_ids(node)
        assert tuple(ids) in backend.prompts  # the server saw exactly this prefix
        assert tok.decode(ids) == fmt.render(prefix_messages(node), generation_prompt=True)
    for leaf in tree.leaves():
        path = token_path(leaf)
        assert len(path.ids) == len(path.loss_mask) == len(path.logprobs) == len(path.depth)
        trained = [t for t, m in zip(path.ids, path.loss_mask) if m]
        assert tok.decode(trained) == "".join(n.handle.action for n in leaf.path()[1:])
        assert leaf.reward in (0.0, 1.0) and leaf.handle.terminated
    assert "<tool_response>\n5\n</tool_response>" in tree.root.children[0].prefix_text


def test_predictor_depth_counts_turns_of_real_transcripts(tiny, calc):
    """Multi-line observations (<tool_response>\n5\n</tool_response>) are still one turn each."""
    from trace_allocation.predictors.lexical import LexicalPredictor
    from trace_allocation.tree import prompt_of, turns_in

    _, tok = tiny
    runner = RolloutRunner(Recorder(chain_policy(_answers(calc), steps=3), tok), tokenizer=tok, seed=2)
    tree = runner.new_tree(calc, calc.tasks[0].id)
    asyncio.run(runner.rollouts(tree, tree.root, 2))
    nodes = list(tree.nodes())
    assert max(n.depth for n in nodes) >= 3
    assert any(n.prefix_text.count("\n") > n.depth for n in nodes)  # more lines than turns
    assert [turns_in(n.prefix_text) for n in nodes] == [n.depth for n in nodes]
    assert {prompt_of(n.prefix_text) for n in nodes} == {calc.tasks[0].prompt}
    assert LexicalPredictor().depth_of(nodes[-1].prefix_text) == nodes[-1].depth


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 3), k=st.integers(1, 3))
def test_branch_resumes_exact_env_state_and_token_prefix(tiny, calc, depth, k):
    _, tok = tiny
    backend = Recorder(chain_policy(_answers(calc), steps=4), tok)
    runner = RolloutRunner(backend, tokenizer=tok, seed=depth)
    tree = runner.new_tree(calc, calc.tasks[1].id)
    asyncio.run(runner.rollouts(tree, tree.root, 1))
    chain = [tree.root] + _first_chain(tree.root)
    node = chain[depth]
    handles = [n.handle for n in chain]
    env = resume_env(node)
    assert env.snapshot() == node.handle.snapshot and env.turn == depth
    sent = len(backend.prompts)
    episodes = asyncio.run(runner.rollouts(tree, node, k))
    assert all(e.continuation and e.status == "terminated" for e in episodes)
    assert len(node.children) == 1 + k and not any(c.bare for c in node.children[1:])
    # each continuation's first request carried exactly the node's prefix
    assert backend.prompts[sent:].count(tuple(prefix_ids(node))) == k
    for child in node.children[1:]:
        # the restored calculator state: ans = 5 * 2^(depth-1), so "ans * 2" gives 5 * 2^depth
        assert child.handle.observation == str(5 * 2**depth)
        assert child.handle.snapshot.state()["turn"] == depth + 1
        assert prefix_ids(child)[: len(prefix_ids(node))] == prefix_ids(node)
    # branching left the original rollout untouched
    assert _first_chain(tree.root) == chain[1:] and [n.handle for n in chain] == handles


def _first_chain(root):
    nodes, node = [], root
    while node.children:
        node = node.children[0]
        nodes.append(node)
    return nodes


def test_failed_generation_keeps_the_episode_marked_failed(tiny, calc):
    _, tok = tiny
    backend = Recorder(chain_policy(_answers(calc)), tok, fail_on={2})
    runner = RolloutRunner(backend, tokenizer=tok, max_concurrency=1)
    tree = runner.new_tree(calc, calc.tasks[2].id)
    episodes = asyncio.run(runner.rollouts(tree, tree.root, 2))
    assert [e.status for e in episodes] == ["failed", "terminated"]
    failed = episodes[0]
    assert "server gone" in failed.error and len(failed.turns) == 1 and failed.reward is None
    assert failed.leaf.reward is None  # no reward: backup and Stage 2 ignore it
    assert runner.stats["failed"] == 1 and runner.stats["episodes"] == 2
    tree.backup()
    assert tree.root.visits == 1


def test_context_limit_truncates_unrewarded(tiny, calc):
    _, tok = tiny
    runner = RolloutRunner(Recorder(chain_policy(_answers(calc)), tok), tokenizer=tok,
                           sampling=SamplingParams(max_tokens=64))
    tree = runner.new_tree(calc, calc.tasks[3].id)
    runner.max_context_tokens = len(tree.root.handle.prompt_ids) + 64 + 10  # room for one turn
    (episode,) = asyncio.run(runner.rollouts(tree, tree.root, 1))
    assert episode.status == "truncated" and len(episode.turns) == 1
    assert episode.reward == 0.0 and episode.leaf.reward == 0.0


def test_chat_mode_without_token_ids(calc):
    backend = ScriptedBackend(chain_policy(_answers(calc), p_correct=1.0))
    runner = RolloutRunner(backend)
    tree = runner.new_tree(calc, calc.tasks[4].id)
    (episode,) = asyncio.run(runner.rollouts(tree, tree.root, 1))
    assert episode.status == "terminated" and episode.reward == 1.0
    node = tree.root.children[0]
    (cont,) = asyncio.run(runner.rollouts(tree, node, 1))
    assert cont.continuation and cont.reward == 1.0
    assert prefix_messages(node)[-1]["content"] == "<tool_response>\n5\n</tool_response>"


def test_a_finished_turn_cannot_be_continued(tiny, calc):
    _, tok = tiny
    runner = RolloutRunner(Recorder(chain_policy(_answers(calc), steps=0), tok), tokenizer=tok)
    tree = runner.new_tree(calc, calc.tasks[5].id)
    (episode,) = asyncio.run(runner.rollouts(tree, tree.root, 1))
    with pytest.raises(ValueError, match="ended its episode"):
        asyncio.run(runner.rollouts(tree, episode.leaf, 1))
