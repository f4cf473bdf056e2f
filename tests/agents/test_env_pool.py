"""Env steps off the event loop: no lost or duplicated episode, the same trees from the same seeds
however the steps interleave, and a hung tool bounded by the step deadline."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_agents.backends import ScriptedBackend
from trace_agents.rollout import RolloutRunner
from trace_agents.sampler import Candidate, TraceSampler
from trace_allocation.allocators import TreeAllocator
from trace_allocation.budget import Budget
from trace_allocation.predictors import LexicalPredictor
from trace_envs.calculator.env import CalculatorEnv

from tests.agents.scripted_policies import chain_policy

_jitter = random.Random()  # unseeded on purpose: steps finish in a different order every run


class JitteryCalculator(CalculatorEnv):
    """Each step blocks its thread for a random 0-10 ms, so concurrent episodes interleave anew."""

    def step(self, action):
        time.sleep(_jitter.random() * 0.01)
        return super().step(action)


class HangingCalculator(CalculatorEnv):
    """The task whose id is in ``hang_on`` blocks in its tool until ``release`` is set."""

    hang_on: set[str] = set()
    release = threading.Event()

    def step(self, action):
        if self.task is not None and self.task.id in self.hang_on:
            self.release.wait(30)
        return super().step(action)


def _env(cls=CalculatorEnv):
    return cls("arithmetic", suite_options={"size": 12, "seed": 5})


def _policy(env, steps=2):
    return chain_policy({t.prompt: t.answer for t in env.tasks}, steps=steps)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 6), workers=st.integers(1, 4), trees=st.integers(1, 3))
def test_every_episode_is_returned_once(tiny, k, workers, trees):
    _, tok = tiny
    env = _env(JitteryCalculator)
    runner = RolloutRunner(ScriptedBackend(_policy(env), tok), tokenizer=tok, env_workers=workers)

    async def run():
        grown = [runner.new_tree(env, t.id) for t in env.tasks[:trees]]
        groups = await asyncio.gather(*(runner.rollouts(t, t.root, k) for t in grown))
        return grown, groups

    grown, groups = asyncio.run(run())
    episodes = [e for g in groups for e in g]
    assert len(episodes) == trees * k and runner.stats["episodes"] == trees * k
    assert all(e.status == "terminated" and len(e.turns) == 3 for e in episodes)
    for tree, group in zip(grown, groups):
        leaves, nodes = list(tree.leaves()), list(tree.nodes())
        assert len(leaves) == k and len({id(n) for n in nodes}) == len(nodes)
        assert {id(e.leaf) for e in group} == {id(leaf) for leaf in leaves}
        # the root's children are in episode order
        assert list(tree.root.children) == [e.leaf.path()[1] for e in group]


def _tree_record(tree):
    return [(n.handle.action, n.handle.observation, n.handle.reward, n.handle.action_ids)
            for n in list(tree.nodes())[1:]]


def test_same_seeds_give_the_same_trees_whatever_the_interleaving(tiny):
    _, tok = tiny
    env = _env(JitteryCalculator)

    def step():
        runner = RolloutRunner(ScriptedBackend(_policy(env), tok), tokenizer=tok, seed=3,
                               env_workers=4)
        allocator = TreeAllocator(LexicalPredictor(2**12, seed=0), continuations_per_root=2,
                                  m_min=2, m_max=4, rng=np.random.default_rng(0))
        sampler = TraceSampler(runner, allocator, progress=False)
        result = asyncio.run(sampler.step([Candidate(env, t.id) for t in env.tasks], Budget(16)))
        return [(t.prompt_id, _tree_record(t)) for t in result.trees]

    first, second = step(), step()
    assert sum(len(nodes) for _, nodes in first) > 16
    assert first == second


def test_a_hung_tool_fails_only_its_episode_at_the_deadline(tiny):
    _, tok = tiny
    env = _env(HangingCalculator)
    HangingCalculator.hang_on = {env.tasks[0].id}
    HangingCalculator.release.clear()
    runner = RolloutRunner(ScriptedBackend(_policy(env, steps=1), tok), tokenizer=tok,
                           step_timeout_s=0.5)

    async def run():
        trees = [runner.new_tree(env, t.id) for t in env.tasks[:4]]
        started = time.perf_counter()
        groups = await asyncio.gather(*(runner.rollouts(t, t.root, 2) for t in trees))
        return time.perf_counter() - started, groups

    try:
        seconds, groups = asyncio.run(run())
    finally:
        HangingCalculator.release.set()
    hung, others = groups[0], [e for g in groups[1:] for e in g]
    assert all(e.status == "failed" and "0.5 s deadline" in e.error for e in hung)
    assert all(e.status == "terminated" and len(e.turns) == 2 for e in others)
    assert seconds < 10  # bounded by the deadline, not by the 30 s the tool would have taken
