"""Allocation simulator: synthetic rollout trees whose true success probabilities are known.

The world (all knobs in `Scenario`):
* A training set of prompts. Prompt p has a latent probit z_p = mu + s * zeta_p + drift * step * rate_p:
  zeta_p mixes shared "topic" effects (visible as topic tokens, so text models generalize to unseen
  prompts) with a prompt-specific part (visible only through the identity token `q<p>`), and the
  policy improves at a prompt-specific rate. The spread `s` is calibrated so that uniform GRPO with
  groups of G sees the target effective ratio at step 0 (default 27%, the paper's GRPO baseline).
* A rollout of prompt p has T_p turns. With X_0 = z_p and X_t = X_{t-1} + eps_t, eps_t ~ N(0, 1/T_p),
  the reward is 1[X_T > 0], so the true value V_t = P(success | X_t) = Phi(X_t / sqrt((T - t) / T)) is
  a martingale along every trajectory, and V_0 = Phi(z_p).
* Each turn's text holds `tokens_per_turn` words, each a "good" word with probability
  sigmoid(turn_signal * eps_t * sqrt(T)): learnable but noisy evidence about the latent walk, plus a
  `left<k>` token for the turns remaining.
Every step a candidate pool of `pool_size` prompts is drawn uniformly; every prompt-selecting
method (PCL, TRACE, DAPO) sees the same pool size. Each step is `trace_allocation.driver`'s, the
simulator being its engine: the allocator plans, the world rolls out, the driver charges the budget
and refits the allocator's predictor online on the backup targets (`staleness` steps late, as
the asynchronous pipeline may plan a step before the last ones' refits).

Cost: the budget is charged in `cost_unit` ("trajectory": 1 per root, `continuation_cost` per
continuation; "turns": generated turns exactly, the total being the trajectory budget times the
mean rollout length), and every step records its cost in both units. In turns, Stage 1 prices each
prompt at its expected length (its own once seen, the run's mean before) and Stage 2 prices a
continuation at the turns it will generate. Every opened prompt runs its bare rollouts before any
continuation is paid, and its first pair of them (`driver.MIN_GROUP`, all or none) before any prompt gets
a third, so a prompt whose length was underestimated at planning cannot starve the prompts after
it: an opened prompt goes without rollouts only if the pairs alone overrun the budget.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from trace_allocation.allocators import Allocator
from trace_allocation.budget import Budget, ExpectedCost
from trace_allocation.driver import Spent, StepDriver, refit_predictor
from trace_allocation.predictors import brier_score
from trace_allocation.root import root_value
from trace_allocation.tree import TURN_MARK, Node, RolloutTree


@dataclass(frozen=True)
class Scenario:
    n_prompts: int = 1024
    pool_size: int = 512
    roots: int = 256
    continuations_per_root: int = 2
    continuation_cost: float = 0.5
    cost_unit: str = "trajectory"  # or "turns": charge generated turns exactly
    grpo_group: int = 8
    tree_group: int = 4
    m_min: int = 2
    m_max: int = 16
    steps: int = 30
    warmup: int = 5
    min_turns: int = 2
    max_turns: int = 8
    grpo_effective_ratio: float = 0.27
    difficulty_mean: float = -0.5
    topic_share: float = 0.9
    n_topics: int = 64
    topics_per_prompt: int = 3
    dapo_budget_multiple: float = 16.0  # DAPO may over-sample up to this multiple of the budget
    drift: float = 0.02
    tokens_per_turn: int = 4
    turn_signal: float = 1.5
    words_per_kind: int = 8
    staleness: int = 0
    """Steps the predictor's refit lags behind (the asynchronous pipeline's `pipeline.staleness`):
    step j is planned, both stages, by a predictor refit on steps up to j - 1 - staleness only."""
    seed: int = 0

    @property
    def budget(self) -> float:
        """Trajectory-equivalents per step: M roots plus M N continuations at their cost."""
        return self.roots * (1 + self.continuations_per_root * self.continuation_cost)

    def with_(self, **changes) -> Scenario:
        return replace(self, **changes)


class SimState(NamedTuple):
    """Resume handle of a simulated prefix: the latent walk X_t after t of T turns."""

    x: float
    t: int
    turns: int


def normal_cdf(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x, dtype=float).ravel()
    return (0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in flat]))).reshape(np.shape(x))


def mixed_rate(z: np.ndarray, group: int) -> float:
    """Mean chance that a group of `group` rollouts is mixed, for prompts with probits z."""
    return float(root_value(normal_cdf(z), group).mean())


def true_value(x: np.ndarray, t: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """V_t = Phi(X_t / sqrt((T - t)/T)); at t = T the realized reward."""
    x, t, turns = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x, t, turns)))
    left = turns - t
    with np.errstate(divide="ignore", invalid="ignore"):
        z = x / np.sqrt(np.where(left > 0, left, 1.0) / turns)
    return np.where(left > 0, normal_cdf(z), (x > 0).astype(float))


class SyntheticTasks:
    """The prompt population, its drift, and the rollout generator (see the module docstring)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = sc = scenario
        rng = np.random.default_rng([sc.seed, 0])
        topic_effect = rng.standard_normal(sc.n_topics)
        self.topics = np.stack([rng.choice(sc.n_topics, sc.topics_per_prompt, replace=False)
                                for _ in range(sc.n_prompts)])
        shared = topic_effect[self.topics].sum(axis=1)
        self.shared = shared = (shared - shared.mean()) / shared.std()
        own = rng.standard_normal(sc.n_prompts)
        self.zeta = math.sqrt(sc.topic_share) * shared + math.sqrt(1 - sc.topic_share) * own
        self.rate = rng.uniform(0.0, 2.0, sc.n_prompts)
        self.turns = rng.integers(sc.min_turns, sc.max_turns + 1, sc.n_prompts)
        self.spread = self._calibrate_spread()
        self.texts = [f"q{p} " + " ".join(f"t{j}" for j in self.topics[p]) for p in range(sc.n_prompts)]
        self.good = [f"g{k}" for k in range(sc.words_per_kind)]
        self.bad = [f"b{k}" for k in range(sc.words_per_kind)]
        self.truth: dict[str, float] = {}
        self.text_truth: dict[str, float] = {}

    def _calibrate_spread(self) -> float:
        """Bisect the spread s so uniform GRPO's expected effective ratio at step 0 hits the target."""
        sc = self.scenario
        lo, hi = 1e-3, 50.0
        if not mixed_rate(sc.difficulty_mean + hi * self.zeta, sc.grpo_group) <= sc.grpo_effective_ratio <= mixed_rate(
            sc.difficulty_mean + lo * self.zeta, sc.grpo_group
        ):
            raise ValueError("grpo_effective_ratio is out of reach for this difficulty_mean")
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if mixed_rate(sc.difficulty_mean + mid * self.zeta, sc.grpo_group) > sc.grpo_effective_ratio:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def probit(self, prompts: np.ndarray, step: int) -> np.ndarray:
        sc = self.scenario
        return sc.difficulty_mean + self.spread * self.zeta[prompts] + sc.drift * step * self.rate[prompts]

    def text_value(self, prompts: np.ndarray, step: int) -> np.ndarray:
        """E[V_0 | the prompt's text]: topics known exactly, the prompt-specific part and the drift
        rate unknown. The best root prediction possible for a prompt never rolled out."""
        sc = self.scenario
        mean = sc.difficulty_mean + self.spread * math.sqrt(sc.topic_share) * self.shared[prompts] + sc.drift * step
        variance = self.spread**2 * (1 - sc.topic_share) + (sc.drift * step) ** 2 / 3  # rate ~ U(0, 2)
        return normal_cdf(mean / math.sqrt(1 + variance))

    def root_tree(self, prompt: int, step: int) -> RolloutTree:
        text = self.texts[prompt]
        z = float(self.probit(np.array([prompt]), step)[0])
        self.truth[text] = float(normal_cdf(np.array(z)))
        self.text_truth[text] = float(self.text_value(np.array([prompt]), step)[0])
        return RolloutTree(int(prompt), text, handle=SimState(z, 0, int(self.turns[prompt])))

    def roll(self, node: Node, n: int, rng: np.random.Generator, *, continuation: bool) -> list[Node]:
        """Run n rollouts from `node` to the end; each new node records its text and true value."""
        sc = self.scenario
        x0, t0, turns = node.handle
        length = turns - t0
        eps = rng.standard_normal((n, length)) / math.sqrt(turns)
        xs = x0 + np.cumsum(eps, axis=1)
        p_good = 1.0 / (1.0 + np.exp(-sc.turn_signal * eps * math.sqrt(turns)))
        good = (rng.random((n, length, sc.tokens_per_turn)) < p_good[..., None]).tolist()
        words = rng.integers(sc.words_per_kind, size=(n, length, sc.tokens_per_turn)).tolist()
        ts = np.arange(t0 + 1, turns + 1)
        values = true_value(xs, ts, turns).tolist()
        leaves = []
        for r in range(n):
            cur, text = node, node.prefix_text
            for j in range(length):
                turn = " ".join(self.good[w] if g else self.bad[w] for g, w in zip(good[r][j], words[r][j]))
                text = f"{text}{TURN_MARK}{turn} left{turns - t0 - j - 1}"
                cur = cur.add_child(text, SimState(float(xs[r, j]), t0 + j + 1, turns),
                                    continuation=continuation and j == 0)
                self.truth[text] = values[r][j]
            leaves.append(cur.finish(values[r][-1]))
        return leaves


