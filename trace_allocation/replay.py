"""A replay world: the simulator's world interface over a real policy's recorded outcomes.

The synthetic worlds (`simulate.SyntheticTasks`) know their true values by construction; a
replay world knows only what was recorded: per prompt a handful of bare rollouts (outcome, turns)
and, for some of them, the transcript of each non-final turn with the outcomes of continuations
sampled from it. Rolling a prompt resamples (with replacement) its recorded bare rollouts;
continuing a prefix resamples its recorded continuations. A bare rollout whose prefixes were not
recorded goes straight from the root to its outcome, so it offers Stage 2 nothing to branch
from: the world never invents a state it has not seen. The "true" values the oracles read are the
empirical rates the world draws from (bare rate of a prompt, continuation rate of a prefix), so
the oracles know the replayed world exactly.

The data are plain arrays (`ReplayPrompt`); converting a recording file is the agent layer's job
(`trace_agents.recording.replay_data`), since this package never imports `trace_agents`.
Costs: a rollout is charged before it is drawn, so a root costs its prompt's mean recorded turns
and a continuation its prefix's mean; the realized lengths differ only in the rare rollout that
was cut short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from trace_allocation.predictors import (
    SuccessPredictor,
    auc,
    brier_score,
    brier_skill,
    spearman,
)
from trace_allocation.simulate import Scenario
from trace_allocation.tree import TURN_MARK, Node, RolloutTree, prompt_of, turns_in

REAL_RUN = Scenario(roots=8, pool_size=32, continuations_per_root=1, grpo_group=4, tree_group=4, m_max=4,
                    steps=20, warmup=5, dapo_budget_multiple=2.0)
"""The replay world's default sizes: those of the SmolLM2 run (`benchmarks/train_compare.py`):
12 trajectory-equivalents a step, DAPO at up to 2x."""

END = "<end>"
"""Text of a replayed leaf's last turn: leaves are never read by a predictor, only rewarded."""


def _outcomes(rewards: np.ndarray, turns: np.ndarray, what: str) -> None:
    if rewards.ndim != 1 or rewards.shape != turns.shape or not rewards.size:
        raise ValueError(f"{what}: need equally long, non-empty 1-d rewards and turns")
    if not np.all(np.isfinite(rewards)) or np.any((rewards < 0) | (rewards > 1)):
        raise ValueError(f"{what}: rewards must be finite and in [0, 1]")
    if np.any(turns < 1):
        raise ValueError(f"{what}: every outcome takes at least one turn")


@dataclass(frozen=True)
class ReplayPrefix:
    """A recorded prefix (its transcript, a prefix text by `tree.TURN_MARK`) and the outcomes of
    the continuations sampled from it (their own turns, the prefix's excluded)."""

    text: str
    rewards: np.ndarray
    turns: np.ndarray
    state: np.ndarray | None = None
    """The policy's last-layer hidden state at the prefix's end, where recorded."""

    def __post_init__(self) -> None:
        _outcomes(self.rewards, self.turns, f"prefix {self.text[:60]!r}")
        if turns_in(self.text) < 1:
            raise ValueError(f"prefix {self.text[:60]!r} holds no turn (no {TURN_MARK!r})")


@dataclass(frozen=True)
class ReplayPrompt:
    """One prompt: its bare rollouts' rewards and turns, and for each bare rollout the indices
    (into `prefixes`, shallowest first) of its recorded prefixes; empty when none were recorded."""

    text: str
    rewards: np.ndarray
    turns: np.ndarray
    paths: tuple[tuple[int, ...], ...]
    prefixes: tuple[ReplayPrefix, ...]
    state: np.ndarray | None = None
    """The policy's last-layer hidden state at the prompt's end, where recorded."""

    def __post_init__(self) -> None:
        name = f"prompt {self.text[:60]!r}"
        _outcomes(self.rewards, self.turns, name)
        if TURN_MARK in self.text:
            raise ValueError(f"{name} contains the turn mark {TURN_MARK!r}")
        if len({p.text for p in self.prefixes}) != len(self.prefixes):
            raise ValueError(f"{name}: two prefixes with the same transcript (pool their continuations)")
        if len(self.paths) != self.rewards.size:
            raise ValueError(f"{name}: {len(self.paths)} paths for {self.rewards.size} bare rollouts")
        for r, path in enumerate(self.paths):
            if any(not 0 <= k < len(self.prefixes) for k in path):
                raise ValueError(f"{name}: rollout {r} names a prefix that does not exist")
            texts = [self.prefixes[k].text for k in path]
            if any(prompt_of(t) != self.text for t in texts):
                raise ValueError(f"{name}: rollout {r} has a prefix of another prompt")
            depths = [turns_in(t) for t in texts]
            if depths != sorted(set(depths)) or (depths and depths[-1] >= self.turns[r]):
                raise ValueError(f"{name}: rollout {r}'s prefixes must deepen and end before its last turn")


class ReplayState(NamedTuple):
    """Resume handle of a replayed node: which prompt and recorded prefix (-1: the root), and the
    expected turns t done / turns in all (what the simulator's budget charges read)."""

    prompt: int
    prefix: int
    t: int
    turns: float


