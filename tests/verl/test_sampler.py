"""TraceSampler and plan_prompt driven the way the TRACE trainer and worker drive them: Stage 1 in
the trainer, Stage 2 per prompt in the worker as soon as that prompt's roots end, trees, budget
and advantages in the trainer from what comes back."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.verl.conftest import SUITE, ChatMLTokenizer, ScriptedServer, answer, calc, spec
from trace_agents.dialects import TextDialect
from trace_agents.verl import BRANCH_KEY, EnvSpec, Episode, EpisodeRunner, TraceSampler, plan_prompt
from trace_allocation import Budget
from trace_allocation.allocators import GrpoAllocator, TreeAllocator
from trace_allocation.predictors import OraclePredictor
from trace_envs import load_suite

N_PROMPTS = 6
SUCCESS = [0.1, 0.5, 0.9, 0.3, 0.7, 0.5]  # per task: chance that the final answer is right


def task_of(text: str) -> int:
    suite = load_suite("arithmetic", **SUITE)
    return next(i for i in range(N_PROMPTS) if suite[i].prompt in text)


class Policy:
    """One calculator call, then the right answer with the task's success rate; draws are keyed
    by the prompt text and how often it was seen, so they do not depend on scheduling."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, prompt: str, n: int) -> str:
        if prompt.count("<tool_response>\n") == 0:  # results, not the system prompt's mention
            return calc("2+2")
        k = self.seen[prompt]
        self.seen[prompt] += 1
        task = task_of(prompt)
        right = zlib.crc32(f"{prompt}|{k}".encode()) % 1000 < SUCCESS[task] * 1000
        return f"<answer>{answer(task) if right else '-1'}</answer>"


def oracle() -> OraclePredictor:
    return OraclePredictor(lambda text: SUCCESS[task_of(text)])


def dataset_rows() -> list[dict]:
    """What verl's RLHFDataset + trainer hand the agent loop: uid, extra_info, raw_prompt."""
    rows = []
    for i in range(N_PROMPTS):
        s = spec(i)
        rows.append({"uid": f"uid-{i}", "agent_name": "trace_env",
                     "extra_info": {"env_id": s.env_id, "env_kwargs": s.env_kwargs, "task_id": s.task_id}})
    return rows


def generate_sequences(runner: EpisodeRunner, rows: Sequence[dict]) -> list[Episode]:
    """AgentLoopWorker's part: one agent-loop run per row, concurrently, outputs in row order."""
    async def one(row: dict) -> Episode:
        if row.get(BRANCH_KEY) is not None:
            return await runner.resume(row[BRANCH_KEY], {})
        return await runner.run(EnvSpec.from_extra_info(row["extra_info"]), {}, prompt_key=row["uid"])

    async def all_rows() -> list[Episode]:
        return list(await asyncio.gather(*(one(r) for r in rows)))

    return asyncio.run(all_rows())


def make_runner() -> EpisodeRunner:
    tok = ChatMLTokenizer()
    return EpisodeRunner(ScriptedServer(tok, Policy()).generate, TextDialect(tok), response_length=4096)


def trace_step(sampler: TraceSampler, budget: Budget, runner: EpisodeRunner):
    """One step as TraceTrainer (Stage 1, caps) and TraceAgentLoopWorker (per prompt) run it."""
    rows = dataset_rows()
    texts = [load_suite("arithmetic", **SUITE)[i].prompt for i in range(N_PROMPTS)]
    counts = sampler.plan_roots(texts, budget)
    caps = sampler.driver.continuation_caps(counts, budget)
    roots, cont_rows, conts = [], [], []
    for row, m, cap in zip(rows, counts, caps):  # each worker's _run_prompt, on its own
        prompt_roots = generate_sequences(runner, [row] * int(m))
        branch_rows = [{**row, BRANCH_KEY: b} for b in plan_prompt(sampler.allocator, prompt_roots, int(cap))]
        roots += prompt_roots
        cont_rows += branch_rows
        conts += generate_sequences(runner, branch_rows)
    sampler.observe(roots + conts, budget)  # the trainer, from the batch read back
    return counts, roots, cont_rows, conts


class RecordingPredictor(OraclePredictor):
    def update(self, texts, targets, weights=None):
        self.updates = (list(texts), np.asarray(targets), np.asarray(weights))


