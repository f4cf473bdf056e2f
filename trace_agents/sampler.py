"""The TRACE sampler: the native rollouts as an engine of the one step driver
(`trace_allocation.driver.StepDriver`, which the simulator and verl's trainer and workers use too).

One step: the allocator scores the candidate pool and sets Stage 1 root counts; each opened
prompt runs its bare rollouts and, **as soon as its own bare rollouts finish** (no barrier across
prompts), the allocator plans its Stage 2 continuations, which are branched from the chosen
prefixes. Allocators that refill (DAPO) get more groups while the budget lasts. The baselines
(GRPO, PCL, random branching, DAPO; ``trace_allocation.allocators``) run through this same code,
so every comparison is at equal cost with the same rollouts machinery. Every rollout is charged to
the :class:`~trace_allocation.Budget`, failed ones included (the compute was spent), and every step
reports the same figures for every method (``trace_allocation.contrast``) and its cost in
trajectory-equivalents, turns and tokens.

The allocator's work (scoring prompts and prefixes with the predictor, the solvers, the refit)
runs in one planning thread, never on the event loop: other prompts' episodes keep stepping while
a prompt's Stage 2 is planned. One thread keeps the allocator's calls in order and unshared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trace_agents.policy_states import PolicyStates
from trace_agents.progress import Reporter
from trace_agents.rollout import Episode, RolloutRunner, episodes_summary
from trace_allocation.allocators import Allocator
from trace_allocation.budget import Budget
from trace_allocation.driver import Spent, StepDriver
from trace_allocation.predictors import brier_score
from trace_allocation.tree import Node, RolloutTree, backup_targets
from trace_envs import ToolEnv


@dataclass(frozen=True)
class Candidate:
    """A prompt of the candidate pool: a task of some env (pools may mix envs)."""

    env: ToolEnv
    task_id: str

    @property
    def text(self) -> str:
        return self.env.tasks.get(self.task_id).prompt


@dataclass
class StepResult:
    step: int
    trees: list[RolloutTree]
    """Every tree the step paid for."""
    training_trees: list[RolloutTree]
    """The trees the policy update sees (DAPO: its quota of mixed groups; the others: all)."""
    episodes: list[Episode]
    root_counts: np.ndarray
    """Stage 1 counts over the candidate pool (refills added)."""
    budget: Budget
    effective_ratio: float
    """Mixed trees / prompts opened (``trace_allocation.contrast``)."""
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


class TraceSampler:
    """The native engine of `trace_allocation.driver.StepDriver`: its rollouts are the runner's."""

    def __init__(
        self,
        runner: RolloutRunner,
        allocator: Allocator,
        *,
        progress: bool = True,
        fit_predictor: bool = True,
        states: PolicyStates | None = None,
    ) -> None:
        self.runner = runner
        self.allocator = allocator
        self.states = states
        """The policy's hidden states the predictor reads (``predictor.kind: policy``): the
        candidates are probed before Stage 1, every played node registered as its episode ends."""
        self.progress = progress
        self.fit_predictor = fit_predictor
        self.steps = 0
        self.unpaid = 0.0
        """Cost of rollouts that ran but the budget refused to charge (exact units only)."""
        self.seen = [0.0, 0.0]
        """Weighted sum and weight of every step's backup targets so far: the running base rate a
        predictor's skill is measured against (part of a training checkpoint)."""
        self._planner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="allocator")

    async def _plan(self, fn: Callable[..., Any], *args: Any, timer: list[float] | None = None) -> Any:
        """Run an allocator call in the planning thread, adding its time to ``timer[0]``."""
        def timed() -> Any:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                if timer is not None:
                    timer[0] += time.perf_counter() - started

        return await asyncio.get_running_loop().run_in_executor(self._planner, timed)

    async def step(self, candidates: Sequence[Candidate], budget: Budget,
                   label: str | None = None, *, on_tail: Callable[[], None] | None = None) -> StepResult:
        """One step; ``label`` names it on the progress display (default: "step <n>");
        ``on_tail`` is called when its bare rollouts have all ended (`StepDriver.grow`).

        Steps may overlap (an asynchronous training loop starts the next step before this one
        ends): each has its own driver and budget, and their allocator calls take turns in the
        one planning thread."""
        started = time.perf_counter()
        self.steps += 1
        plan_s = [0.0]
        driver = StepDriver(self.allocator, plan_in=functools.partial(self._plan, timer=plan_s))
        states_before = dict(self.states.stats) if self.states else {}
        if self.states is not None:
            await self.states.probe((c.text, self.runner.prompt_ids(c.env, c.task_id)) for c in candidates)
        with _StepProgress(label or f"step {self.steps - 1}", budget, enabled=self.progress) as bar:
            engine = _Engine(self.runner, candidates, bar, self.states)
            grown = await driver.grow(engine, [c.text for c in candidates], budget, on_tail=on_tail)
        self.unpaid += driver.unpaid
        fit_started = time.perf_counter()
        brier, figures = await self._plan(lambda: driver.finish(grown.trees, refit=self.fit_predictor))
        fit_s = time.perf_counter() - fit_started
        skill = self._skill(grown.trees, brier)
        seconds = time.perf_counter() - started
        training = self.allocator.training_trees(grown.trees)
        summary = episodes_summary(engine.episodes)
        metrics = {
            "step": self.steps, "allocator": self.allocator.name, **figures.as_dict(),
            "cost_trajectory": budget.usage["trajectory"], "cost_turns": budget.usage["turns"],
            "cost_tokens": budget.usage["tokens"], "trained_trees": len(training),
            "roots": budget.roots, "continuations": budget.continuations,
            "cost": budget.spent, "budget": budget.total, "unpaid": self.unpaid, **summary,
            "cache_hit_rate": summary["cached_tokens"] / max(summary["prompt_tokens"], 1),
            "predictor_brier": brier, "predictor_skill": skill, "plan_s": plan_s[0], "fit_s": fit_s, "seconds": seconds,
            "tokens_per_s": summary["generated_tokens"] / max(seconds, 1e-9),
        }
        if self.states is not None:  # what reading the policy cost this step
            delta = {k: v - states_before[k] for k, v in self.states.stats.items()}
            metrics.update(state_probes=delta["probes"], state_free=delta["free"],
                           state_probe_s=delta["probe_s"], state_share=delta["probe_s"] / max(seconds, 1e-9))
        return StepResult(self.steps, grown.trees, training, engine.episodes, grown.counts, budget,
                          figures.ratio, seconds, metrics)

    def _skill(self, trees: Sequence[RolloutTree], brier: float | None) -> float | None:
        """The predictor's Brier skill on this step's targets against the running base rate of
        the steps before (1/2 before any): above 0, it foresaw the step better than a constant."""
        _, targets, weights = backup_targets(trees)
        if not len(targets):
            return None
        base = self.seen[0] / self.seen[1] if self.seen[1] else 0.5
        reference = brier_score(np.full(len(targets), base), targets, weights)
        self.seen = [self.seen[0] + float(weights @ targets), self.seen[1] + float(weights.sum())]
        return None if brier is None or reference == 0 else 1.0 - brier / reference