def _probit(p: np.ndarray) -> np.ndarray:
    unit = NormalDist()
    return np.array([-np.inf if v <= 0 else np.inf if v >= 1 else unit.inv_cdf(float(v)) for v in np.ravel(p)])


class ReplayTasks:
    """The simulator's world interface (`root_tree`, `roll`, `probit`, `text_value`, `truth`,
    `text_truth`, `turns`, `scenario`) over recorded prompts. Static: the recorded policy does not
    drift, so `step` is ignored. `scenario.n_prompts` must be the number of prompts."""

    def __init__(self, prompts: Sequence[ReplayPrompt], scenario: Scenario) -> None:
        if len(prompts) != scenario.n_prompts:
            raise ValueError(f"the scenario has n_prompts={scenario.n_prompts} for {len(prompts)} recorded prompts")
        if scenario.pool_size > len(prompts):
            raise ValueError(f"pool_size={scenario.pool_size} exceeds the {len(prompts)} recorded prompts")
        self.scenario = scenario
        self.prompts = list(prompts)
        self.texts = [p.text for p in self.prompts]
        if len(set(self.texts)) != len(self.texts):
            raise ValueError("two recorded prompts have the same text")
        self.rates = np.array([p.rewards.mean() for p in self.prompts])
        self.turns = np.array([p.turns.mean() for p in self.prompts])
        self.base_rate = float(np.concatenate([p.rewards for p in self.prompts]).mean())
        self.prefix_rates = {pre.text: float(pre.rewards.mean()) for p in self.prompts for pre in p.prefixes}
        self.states = {x.text: x.state for p in self.prompts for x in (p, *p.prefixes) if x.state is not None}
        """Each recorded prompt's and prefix's hidden state, by text (what `features` serves)."""
        self.truth: dict[str, float] = {}
        self.text_truth: dict[str, float] = {}
        self.trees: list[RolloutTree] = []
        """This step's trees (every `root_tree` of the step; the opened ones have leaves)."""
        self._step: int | None = None

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The recorded policy's hidden states of these prompts and prefixes, ``[n, hidden]``:
        what a policy-state predictor reads (the engine computed them while sampling)."""
        missing = [t for t in texts if t not in self.states]
        if missing:
            raise ValueError(f"the recording holds no hidden state for {len(missing)} texts, e.g. {missing[0][:60]!r}")
        return np.stack([self.states[t] for t in texts]).astype(np.float64)

    def probit(self, prompts: np.ndarray, step: int) -> np.ndarray:
        """Probit of each prompt's recorded bare success rate (the simulator takes Phi of it)."""
        return _probit(self.rates[np.asarray(prompts)])

    def text_value(self, prompts: np.ndarray, step: int) -> np.ndarray:
        """What the text alone is taken to tell of an unseen prompt: the recording's base rate
        (no model of real prompts' difficulty is known to do better)."""
        return np.full(np.shape(prompts), self.base_rate)

    def root_tree(self, prompt: int, step: int) -> RolloutTree:
        if step != self._step:
            self._step, self.trees = step, []
        text = self.texts[prompt]
        self.truth[text] = float(self.rates[prompt])
        self.text_truth[text] = self.base_rate
        tree = RolloutTree(int(prompt), text, handle=ReplayState(int(prompt), -1, 0, float(self.turns[prompt])))
        self.trees.append(tree)
        return tree

    def roll(self, node: Node, n: int, rng: np.random.Generator, *, continuation: bool) -> list[Node]:
        """n rollouts from `node`: resampled bare rollouts at the root, resampled continuations
        at a recorded prefix."""
        prompt, k = node.handle.prompt, node.handle.prefix
        record = self.prompts[prompt]
        if k < 0:
            return [self._bare(node, record, int(r)) for r in rng.integers(record.rewards.size, size=n)]
        prefix = record.prefixes[k]
        leaves = []
        for j in rng.integers(prefix.rewards.size, size=n):
            leaf = node.add_child(f"{node.prefix_text}{TURN_MARK}{END}", continuation=continuation)
            leaves.append(leaf.finish(float(prefix.rewards[j])))
        return leaves

    def _bare(self, root: Node, record: ReplayPrompt, r: int) -> Node:
        cur = root
        for k in record.paths[r]:
            prefix = record.prefixes[k]
            depth = turns_in(prefix.text)
            state = ReplayState(root.handle.prompt, k, depth, depth + float(prefix.turns.mean()))
            cur = cur.add_child(prefix.text, state)
            self.truth[prefix.text] = float(prefix.rewards.mean())
        leaf = cur.add_child(f"{cur.prefix_text}{TURN_MARK}{END}")
        return leaf.finish(float(record.rewards[r]))


def replay_world(prompts: Sequence[ReplayPrompt],
                 scenario: Scenario = REAL_RUN) -> tuple[Scenario, Callable[[Scenario], ReplayTasks]]:
    """The scenario (its `n_prompts` set to the recording's) and the world factory for
    `simulate(..., make_world=)`; the pool is capped at the recorded prompts."""
    sc = scenario.with_(n_prompts=len(prompts), pool_size=min(scenario.pool_size, len(prompts)))
    return sc, lambda s: ReplayTasks(prompts, s)


