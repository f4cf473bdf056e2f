"""The TRACE sampler: one driver that turns an allocator's plans into rollout trees.

One step: the allocator scores the candidate pool and sets Stage 1 root counts; each opened
prompt runs its bare rollouts and, **as soon as its own bare rollouts finish** (no barrier across
prompts), the allocator plans its Stage 2 continuations, which are branched from the chosen
prefixes. Allocators that refill (DAPO) get more groups while the budget lasts. The baselines
(GRPO, PCL, TreePO-random, DAPO; ``trace_allocation.allocators``) run through this same code, so
every comparison is at equal cost with the same rollouts machinery. Every rollout is charged to
the :class:`~trace_allocation.Budget`, failed ones included (the compute was spent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trace_agents.progress import Reporter
from trace_agents.rollout import Episode, RolloutRunner, episodes_summary
from trace_agents.train.metrics import MetricsLog
from trace_allocation.allocators import Allocator
from trace_allocation.budget import Budget, BudgetExceeded
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
    episodes: list[Episode]
    root_counts: np.ndarray
    """Stage 1 counts over the candidate pool (refills added)."""
    budget: Budget
    effective_ratio: float
    """Share of opened prompts whose tree has both a success and a failure leaf."""
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

    async def step(self, candidates: Sequence[Candidate], budget: Budget,
                   label: str | None = None) -> StepResult:
        """One step; ``label`` names it on the progress display (default: "step <n>")."""
        started = time.perf_counter()
        self.steps += 1
        texts = [c.text for c in candidates]
        counts = np.asarray(self.allocator.plan_roots(texts, budget), dtype=np.int64)
        plan_s = time.perf_counter() - started
        episodes: list[Episode] = []
        with _StepProgress(label or f"step {self.steps - 1}", budget, enabled=self.progress) as bar:
            self.runner.on_episode = bar.episode_done
            bar.planned(int(counts.sum()))
            trees = list(await asyncio.gather(*(
                self._grow(candidates[i], int(m), budget, episodes, bar)
                for i, m in enumerate(counts.tolist()) if m > 0
            )))
            while True:  # refills: DAPO draws more groups until its batch has enough mixed ones
                extra = np.asarray(self.allocator.plan_refill(trees, texts), dtype=np.int64)
                extra = _affordable(extra, budget)
                if not extra.any():
                    break
                counts += extra
                bar.planned(int(extra.sum()))
                trees += await asyncio.gather(*(
                    self._grow(candidates[i], int(m), budget, episodes, bar)
                    for i, m in enumerate(extra.tolist()) if m > 0
                ))
            self.runner.on_episode = None
        brier = self._fit_predictor(trees) if self.fit_predictor else None
        seconds = time.perf_counter() - started
        effective = float(np.mean([t.is_mixed for t in trees])) if trees else 0.0
        summary = episodes_summary(episodes)
        metrics = {
            "step": self.steps, "allocator": self.allocator.name, "prompts": len(trees),
            "roots": budget.roots, "continuations": budget.continuations,
            "cost": budget.spent, "budget": budget.total, "unpaid": self.unpaid,
            "effective_ratio": effective, **summary,
            "cache_hit_rate": summary["cached_tokens"] / max(summary["prompt_tokens"], 1),
            "predictor_brier": brier, "plan_roots_s": plan_s, "seconds": seconds,
            "tokens_per_s": summary["generated_tokens"] / max(seconds, 1e-9),
        }
        if self.log is not None:
            self.log.append(metrics)
        return StepResult(self.steps, trees, episodes, counts, budget, effective, seconds, metrics)

    async def _grow(self, candidate: Candidate, m: int, budget: Budget,
                    episodes: list[Episode], bar: _StepProgress) -> RolloutTree:
        """Bare rollouts of one prompt, then at once its Stage 2 continuations."""
        tree = self.runner.new_tree(candidate.env, candidate.task_id)
        bare = await self.runner.rollouts(tree, tree.root, m)
        self._charge(bare, budget, continuation=False)
        episodes += bare
        plan = [(node, k) for node, k in self.allocator.plan_continuations(tree) if k > 0]
        plan = self._affordable_continuations(plan, budget)
        bar.planned(sum(k for _, k in plan))
        for batch in await asyncio.gather(*(self.runner.rollouts(tree, n, k) for n, k in plan)):
            self._charge(batch, budget, continuation=True)
            episodes += batch
        return tree

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
                charge(turns=e.turns, tokens=e.generated_tokens)
            except BudgetExceeded:
                self.unpaid += budget.cost(continuation=continuation, turns=e.turns, tokens=e.generated_tokens)

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
