"""The two wings agree: both play episodes with the one loop (`trace_agents.episode.play`), and
TRACE through verl and through the native sampler agree on one step.

Same seeds, same predictor, same scripted policy, same tokenizer: the native `trace_agents.sampler
.TraceSampler` step against verl's path as it runs there — `TraceTrainer` (the real verl trainer
class) plans Stage 1 and each prompt's cap, the worker's `plan_prompt` plans each prompt's Stage 2
from that prompt's roots (with the allocator as Ray ships it: cloudpickled), the episodes travel through
V1's ``AgentLoopOutput.as_dict`` and TransferQueue's tensordict, and the trainer's advantage step
and refit read them back. Root counts, continuations, cost, advantages and the refit predictor match.

Episodes run one at a time on both sides (``max_concurrency=1``), so the scripted policy's
per-context counters see the same calls in the same order.
"""

from __future__ import annotations

import asyncio
import os
from ray import cloudpickle  # what Ray ships actor arguments with
from collections import Counter

import hydra
import numpy as np
import pytest
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.rollout.replica import TokenOutput

from tests.verl.conftest import calc
from trace_agents.backends import ScriptedBackend, SamplingParams
from trace_agents.dialects import TextDialect
from trace_agents.rollout import RolloutRunner
from trace_agents.sampler import Candidate
from trace_agents.sampler import TraceSampler as NativeSampler
from trace_agents.train.advantages import training_samples
from trace_agents.verl import CONTINUATIONS_KEY, EPISODE_KEY, EnvSpec, EpisodeRunner, plan_prompt
from trace_agents.verl.main import AGENT_LOOP_YAML
from trace_allocation import Budget
from trace_envs.calculator.env import CalculatorEnv

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SUITE = {"size": 16, "seed": 3}
N_PROMPTS = 4
ROOTS = 8  # trace.budget.roots: cost 8 x (1 + 2 x 0.5) = 16 per step