@dataclass(frozen=True)
class StepScore:
    """How well a predictor did on one step's opened trees, before it learned from them: Brier
    score, Brier skill against the run's base rate so far (bare outcomes of earlier steps; 1/2
    at the first), AUC, on the roots and on the recorded prefixes of bare rollouts (each against
    its rollout's reward), and the Spearman correlation of its values for Stage 2's candidate
    prefixes against their recorded continuation rates."""

    step: int
    base_rate: float
    brier_root: float | None
    skill_root: float | None
    auc_root: float | None
    brier_prefix: float | None
    skill_prefix: float | None
    auc_prefix: float | None
    spearman_prefix: float | None


class Scorecard:
    """A transparent wrapper around an allocator's predictor in a replay world: each `update`
    first scores the step's opened trees (a `StepScore` in `scores`), then forwards. Everything
    else (including `root_moments`) is the wrapped predictor's."""

    def __init__(self, predictor: SuccessPredictor, world: ReplayTasks) -> None:
        self.inner = predictor
        self.world = world
        self.scores: list[StepScore] = []
        self.ranked: list[tuple[int, float, float]] = []
        """(step, value, recorded continuation rate) of every step's Stage 2 candidates."""
        self._outcomes = [0.0, 0]

    def __getattr__(self, name: str):
        if name == "inner":  # not yet set (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.predict(texts)

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.scores.append(self._score())
        self.inner.update(texts, targets, weights)

    def _score(self) -> StepScore:
        base = self._outcomes[0] / self._outcomes[1] if self._outcomes[1] else 0.5
        rows: dict[bool, tuple[list[str], list[float]]] = {True: ([], []), False: ([], [])}
        candidates: dict[str, float] = {}
        for tree in self.world.trees:
            for leaf in tree.leaves():
                if leaf.bare:
                    for node in leaf.path()[:-1]:
                        texts, outcomes = rows[node is tree.root]
                        texts.append(node.prefix_text)
                        outcomes.append(leaf.reward)
            for c in tree.prefix_candidates():
                candidates[c.node.prefix_text] = self.world.prefix_rates[c.node.prefix_text]
        figures = []
        for is_root in (True, False):
            texts, outcomes = rows[is_root]
            if not texts:
                figures += [None, None, None]
                continue
            probs, y = self.predict(texts), np.array(outcomes)
            figures += [brier_score(probs, y), brier_skill(probs, y, base), auc(probs, y)]
        roots = np.array(rows[True][1])
        self._outcomes[0] += float(roots.sum())
        self._outcomes[1] += roots.size
        step = self.world._step if self.world._step is not None else -1
        ranked = list(candidates)
        values, truth = (self.predict(ranked), np.array([candidates[t] for t in ranked])) if ranked else ([], [])
        self.ranked += [(step, float(v), float(t)) for v, t in zip(values, truth)]
        return StepScore(step, base, *figures, spearman(values, truth) if ranked else None)

    def spearman_since(self, step: int) -> float | None:
        """Spearman of Stage 2's candidate values against their recorded rates, pooled over the
        steps from `step` on (a step alone holds a few prefixes)."""
        rows = [(v, t) for s, v, t in self.ranked if s >= step]
        return spearman(*map(np.array, zip(*rows))) if rows else None


def scored(make_allocator: Callable, world_scores: list[Scorecard]) -> Callable:
    """An allocator factory whose allocator's predictor (if any) is wrapped in a `Scorecard`,
    appended to `world_scores`."""

    def make(world: ReplayTasks, rng: np.random.Generator):
        allocator = make_allocator(world, rng)
        if allocator.predictor is not None:
            allocator.predictor = Scorecard(allocator.predictor, world)
            world_scores.append(allocator.predictor)
        return allocator

    return make


SCORES = ("skill_root", "auc_root", "skill_prefix", "auc_prefix", "spearman_prefix")
SUMMARY = (*SCORES, "skill_positive", "spearman_pooled")
"""What `score_summary` reports."""


def score_summary(cards: Sequence[Scorecard], warmup: int) -> dict[str, float | None]:
    """A run's predictor scores: each `StepScore` figure's mean over the measured steps (from
    `warmup` on; steps without the figure skipped), the share of those steps whose root skill
    was positive (`skill_positive`, the real run's goal metric) and the pooled Spearman
    (`spearman_pooled`); all None for a method without a predictor (no card)."""
    if not cards:
        return dict.fromkeys(SUMMARY)
    measured = cards[0].scores[warmup:]
    means = {}
    for key in SCORES:
        values = [getattr(s, key) for s in measured if getattr(s, key) is not None]
        means[key] = float(np.mean(values)) if values else None
    skills = [s.skill_root for s in measured if s.skill_root is not None]
    return means | {"skill_positive": float(np.mean(np.array(skills) > 0)) if skills else None,
                    "spearman_pooled": cards[0].spearman_since(warmup)}
