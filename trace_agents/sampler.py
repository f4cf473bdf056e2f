"""The TRACE sampler: one driver that turns an allocator's plans into rollout trees.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trace_agents.progress import Reporter
from trace_agents.rollout import Episode, RolloutRunner, episodes_summary
from trace_agents.train.metrics import MetricsLog
from trace_allocation.allocators import Allocator
from trace_allocation.budget import Budget, BudgetExceeded
from trace_allocation.contrast import contrast
from trace_allocation.predictors import SuccessPredictor, brier_score
from trace_allocation.tree import RolloutTree, backup_targets
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
    def __init__(
        self,
        runner: RolloutRunner,
        allocator: Allocator,
        *,
        metrics_path: str | Path | None = None,
        progress: bool = True,
        fit_predictor: bool = True,
    ) -> None:
        self.runner = runner
        self.allocator = allocator
        self.log = MetricsLog(metrics_path) if metrics_path else None
        self.progress = progress
        self.fit_predictor = fit_predictor
        self.steps = 0
        self.unpaid = 0.0
        """Cost of rollouts that ran but the budget refused to charge (exact units only)."""
        self._planner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="allocator")
        self._plan_s = 0.0

    async def _plan(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an allocator call in the planning thread; its time counts to ``plan_s``."""
        def timed() -> Any:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._plan_s += time.perf_counter() - started

        return await asyncio.get_running_loop().run_in_executor(self._planner, timed)

    async def step(self, candidates: Sequence[Candidate], budget: Budget,
                   label: str | None = None) -> StepResult:
        """One step; ``label`` names it on the progress display (default: "step <n>")."""
        started = time.perf_counter()
        self.steps += 1
        self._plan_s = 0.0
        texts = [c.text for c in candidates]
        counts = np.asarray(await self._plan(self.allocator.plan_roots, texts, budget), dtype=np.int64)
        episodes: list[Episode] = []
        with _StepProgress(label or f"step {self.steps - 1}", budget, enabled=self.progress) as bar:
            self.runner.on_episode = bar.episode_done
            bar.planned(int(counts.sum()))
            trees = await self._grow_all(candidates, counts, budget, episodes, bar)
            while True:  # refills: DAPO draws more groups until its batch has enough mixed ones
                extra = np.asarray(await self._plan(self.allocator.plan_refill, trees, texts),
                                   dtype=np.int64)
                extra = _affordable(extra, budget)
                if not extra.any():
                    break
                counts += extra
                bar.planned(int(extra.sum()))
                trees += await self._grow_all(candidates, extra, budget, episodes, bar)
            self.runner.on_episode = None
        plan_s = self._plan_s
        fit_started = time.perf_counter()
        brier = await self._plan(self._fit_predictor, trees) if self.fit_predictor else None
        fit_s = time.perf_counter() - fit_started
        seconds = time.perf_counter() - started
        figures = contrast(trees)
        training = self.allocator.training_trees(trees)
        summary = episodes_summary(episodes)
        metrics = {
            "step": self.steps, "allocator": self.allocator.name, **figures.as_dict(),
            "cost_trajectory": budget.usage["trajectory"], "cost_turns": budget.usage["turns"],
            "cost_tokens": budget.usage["tokens"], "trained_trees": len(training),
            "roots": budget.roots, "continuations": budget.continuations,
            "cost": budget.spent, "budget": budget.total, "unpaid": self.unpaid, **summary,
            "cache_hit_rate": summary["cached_tokens"] / max(summary["prompt_tokens"], 1),
            "predictor_brier": brier, "plan_s": plan_s, "fit_s": fit_s, "seconds": seconds,
            "tokens_per_s": summary["generated_tokens"] / max(seconds, 1e-9),
        }
        if self.log is not None:
            self.log.append(metrics)
        return StepResult(self.steps, trees, training, episodes, counts, budget, figures.ratio, seconds, metrics)

    async def _grow_all(self, candidates: Sequence[Candidate], counts: np.ndarray, budget: Budget,
                        episodes: list[Episode], bar: _StepProgress) -> list[RolloutTree]:
        """Grow the opened prompts' trees concurrently; the trees are made first, in pool order,
        so each draws its seeds the same way however the episodes interleave."""
        opened = [(candidates[i], int(m)) for i, m in enumerate(counts.tolist()) if m > 0]
        trees = [self.runner.new_tree(c.env, c.task_id) for c, _ in opened]
        await asyncio.gather(*(self._grow(tree, m, budget, episodes, bar)
                               for tree, (_, m) in zip(trees, opened)))
        return trees

    async def _grow(self, tree: RolloutTree, m: int, budget: Budget,
                    episodes: list[Episode], bar: _StepProgress) -> None:
        """Bare rollouts of one prompt, then at once its Stage 2 continuations."""
        bare = await self.runner.rollouts(tree, tree.root, m)
        self._charge(bare, budget, continuation=False)
        episodes += bare
        planned = await self._plan(self.allocator.plan_continuations, tree)
        plan = [(node, k) for node, k in planned if k > 0]
        plan = self._affordable_continuations(plan, budget)
        bar.planned(sum(k for _, k in plan))
        for batch in await asyncio.gather(*(self.runner.rollouts(tree, n, k) for n, k in plan)):
            self._charge(batch, budget, continuation=True)
            episodes += batch

    def _affordable_continuations(self, plan: list[tuple[Any, int]], budget: Budget) -> list[tuple[Any, int]]:
        """Trim a Stage 2 plan to what the remaining budget pays for at the planning price."""
        left = int(budget.remaining // budget.continuation_price + 1e-9)
        kept = []
        for node, k in plan:
            k = min(k, left)
            left -= k
            if k:
                kept.append((node, k))
        return kept

    def _charge(self, episodes: Sequence[Episode], budget: Budget, *, continuation: bool) -> None:
        charge = budget.charge_continuation if continuation else budget.charge_root
        for e in episodes:
            try:
                charge(turns=len(e.turns), tokens=e.generated_tokens)
            except BudgetExceeded:
                self.unpaid += budget.cost(continuation=continuation, turns=len(e.turns), tokens=e.generated_tokens)

    def _fit_predictor(self, trees: Sequence[RolloutTree]) -> float | None:
        """Refit the shared predictor on the trees' backup targets; return its Brier score on
        them before the update (how well it foresaw this step)."""
        predictor: SuccessPredictor | None = self.allocator.predictor
        texts, y, w = backup_targets(trees)
        if predictor is None or not texts:
            return None
        brier = float(brier_score(predictor.predict(texts), y, w))
        predictor.update(texts, y, w)
        return brier


def _affordable(extra: np.ndarray, budget: Budget) -> np.ndarray:
    """Keep whole groups, in order, while the budget pays for their root rollouts."""
    left = budget.roots_affordable()
    kept = np.zeros_like(extra)
    for i in np.flatnonzero(extra):
        if extra[i] <= left:
            kept[i], left = extra[i], left - extra[i]
    return kept


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