@dataclass(frozen=True)
class StepReport:
    step: int
    mixed_trees: int  # realized mixed trees (trace_allocation.contrast), after Stage 2
    effective_ratio: float  # mixed trees / prompts opened
    informative_share: float  # trajectories with a non-zero group-relative advantage
    prompts_opened: int
    trained_trees: int  # trees the policy update would see (DAPO: its quota of mixed groups)
    cost_trajectory: float  # trajectory-equivalents (1 per root, continuation_cost per continuation)
    cost_turns: float  # generated turns
    starved: int  # prompts Stage 1 opened that the budget then left without a rollout
    expected_mixed: float  # sum over opened prompts of V_root(true v, planned m): before Stage 2
    roots: int
    continuations: int
    brier: float | None  # predictor on bare prefixes vs their rollout's reward, before the update
    brier_root: float | None  # the same on the prompt text alone (Prop 1: prefixes should do better)
    pool_error: float | None  # mean squared error against the true V_0 on the whole candidate pool


@dataclass
class RunReport:
    name: str
    scenario: Scenario
    steps: list[StepReport] = field(default_factory=list)

    def _measured(self) -> list[StepReport]:
        return self.steps[self.scenario.warmup :] or self.steps

    def mean(self, metric: str) -> float | None:
        values = [getattr(s, metric) for s in self._measured()]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None


