"""TRACE in verl's terms: per-prompt repeat counts, then branch requests as extra batch rows.

verl's trainer repeats every prompt ``rollout.n`` times; TRACE decides the counts per prompt and
then branches continuations from chosen turns. A driver (a custom trainer step) does:

    sampler = TraceSampler(allocator)                      # a trace_allocation Allocator
    counts = sampler.plan_roots(prompt_texts, budget)      # Stage 1
    roots = manager.generate_sequences(gen_batch.sample_level_repeat(counts))
    sampler.observe(roots.non_tensor_batch[EPISODE_KEY], budget)
    rows, branches = sampler.plan_continuations(budget)    # Stage 2
    cont = roots_input.select_idxs(rows)                   # the dataset rows of the parents
    cont.non_tensor_batch[BRANCH_KEY] = branches           # TraceEnvAgentLoop resumes these
    conts = manager.generate_sequences(cont)
    sampler.observe(conts.non_tensor_batch[EPISODE_KEY], budget)
    sampler.update_predictor()                             # backup targets -> predictor refit

Planning only decides counts; `observe` charges the budget for what ran. Continuations are
capped by what the budget still affords, so in trajectory units the plan can never overspend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from trace_agents.verl.episode import Branch, Episode
from trace_allocation import Budget, Node, RolloutTree
from trace_allocation.tree import backup_targets
from trace_allocation.allocators import Allocator
from trace_allocation.contrast import Contrast, contrast

EPISODE_KEY = "trace_episode"
"""``AgentLoopOutput.extra_fields`` key (hence a ``non_tensor_batch`` column) holding the `Episode`."""
BRANCH_KEY = "trace_branch"
"""``non_tensor_batch`` column of a continuation row: the `Branch` to resume (None on root rows)."""


class TraceSampler:
    """Grows one `RolloutTree` per prompt from observed episodes and plans with an allocator."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator
        self.trees: dict[str, RolloutTree] = {}
        self._nodes: dict[tuple[str, int], Node] = {}
        self._episodes: dict[str, Episode] = {}
        self._rows: dict[str, int] = {}

    def plan_roots(self, prompt_texts: Sequence[str], budget: Budget) -> np.ndarray:
        """Root rollouts per candidate prompt, for ``DataProto.sample_level_repeat`` (0 drops it).

        Starts a new step: trees of the previous one are forgotten."""
        self.trees.clear()
        self._nodes.clear()
        self._episodes.clear()
        self._rows.clear()
        return np.asarray(self.allocator.plan_roots(list(prompt_texts), budget), dtype=np.int64)

    def observe(self, episodes: Iterable[Episode], budget: Budget) -> None:
        """Add finished episodes (one generated batch, in row order) to their trees; charge them."""
        for row, ep in enumerate(episodes):
            if ep.parent is None:
                tree = self.trees.get(ep.prompt_key)
                if tree is None:
                    tree = self.trees[ep.prompt_key] = RolloutTree(ep.prompt_key, ep.task_prompt)
                node, continuation = tree.root, False
                budget.charge_root(turns=len(ep.turns), tokens=sum(ep.response_mask))
            else:
                if ep.parent not in self._nodes:
                    raise ValueError(f"continuation {ep.id} of unknown turn {ep.parent}; observe its parent first")
                node, continuation = self._nodes[ep.parent], True
                new_tokens = sum(ep.response_mask[ep.turns[ep.branch_turn - 1].offset:])
                budget.charge_continuation(turns=len(ep.turns) - ep.branch_turn, tokens=new_tokens)
            for turn in range(ep.branch_turn + 1, len(ep.turns) + 1):
                node = node.add_child(_text(ep, turn), handle=(ep.id, turn), continuation=continuation)
                continuation = False
                self._nodes[(ep.id, turn)] = node
            node.finish(ep.reward)
            self._episodes[ep.id] = ep
            self._rows[ep.id] = self._rows.get(ep.parent[0], row) if ep.parent else row

    def plan_continuations(self, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
        """Stage 2 for every observed prompt: (dataset row of each continuation's root episode in
        the observed root batch, object array of `Branch`), at most what the budget affords."""
        affordable = math.floor(budget.remaining / budget.continuation_price + 1e-9)
        rows: list[int] = []
        branches: list[Branch] = []
        for tree in self.trees.values():
            planned = self.allocator.plan_continuations(tree)
            wanted = min(sum(k for _, k in planned), affordable - len(branches))
            for node, k in planned:
                episode_id, turn = node.handle
                for _ in range(min(k, wanted)):
                    rows.append(self._rows[episode_id])
                    branches.append(self._episodes[episode_id].branch(turn))
                wanted -= min(k, wanted)
        column = np.empty(len(branches), dtype=object)
        column[:] = branches
        return np.asarray(rows, dtype=np.int64), column

    def contrast(self) -> Contrast:
        """This step's figures (mixed trees, effective ratio, informative share), measured like
        every other driver's; log ``contrast().as_dict()`` and ``budget.usage``."""
        return contrast(self.trees.values())

    def update_predictor(self) -> None:
        """Refit the allocator's predictor on this step's tree backup targets (weights: leaves)."""
        predictor = self.allocator.predictor
        if predictor is None:
            return
        texts, targets, weights = backup_targets(self.trees.values(), include_leaves=True)
        if texts:
            predictor.update(texts, targets, weights)


def _text(ep: Episode, turn: int):
    return lambda: ep.prefix_text(turn)