class _Engine:
    """The runner behind the driver: rollouts cost what they turn out to generate."""

    known_cost = None

    def __init__(self, runner: RolloutRunner, candidates: Sequence[Candidate], bar: _StepProgress,
                 states: PolicyStates | None) -> None:
        self.runner, self.candidates, self.bar, self.states = runner, candidates, bar, states
        self.episodes: list[Episode] = []

    def open(self, index: int) -> RolloutTree:
        c = self.candidates[index]
        return self.runner.new_tree(c.env, c.task_id)

    async def rollouts(self, tree: RolloutTree, node: Node, k: int, *, continuation: bool) -> list[Spent]:
        self.bar.planned(k)
        batch = await self.runner.rollouts(tree, node, k, on_episode=self.bar.episode_done)
        self.episodes += batch
        if self.states is not None:  # before the driver plans from these nodes
            await self.states.observe(batch)
        return [Spent(len(e.turns), e.generated_tokens) for e in batch]


class _StepProgress:
    """Progress of one step: episodes done of planned, tokens, budget (see trace_agents.progress)."""

    def __init__(self, label: str, budget: Budget, *, enabled: bool) -> None:
        self.budget = budget
        self.tokens = 0
        self.failed = 0
        self._reporter = Reporter(label, enabled=enabled)

    def planned(self, n: int) -> None:
        self._reporter.add_total(n)

    def _info(self) -> str:
        info = f"{self.tokens} tok  budget {self.budget.spent:g}/{self.budget.total:g}"
        return info + (f"  [red]{self.failed} failed[/]" if self.failed else "")

    def episode_done(self, episode: Episode) -> None:
        self.tokens += episode.generated_tokens
        self.failed += episode.status == "failed"
        self._reporter.advance(info=self._info())

    def __enter__(self) -> _StepProgress:
        self._reporter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._reporter.update(self._info())  # the budget is charged after the episode callback
        self._reporter.__exit__(*exc)