AllocatorFactory = Callable[[SyntheticTasks, np.random.Generator], Allocator]
WorldFactory = Callable[[Scenario], SyntheticTasks]
"""Builds a run's world from its scenario: `SyntheticTasks`, or any object with its interface
(`scenario`, `turns`, `truth`, `text_truth`, `probit`, `text_value`, `root_tree`, `roll`), such as
`trace_allocation.replay.ReplayTasks` over recorded outcomes."""


def simulate(
    scenario: Scenario,
    make_allocator: AllocatorFactory,
    *,
    name: str,
    on_step: Callable[[StepReport], None] | None = None,
    make_world: WorldFactory = SyntheticTasks,
) -> RunReport:
    """Run one allocator (built by `make_allocator(world, rng)`) for `scenario.steps` steps in the
    world `make_world(scenario)` builds.

    Every run with the same scenario sees the same prompt pools; each step's budget is sized by
    the allocator (`Budget.for_allocator`: DAPO over-samples by design).
    """
    world = make_world(scenario)
    driver = StepDriver(make_allocator(world, np.random.default_rng([scenario.seed, 1])))
    lengths = ExpectedCost(float(world.turns.mean()))
    report = RunReport(name, scenario)
    unfit: deque[Sequence[RolloutTree]] = deque()
    for step in range(scenario.steps):
        pool = np.random.default_rng([scenario.seed, 2, step]).choice(scenario.n_prompts, scenario.pool_size,
                                                                      replace=False)
        rng = np.random.default_rng([scenario.seed, 3, step])
        world.truth.clear()
        world.text_truth.clear()
        trees, record = asyncio.run(_run_step(world, driver, pool, step, rng, lengths))
        report.steps.append(record)
        if on_step is not None:
            on_step(report.steps[-1])
        unfit.append(trees)
        while len(unfit) > scenario.staleness:  # step + 1 plans with the refits of steps <= step - staleness
            refit_predictor(driver.allocator, unfit.popleft())
    return report