class Policy:
    """A calculator call, then an answer; which call and whether the answer is right depend on the
    context and on how often that exact context was seen, so rollouts of a prompt differ."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.seen: Counter[str] = Counter()

    def __call__(self, context: str, _params=None) -> str:
        k = self.seen[context]
        self.seen[context] += 1
        if context.count("<tool_response>\n") == 0:
            return calc(["2+3", "2*3", "7-1"][k % 3])
        prompt = next(p for p in self.answers if p in context)
        right = (k + len(context)) % 3 != 0
        return f"<answer>{self.answers[prompt] if right else '-1'}</answer>"


@pytest.fixture(scope="module")
def tokenizer():
    from trace_agents.models import tiny_tokenizer

    return tiny_tokenizer()


def calc_env() -> CalculatorEnv:
    return CalculatorEnv("arithmetic", suite_options=SUITE)


def tasks():
    env = calc_env()
    return env, [env.tasks[i] for i in range(N_PROMPTS)]


def native_step(tokenizer):
    env, picked = tasks()
    policy = Policy({t.prompt: str(t.answer) for t in env.tasks})
    runner = RolloutRunner(ScriptedBackend(policy, tokenizer), tokenizer=tokenizer, max_concurrency=1,
                           sampling=SamplingParams(max_tokens=256))
    from trace_agents.train.loop import make_allocator
    from trace_agents.verl.trainer import trace_settings

    name, settings = trace_settings(verl_config())
    sampler = NativeSampler(runner, make_allocator(name, settings, np.random.default_rng(settings.seed)),
                            progress=False)
    budget = Budget(settings.budget.total, continuation_cost=settings.budget.continuation_cost)
    result = asyncio.run(sampler.step([Candidate(env, t.id) for t in picked], budget))
    samples = training_samples(result.trees, mode=settings.optim.advantage, shared=settings.optim.shared_tokens)
    # verl stores float32
    advantages = Counter((s.path[0].prefix_text, s.leaf.prefix_text, d, round(float(np.float32(a)), 6))
                         for s in samples for d, a in s.advantages.items())
    continuations = Counter((e.tree.root.prefix_text, e.start.prefix_text) for e in result.episodes if e.continuation)
    return result.root_counts, continuations, budget, advantages, sampler.allocator.predictor


def verl_config():
    with hydra.initialize_config_dir(config_dir=str(AGENT_LOOP_YAML.parent), version_base=None):
        return hydra.compose("trace_trainer", overrides=[f"trace.budget.roots={ROOTS}", "trace.budget.m_max=4"])


class WorkerHandle:
    """Where `TraceTrainer.plan_batch` hands the allocator: recorded as Ray ships it."""

    def set_allocator(self, allocator) -> None:
        self.shipped = cloudpickle.dumps(allocator)


def verl_step(tokenizer):
    from trace_agents.verl.trainer import TraceTrainer

    env, picked = tasks()
    policy = Policy({t.prompt: str(t.answer) for t in env.tasks})

    async def generate(request_id, *, prompt_ids, sampling_params):  # the scripted backend's bytes
        text = policy(tokenizer.decode(prompt_ids, skip_special_tokens=False))
        return TokenOutput(token_ids=tokenizer.encode(text, add_special_tokens=False), stop_reason="completed")

    trainer = TraceTrainer(verl_config())
    trainer.agent_loop_manager = WorkerHandle()
    raw_prompt = np.empty(N_PROMPTS, dtype=object)
    raw_prompt[:] = [[{"role": "user", "content": t.prompt}] for t in picked]
    batch = tu.get_tensordict({"uid": np.array([f"uid{i}" for i in range(N_PROMPTS)], dtype=object),
                               "raw_prompt": raw_prompt})
    batch = trainer.plan_batch(batch)
    counts, caps = list(batch["__rollout_n__"]), list(batch[CONTINUATIONS_KEY])
    allocator = cloudpickle.loads(trainer.agent_loop_manager.shipped)  # the worker's copy

    runner = EpisodeRunner(generate, TextDialect(tokenizer), response_length=4096)
    spec = lambda t: EnvSpec("trace/Calculator-v0", {"suite_options": SUITE}, t.id)  # noqa: E731

    async def prompt_sessions(i, task):  # TraceAgentLoopWorker._run_prompt, one session at a time
        roots = [await runner.run(spec(task), {}, prompt_key=f"uid{i}") for _ in range(counts[i])]
        conts = [await runner.resume(b, {}) for b in plan_prompt(allocator, roots, caps[i])]
        return roots + conts

    episodes = [ep for i, t in enumerate(picked) for ep in asyncio.run(prompt_sessions(i, t))]
    stored = list_of_dict_to_tensordict([
        AgentLoopOutput(**ep.verl_fields(), extra_fields={EPISODE_KEY: ep}).as_dict() for ep in episodes])
    lengths = [len(ep.response_ids) for ep in episodes]
    out = trainer.tree_advantages([{}] * len(episodes), list(stored["extra_fields"]), lengths)
    trainer.refit_predictor()

    texts = {f"uid{i}": t.prompt for i, t in enumerate(picked)}
    advantages = Counter()
    for row, ep in enumerate(episodes):
        values, mask = out["advantages"][row].tolist(), out["response_mask"][row].tolist()
        start = 0
        for depth, turn in enumerate(ep.turns, start=1):
            trained = [v for v, m in zip(values[start:turn.offset], mask[start:turn.offset]) if m]
            if trained:
                assert len(set(trained)) == 1  # one advantage per turn
                advantages[(texts[ep.prompt_key], ep.prefix_text(len(ep.turns)), depth, round(trained[0], 6))] += 1
            start = turn.offset
    continuations = Counter((texts[ep.prompt_key], ep.prefix_text(ep.branch_turn)) for ep in episodes if ep.parent)
    return np.asarray(counts), continuations, trainer.budget, advantages, trainer.sampler.allocator.predictor


def test_a_trace_step_through_verl_matches_the_native_sampler(tokenizer):
    n_counts, n_conts, n_budget, n_adv, n_pred = native_step(tokenizer)
    v_counts, v_conts, v_budget, v_adv, v_pred = verl_step(tokenizer)

    assert v_counts.tolist() == n_counts.tolist() and n_counts.sum() > 0
    assert v_conts == n_conts and sum(n_conts.values()) > 0
    assert (v_budget.spent, v_budget.roots, v_budget.continuations) == (
        n_budget.spent, n_budget.roots, n_budget.continuations)
    assert v_adv == n_adv and any(key[3] != 0 for key in n_adv)  # mixed outcomes: real signal
    probe = [key[1] for key in n_adv] + [key[0] for key in n_adv]
    np.testing.assert_allclose(v_pred.predict(probe), n_pred.predict(probe))
    assert not np.allclose(n_pred.predict(probe), 0.5)  # the refit happened


def test_both_wings_are_adapters_of_the_one_episode_loop(tokenizer, monkeypatch):
    """The native runner and verl's EpisodeRunner both play through `trace_agents.episode.play`:
    the same replies give the loop the same turns on both sides; the native tree hangs them as
    nodes, verl flattens them into its response (the last turn without its closing tokens)."""
    import trace_agents.episode
    import trace_agents.rollout
    import trace_agents.verl.episode

    played = []

    async def recording(*args, **kwargs):
        played.append(await trace_agents.episode.play(*args, **kwargs))
        return played[-1]

    monkeypatch.setattr(trace_agents.rollout, "play", recording)
    monkeypatch.setattr(trace_agents.verl.episode, "play", recording)
    env, (task, *_) = tasks()

    def policy(context: str, _params=None) -> str:
        return calc("2+3") if "<tool_response>\n" not in context else f"<answer>{task.answer}</answer>"

    native = RolloutRunner(ScriptedBackend(policy, tokenizer), tokenizer=tokenizer)
    tree = native.new_tree(env, task.id)
    (episode,) = asyncio.run(native.rollouts(tree, tree.root, 1))

    async def generate(request_id, *, prompt_ids, sampling_params):
        text = policy(tokenizer.decode(prompt_ids, skip_special_tokens=False))
        return TokenOutput(token_ids=tokenizer.encode(text, add_special_tokens=False), stop_reason="completed")

    runner = EpisodeRunner(generate, TextDialect(tokenizer), response_length=4096)
    flat = asyncio.run(runner.run(EnvSpec("trace/Calculator-v0", {"suite_options": SUITE}, task.id), {},
                                  prompt_key="p"))

    on_native, on_verl = played
    same = lambda t: (t.action, t.observation, t.action_ids, t.env_ids, t.reward, t.terminated, t.snapshot.payload)  # noqa: E731
    assert [same(t) for t in on_native.turns] == [same(t) for t in on_verl.turns] and len(on_verl.turns) == 2
    assert [n.handle for n in episode.leaf.path()[1:]] == on_native.turns and episode.reward == flat.reward == 1.0
    ids = [i for t in on_verl.turns for i in t.action_ids + t.env_ids]
    assert flat.response_ids == ids[: len(ids) - len(on_verl.turns[-1].env_ids)]
    first = len(on_verl.turns[0].action_ids) + len(on_verl.turns[0].env_ids)
    assert [t.offset for t in flat.turns] == [first, len(flat.response_ids)]
