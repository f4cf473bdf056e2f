"""TRACE in verl's terms: per-prompt Stage 1 counts, per-prompt Stage 2 branches, tree advantages.

No verl import: `trace_agents.verl.trainer` wires these into verl's V1 trainer, and the tests drive
them directly. One step:

    sampler = TraceSampler(allocator)                        # trace_allocation.driver.StepDriver inside
    counts = sampler.plan_roots(task_texts, budget)          # trainer: Stage 1 (``__rollout_n__``)
    caps = sampler.driver.continuation_caps(counts, budget)  # trainer: each prompt's Stage 2 cap
    # agent-loop worker, per prompt, as soon as its own roots end (no barrier across prompts):
    extra = pool.take(pool_request(allocator, root_episodes))   # what failed prompts left (a Ray actor)
    branches = plan_prompt(allocator, root_episodes, cap, extra=extra)  # -> more rollouts of the same uid
    pool.give(cap + extra - len(branches))
    # trainer, on the batch read back from TransferQueue (episodes may be dicts, see Episode.from_dict):
    sampler.observe(episodes, budget)                        # trees + the same Budget charges
    adv = sampler.advantages(mode="tree")                    # trace_agents.train.advantages
    sampler.update_predictor()                               # backup targets -> predictor refit

These are the pieces of the one step driver (`trace_allocation.driver`), which verl's ``fit()``
cannot hand its loop to. Planning only decides counts; `observe` charges the budget for what ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from trace_agents.train.advantages import AdvantageMode, SharedTokens, training_samples
from trace_agents.verl.episode import Branch, Episode
from trace_allocation import Budget, Node, RolloutTree
from trace_allocation.allocators import Allocator
from trace_allocation.contrast import Contrast, contrast
from trace_allocation.driver import Spent, StepDriver, refit_predictor

EPISODE_KEY = "trace_episode"
"""``AgentLoopOutput.extra_fields`` key holding the `Episode` (a dict after V1's ``as_dict``)."""
BRANCH_KEY = "trace_branch"
"""Agent-loop keyword argument of a continuation: the `Branch` to resume."""
CONTINUATIONS_KEY = "__trace_continuations__"
"""Per-row batch column: the prompt's Stage 2 cap (read and removed by the TRACE worker)."""


class TraceSampler:
    """Grows one `RolloutTree` per prompt from observed episodes and plans with an allocator."""

    def __init__(self, allocator: Allocator) -> None:
        self.driver = StepDriver(allocator)
        self.allocator = allocator
        self.trees: dict[str, RolloutTree] = {}
        self.episodes: dict[str, Episode] = {}
        self._nodes: dict[tuple[str, int], Node] = {}

    def reset(self) -> None:
        """Start a new step: the previous step's trees are forgotten."""
        self.trees.clear()
        self.episodes.clear()
        self._nodes.clear()

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        """Stage 1: root rollouts per candidate prompt (0 drops it). The trees are kept: an
        asynchronous trainer plans while it trains the groups of earlier plans (`reset` starts a step)."""
        return self.driver.plan_roots(prompt_texts, budget)

    def observe(self, episodes: Iterable[Episode | Mapping[str, Any]], budget: Budget | None) -> None:
        """Add finished episodes to their trees (roots before their continuations) and charge them.

        Failed episodes (the engine aborted) are charged but carry no reward, like the in-process
        sampler's failed rollouts."""
        for ep in map(Episode.from_dict, episodes):
            if ep.parent is None:
                tree = self.trees.get(ep.prompt_key)
                if tree is None:
                    tree = self.trees[ep.prompt_key] = RolloutTree(ep.prompt_key, ep.task_prompt)
                node, continuation = tree.root, False
            else:
                if ep.parent not in self._nodes:
                    raise ValueError(f"continuation {ep.id} of unknown turn {ep.parent}; observe its parent first")
                node, continuation = self._nodes[ep.parent], True
            if budget is not None:
                self.charge(ep, budget)
            for turn in range(ep.branch_turn + 1, len(ep.turns) + 1):
                node = node.add_child(_text(ep, turn), handle=(ep.id, turn), continuation=continuation)
                continuation = False
                self._nodes[(ep.id, turn)] = node
            if not ep.failed:
                node.finish(ep.reward)
            self.episodes[ep.id] = ep

    def charge(self, ep: Episode, budget: Budget) -> None:
        """Charge what the episode generated (a continuation: past its branch turn) to ``budget``."""
        if ep.parent is None:
            continuation, turns, tokens = False, len(ep.turns), sum(ep.response_mask)
        else:
            offset = ep.turns[ep.branch_turn - 1].offset
            continuation, turns, tokens = True, len(ep.turns) - ep.branch_turn, sum(ep.response_mask[offset:])
        self.driver.charge(budget, Spent(turns, tokens), continuation=continuation)

    def plan_continuations(self, prompt_key: str, cap: int, *, extra: int = 0) -> list[Branch]:
        """Stage 2 for one observed prompt: up to ``cap`` branches plus ``extra`` drawn from the
        step's pool, as the allocator spreads them."""
        tree = self.trees.get(prompt_key)
        if tree is None or cap + extra <= 0:
            return []
        branches: list[Branch] = []
        for node, k in self.driver.plan_continuations(tree, cap + extra, extra=extra):
            episode_id, turn = node.handle
            branches += [self.episodes[episode_id].branch(turn)] * k
        return branches

    def advantages(
        self, *, mode: AdvantageMode = "tree", shared: SharedTokens = "average"
    ) -> dict[str, dict[int, float]]:
        """Per episode id, the advantage of each turn it trains (1-based; untrained turns absent),
        from `trace_agents.train.advantages.training_samples`, the native trainer's function."""
        out: dict[str, dict[int, float]] = {ep_id: {} for ep_id in self.episodes}
        for sample in training_samples(self.trees.values(), mode=mode, shared=shared):
            episode_id, last = sample.leaf.handle
            ep = self.episodes[episode_id]
            for depth, value in sample.advantages.items():
                out[episode_id][depth] = value
            assert last == len(ep.turns)
        return out

    def contrast(self) -> Contrast:
        """This step's figures (mixed trees, effective ratio, informative share), measured like
        every other driver's; log ``contrast().as_dict()`` and ``budget.usage``."""
        return contrast(self.trees.values())

    def update_predictor(self) -> float | None:
        """Refit the allocator's predictor on this step's tree backup targets; return its Brier
        score on them before the update (the driver's `refit_predictor`)."""
        return refit_predictor(self.allocator, list(self.trees.values()))


def plan_prompt(allocator: Allocator, roots: Sequence[Episode | Mapping[str, Any]], cap: int, *,
                extra: int = 0) -> list[Branch]:
    """The agent-loop worker's Stage 2 for one prompt, from that prompt's root episodes alone:
    ``cap`` is its own share, ``extra`` what it drew from the step's pool (`pool_request`)."""
    sampler = TraceSampler(allocator)
    sampler.observe(roots, budget=None)
    keys = {Episode.from_dict(r).prompt_key for r in roots}
    if len(keys) > 1:
        raise ValueError(f"plan_prompt got episodes of several prompts: {sorted(keys)}")
    return sampler.plan_continuations(keys.pop(), cap, extra=extra) if keys else []


def pool_request(allocator: Allocator, roots: Sequence[Episode | Mapping[str, Any]]) -> int:
    """What a prompt may draw from the step's `ContinuationPool`: its own share again, counted
    (as the driver's `plan_pooled` counts it) over the roots that finished."""
    return allocator.continuations_per_root * sum(not Episode.from_dict(r).failed for r in roots)


def token_advantages(ep: Episode, turn_advantages: Mapping[int, float]) -> tuple[list[float], list[int]]:
    """Per response token: the advantage of the turn it belongs to, and the loss mask restricted to
    the turns this episode trains (a continuation's inherited turns, a failed episode: none)."""
    values = [0.0] * len(ep.response_ids)
    mask = [0] * len(ep.response_ids)
    start = 0
    for depth, turn in enumerate(ep.turns, start=1):
        if depth in turn_advantages:
            for j in range(start, turn.offset):
                values[j] = turn_advantages[depth]
                mask[j] = ep.response_mask[j]
        start = turn.offset
    return values, mask


def _text(ep: Episode, turn: int):
    return lambda: ep.prefix_text(turn)


__all__ = ["BRANCH_KEY", "CONTINUATIONS_KEY", "EPISODE_KEY", "TraceSampler", "plan_prompt", "pool_request",
           "token_advantages"]