def _make_budget(scenario: Scenario, world: SyntheticTasks, allocator: Allocator, lengths: ExpectedCost) -> Budget:
    if scenario.cost_unit == "trajectory":
        return Budget.for_allocator(allocator, scenario.budget, continuation_cost=scenario.continuation_cost)
    mean_turns = float(world.turns.mean())
    return Budget.for_allocator(
        allocator,
        scenario.budget * mean_turns,
        unit="turns",
        continuation_cost=scenario.continuation_cost,
        estimates=(mean_turns, mean_turns * scenario.continuation_cost),
        prices=lengths,
    )


class _SimEngine:
    """The world behind the step driver: every rollout's length is known before it runs."""

    def __init__(self, world: SyntheticTasks, trees: list[RolloutTree], rng: np.random.Generator,
                 lengths: ExpectedCost) -> None:
        self.world, self.trees, self.rng, self.lengths = world, trees, rng, lengths

    @staticmethod
    def known_cost(node: Node) -> Spent:
        return Spent(node.handle.turns - node.handle.t)

    def open(self, index: int) -> RolloutTree:
        return self.trees[index]

    async def rollouts(self, tree: RolloutTree, node: Node, k: int, *, continuation: bool) -> list[Spent]:
        spent = self.known_cost(node)
        if not continuation:
            for _ in range(k):
                self.lengths.observe(tree.root.prefix_text, spent.turns)
        self.world.roll(node, k, self.rng, continuation=continuation)
        return [spent] * k


async def _run_step(
    world: SyntheticTasks,
    driver: StepDriver,
    pool: np.ndarray,
    step: int,
    rng: np.random.Generator,
    lengths: ExpectedCost,
) -> tuple[Sequence[RolloutTree], StepReport]:
    """The step's trees (for the predictor's refit, which the caller schedules) and its record."""
    allocator = driver.allocator
    budget = _make_budget(world.scenario, world, allocator, lengths)
    trees = [world.root_tree(int(p), step) for p in pool]
    texts = [t.root.prefix_text for t in trees]
    true_v = normal_cdf(world.probit(pool, step))
    predictor = allocator.predictor
    pool_error = None if predictor is None else float(np.mean((predictor.predict(texts) - true_v) ** 2))
    grown = await driver.grow(_SimEngine(world, trees, rng, lengths), texts, budget)
    brier, brier_root = _brier(allocator, grown.trees)
    _, figures = driver.finish(grown.trees, refit=False)
    planned = {int(p) for p, c in zip(pool, grown.stage1) if c}
    opened = {t.prompt_id for t in grown.trees}
    return grown.trees, StepReport(
        step, figures.mixed_trees, figures.ratio, figures.informative_share, figures.prompts_opened,
        len(allocator.training_trees(grown.trees)), budget.usage["trajectory"], budget.usage["turns"],
        len(planned.difference(opened)), float(root_value(true_v, grown.stage1).sum()), budget.roots,
        budget.continuations, brier, brier_root, pool_error,
    )


def _brier(allocator: Allocator, trees: Sequence[RolloutTree]) -> tuple[float | None, float | None]:
    """Brier scores of the predictor on every non-terminal prefix of every bare rollout (roots
    included), and on the roots alone, against that rollout's reward."""
    if allocator.predictor is None or not trees:
        return None, None
    texts, outcomes, is_root = [], [], []
    for tree in trees:
        for leaf in tree.leaves():
            if leaf.bare:
                path = leaf.path()[:-1]
                texts.extend(n.prefix_text for n in path)
                outcomes.extend([leaf.reward] * len(path))
                is_root.extend([True] + [False] * (len(path) - 1))
    probs, y, roots = allocator.predictor.predict(texts), np.array(outcomes), np.array(is_root)
    return brier_score(probs, y), brier_score(probs[roots], y[roots])