def test_one_trace_step_in_verl_terms():
    predictor = RecordingPredictor(oracle().truth)
    sampler = TraceSampler(TreeAllocator(predictor, continuations_per_root=2, m_max=4, rng=np.random.default_rng(0)))
    budget = Budget(24)
    counts, roots, cont_rows, conts = trace_step(sampler, budget, make_runner())

    assert counts.dtype == np.int64 and counts.sum() == len(roots) and set(counts.tolist()) <= {0, 2, 3, 4}
    assert budget.spent <= budget.total and budget.roots == len(roots) and budget.continuations == len(conts) > 0
    for row, ep in zip(cont_rows, conts):
        branch = row[BRANCH_KEY]
        assert row["uid"] == branch.prompt_key == ep.prompt_key  # same GRPO group in verl
        assert ep.parent == (branch.parent_id, branch.turn) and branch.turn == 1
    # continuations hang under their parents' turn: the trees are trees, not flat groups
    for key, tree in sampler.trees.items():
        leaves = list(tree.leaves())
        assert sum(leaf.bare for leaf in leaves) == sum(ep.prompt_key == key for ep in roots)
        assert len(leaves) == sum(ep.prompt_key == key for ep in roots + conts)
    advantages = sampler.advantages()
    assert set(advantages) == {ep.id for ep in roots + conts}
    assert all(min(a, default=1) > ep.branch_turn for ep in conts for a in [advantages[ep.id]])  # own turns only
    assert sampler.update_predictor() is not None
    figures = sampler.contrast()
    assert figures.prompts_opened == len(sampler.trees)
    assert figures.mixed_trees == sum(t.is_mixed for t in sampler.trees.values())
    assert figures.trajectories == len(roots) + len(conts)
    texts, targets, weights = predictor.updates
    assert len(texts) == len(targets) == len(weights) > 0 and ((0 <= targets) & (targets <= 1)).all()


def test_a_flat_allocator_asks_for_no_continuations():
    sampler = TraceSampler(GrpoAllocator(group_size=2, rng=np.random.default_rng(0)))
    budget = Budget(8)
    counts, roots, cont_rows, _ = trace_step(sampler, budget, make_runner())
    assert counts.sum() == 8 == len(roots) and cont_rows == [] and budget.spent == 8


def test_stage_2_caps_are_what_the_budget_affords_after_the_roots_in_prompt_order():
    sampler = TraceSampler(TreeAllocator(oracle(), continuations_per_root=4, m_max=4, rng=np.random.default_rng(1)))
    budget = Budget(10.2)
    caps = sampler.driver.continuation_caps([2, 0, 3, 2], budget)
    assert caps.tolist() == [6, 0, 0, 0]  # floor((10.2 - 7) / 0.5) = 6, first come first served
    assert sampler.driver.continuation_caps([2, 3], Budget(100)).tolist() == [8, 12]


def test_the_worker_plans_only_within_its_prompts_cap():
    allocator = TreeAllocator(oracle(), continuations_per_root=4, m_max=4, rng=np.random.default_rng(1))
    runner = make_runner()
    roots = generate_sequences(runner, dataset_rows()[:1] * 3)
    assert len(plan_prompt(allocator, roots, 2)) == 2 and plan_prompt(allocator, roots, 0) == []
    with pytest.raises(ValueError, match="several prompts"):
        plan_prompt(allocator, roots + generate_sequences(runner, dataset_rows()[1:2]), 2)


def test_a_continuation_of_an_unknown_parent_is_refused():
    sampler = TraceSampler(TreeAllocator(oracle(), rng=np.random.default_rng(0)))
    runner = make_runner()
    root = generate_sequences(runner, dataset_rows()[:1])[0]
    cont = generate_sequences(runner, [{BRANCH_KEY: root.branch(1)}])[0]
    with pytest.raises(ValueError, match="observe its parent first"):
        sampler.observe([cont], Budget(10))
    sampler.observe([root, cont], Budget(10))  # parents first, as the trainer orders them


@settings(max_examples=15, deadline=None)
@given(total=st.floats(0, 40), n=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_the_trace_glue_never_exceeds_the_budget(total, n, seed):
    sampler = TraceSampler(TreeAllocator(oracle(), continuations_per_root=n, m_max=4, rng=np.random.default_rng(seed)))
    budget = Budget(total)
    _, roots, _, conts = trace_step(sampler, budget, make_runner())
    assert budget.spent <= total + 1e-9
    assert len(roots) + 0.5 * len(conts) == pytest.approx(budget.spent)
