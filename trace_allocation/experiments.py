"""The allocation experiments (a)-(e) on the simulator, returned as plain JSON-able data.

(a) every allocator at equal budget; (b) the Table 1 ablation (each TRACE stage active or
uniform); (c) Table 2 tree shapes (M, N), scaled by `shape_scale`; (d) numerical checks of
Props 1-3; (e) a sweep over how much of a prompt's difficulty its text reveals. Every table leads
with the same figures (`HEADLINE`) for every method, costs in both units. The CLI (`trace-rl simulate`)
only formats and plots what these return.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from trace_allocation.allocators import (
    DapoAllocator,
    GrpoAllocator,
    PclAllocator,
    TreeAllocator,
)
from trace_allocation.predictors import (
    BetaBernoulliPredictor,
    BlendedPredictor,
    LexicalPredictor,
    OraclePredictor,
    PolicyStatePredictor,
    SkillShrunk,
)
from trace_allocation.prefix import allocate_prefixes, prefix_value, reproduce_probs
from trace_allocation.replay import Scorecard, score_summary, scored
from trace_allocation.root import allocate_roots, root_value
from trace_allocation.simulate import (
    AllocatorFactory,
    RunReport,
    Scenario,
    StepReport,
    SyntheticTasks,
    WorldFactory,
    normal_cdf,
    simulate,
    true_value,
)
from trace_allocation.tree import prompt_of

WORLDS = {
    "default": Scenario(),
    "paper": Scenario(n_prompts=16384, grpo_effective_ratio=0.268, topic_share=0.94),
}
"""Named simulated worlds (docs/allocation.md). `default`: 1024 prompts that recur every few
steps, so a text model learns each prompt's own difficulty from its identity token. `paper`: a
16k-prompt training set, each prompt drawn about once in a run (like one epoch of a large
dataset), so a prompt's text is all a predictor has; calibrated to both of the paper's endpoints:
GRPO 26.8% (the spread, at step 0) and TRACE with the learned predictor 60.6% (`topic_share`, the
share of difficulty the text reveals: 0.94 gives 0.625 / 0.594 on seeds 0 / 1, 0.9 gave 0.571 and
0.95 0.642 on seed 0)."""
PAPER_SHAPES = [(512, 2), (512, 6), (1024, 2)]
ABLATION = [("uniform", "uniform"), ("active", "uniform"), ("uniform", "active"), ("active", "active")]

OnStep = Callable[[str, StepReport], None]


def lexical(normalize: bool = False) -> LexicalPredictor:
    """The CPU-default learned predictor used by every learned method in the experiments
    (`normalize`: each text's features scaled to norm 1, the `_normalized` variants)."""
    return LexicalPredictor(normalize=normalize)


class SeenPromptOracle:
    """Reference for the gap to the oracle: exact values, except that a prompt this run has never
    rolled out gets E[V_0 | its text] at the root. No predictor can know more about an unseen
    prompt, so the oracle's lead over this reference is unavoidable; it is optimistic about seen
    prompts (exact after one sighting), so the learned predictor's gap to it is an upper bound on
    what a better model could win."""

    def __init__(self, world: SyntheticTasks) -> None:
        self.world = world
        self.seen: set[str] = set()

    def predict(self, texts) -> np.ndarray:
        truth, text_truth = self.world.truth, self.world.text_truth
        return np.array([text_truth[t] if t in text_truth and t not in self.seen else truth[t] for t in texts])

    def update(self, texts, targets, weights=None) -> None:
        self.seen.update(t for t in texts if t in self.world.text_truth)


def robust_floor(sc: Scenario) -> int:
    """Prompts the robust Stage 1 opens at least: as many as GRPO's groups at the same budget."""
    return int(sc.budget) // sc.grpo_group


def tree(sc: Scenario, roots: str, prefixes: str, predictor_of, *, uncertainty: bool = True,
         shrink: bool = False, floor: bool = False) -> AllocatorFactory:
    """A TreeAllocator factory. `shrink`: Stage 1 on skill-shrunk root predictions
    (`SkillShrunk`); `floor`: GRPO's prompt count as a floor on prompts opened (`robust_floor`)."""

    def make(world: SyntheticTasks, rng: np.random.Generator) -> TreeAllocator:
        predictor = predictor_of(world) if "active" in (roots, prefixes) else None
        if shrink and predictor is not None:
            predictor = SkillShrunk(predictor)
        return TreeAllocator(
            predictor,
            continuations_per_root=sc.continuations_per_root,
            roots=roots,
            prefixes=prefixes,
            m_min=sc.m_min,
            m_max=sc.m_max,
            group_size=sc.tree_group,
            uncertainty=uncertainty,
            min_prompts=robust_floor(sc) if floor else 0,
            rng=rng,
        )

    return make


def allocators(sc: Scenario) -> dict[str, AllocatorFactory]:
    """Every method of experiment (a): name -> factory (each allocator carries its budget multiple)."""
    batch = int(sc.budget) // sc.grpo_group
    return {
        "grpo": lambda w, rng: GrpoAllocator(sc.grpo_group, rng=rng),
        "pcl": lambda w, rng: PclAllocator(lexical(), sc.grpo_group),
        "random_branch": tree(sc, "uniform", "uniform", None),
        "trace_beta": tree(sc, "active", "active", lambda w: BetaBernoulliPredictor()),
        "trace": tree(sc, "active", "active", lambda w: lexical()),
        "trace_blend": tree(sc, "active", "active", lambda w: BlendedPredictor(lexical())),
        "trace_blend_mean": tree(sc, "active", "active", lambda w: BlendedPredictor(lexical()), uncertainty=False),
        "trace_oracle_roots": tree(sc, "active", "active", lambda w: OraclePredictor(lambda t: w.truth[prompt_of(t)])),
        "trace_oracle_seen": tree(sc, "active", "active", SeenPromptOracle),
        "trace_oracle": tree(sc, "active", "active", lambda w: OraclePredictor(w.truth.__getitem__)),
        "dapo": lambda w, rng: DapoAllocator(sc.grpo_group, batch_prompts=batch, rng=rng,
                                             budget_multiple=sc.dapo_budget_multiple),
    }


def stage1_variants(sc: Scenario) -> dict[str, AllocatorFactory]:
    """TRACE (lexical) with a Stage 1 guarded against a predictor without skill, measured in
    docs/allocation_results.md and not in (a): skill shrinkage, a floor on prompts opened, both;
    and PCL, TRACE and the guards on the lexical model with normalized rows (`_normalized`)."""
    variants = {}
    for suffix, normalize in (("", False), ("_normalized", True)):
        learned = lambda w, normalize=normalize: lexical(normalize)  # noqa: E731
        variants |= {
            f"trace_shrunk{suffix}": tree(sc, "active", "active", learned, shrink=True),
            f"trace_floor{suffix}": tree(sc, "active", "active", learned, floor=True),
            f"trace_robust{suffix}": tree(sc, "active", "active", learned, shrink=True, floor=True),
        }
    normalized = lambda w: lexical(normalize=True)  # noqa: E731
    return variants | {
        "pcl_normalized": lambda w, rng: PclAllocator(normalized(w), sc.grpo_group),
        "trace_normalized": tree(sc, "active", "active", normalized),
        "trace_blend_normalized": tree(sc, "active", "active", lambda w: BlendedPredictor(normalized(w))),
    }


def policy_variants(sc: Scenario) -> dict[str, AllocatorFactory]:
    """Methods whose predictor reads the recorded policy's hidden states (`PolicyStatePredictor`
    on `ReplayTasks.features`): the replay world only, measured in docs/allocation_results.md."""
    policy = lambda w: PolicyStatePredictor(w.features)  # noqa: E731
    return {
        "trace_policy": tree(sc, "active", "active", policy),
        "trace_policy_blend": tree(sc, "active", "active", lambda w: BlendedPredictor(policy(w))),
        "pcl_policy": lambda w, rng: PclAllocator(policy(w), sc.grpo_group),
    }


HEADLINE = ("mixed_trees", "effective_ratio", "informative_share", "prompts_opened", "cost_trajectory", "cost_turns")
"""The figures every table and plot leads with, in this order, for every method."""


def _summary(report: RunReport) -> dict:
    return {
        **{key: report.mean(key) for key in HEADLINE},
        "trained_trees": report.mean("trained_trees"),
        "starved": report.mean("starved"),
        "expected_mixed": report.mean("expected_mixed"),
        "brier": report.mean("brier"),
        "brier_root": report.mean("brier_root"),
        "pool_error": report.mean("pool_error"),
    }


def compare(sc: Scenario, on_step: OnStep | None = None, make_world: WorldFactory = SyntheticTasks,
            cards: dict[str, list[Scorecard]] | None = None) -> dict[str, RunReport]:
    """(a) Every allocator at equal budget in one scenario (DAPO excepted: it reports its cost).
    With `cards` (a replay world), each predictor is wrapped in a `Scorecard`, kept there."""
    runs = {}
    for name, make in allocators(sc).items():
        if cards is not None:
            make = scored(make, cards.setdefault(name, []))
        runs[name] = simulate(sc, make, name=name, on_step=_bind(on_step, name), make_world=make_world)
    return runs


def ablation(sc: Scenario, runs: dict[str, RunReport], on_step: OnStep | None = None,
             make_world: WorldFactory = SyntheticTasks) -> list[dict]:
    """(b) Table 1: Stage 1 / Stage 2 each active (learned predictor) or uniform."""
    reuse = {("uniform", "uniform"): "random_branch", ("active", "active"): "trace"}
    rows = []
    for roots, prefixes in ABLATION:
        name = f"{roots}/{prefixes}"
        report = runs.get(reuse[(roots, prefixes)]) if (roots, prefixes) in reuse else None
        if report is None:
            report = simulate(sc, tree(sc, roots, prefixes, lambda w: lexical()), name=name,
                              on_step=_bind(on_step, name),
                              make_world=make_world)
        rows.append({"stage1": roots, "stage2": prefixes, **_summary(report)})
    return rows


def shapes(sc: Scenario, shape_scale: float, on_step: OnStep | None = None,
           make_world: WorldFactory = SyntheticTasks) -> list[dict]:
    """(c) Table 2: TRACE (learned) at the paper's (M, N) shapes, M scaled by `shape_scale`."""
    rows = []
    for m, n in PAPER_SHAPES:
        shaped = sc.with_(roots=max(sc.m_min, round(m * shape_scale)), continuations_per_root=n)
        name = f"shape({m},{n})"
        report = simulate(shaped, tree(shaped, "active", "active", lambda w: lexical()), name=name,
                          on_step=_bind(on_step, name), make_world=make_world)
        rows.append({"paper_shape": [m, n], "roots": shaped.roots, "budget": shaped.budget, **_summary(report)})
    return rows


SWEEP_METHODS = ("grpo", "pcl", "random_branch", "trace", "trace_oracle_seen", "trace_oracle")
SWEEP_SHARES = (0.0, 0.5, 0.94)  # nothing, half, and the paper world's share


def sweep(
    sc: Scenario,
    shares: tuple[float, ...] = SWEEP_SHARES,
    methods: tuple[str, ...] = SWEEP_METHODS,
    on_step: OnStep | None = None,
) -> list[dict]:
    """(e) How predictable prompts are: `topic_share`, the share of a prompt's difficulty its text
    reveals before it is ever rolled out, against every method's headline figures. GRPO stays
    calibrated to the same effective ratio at every point."""
    rows = []
    for share in shares:
        world = sc.with_(topic_share=share)
        for name in methods:
            report = simulate(world, allocators(world)[name], name=name, on_step=_bind(on_step, f"{name}@{share:g}"))
            rows.append({"topic_share": share, "method": name, **_summary(report)})
    return rows


def propositions(sc: Scenario, samples: int = 4000, continuations: int = 64) -> dict:
    """(d) Props 1-3 checked numerically on the simulator's ground truth."""
    world = SyntheticTasks(sc)
    rng = np.random.default_rng([sc.seed, 9])
    return {
        "prop2_quadratic_variation": _quadratic_variation(world, rng, samples, continuations),
        "prop1_more_information": _information(world, rng, samples),
        "prop3_active_beats_uniform": _active_vs_uniform(world, rng),
    }


def _walk(x0: np.ndarray, t0: np.ndarray, turns: int, rng: np.random.Generator) -> np.ndarray:
    """Values Z_t0..Z_T of walks started at X_t0 = x0 (rows), Z_T the realized reward."""
    length = turns - int(t0)
    eps = rng.standard_normal((x0.size, length)) / math.sqrt(turns)
    xs = np.concatenate([x0[:, None], x0[:, None] + np.cumsum(eps, axis=1)], axis=1)
    return true_value(xs, np.arange(int(t0), turns + 1), turns)


def _quadratic_variation(world: SyntheticTasks, rng, samples: int, continuations: int) -> dict:
    """Prop 2: E[sum_{s>=t} (Z_{s+1} - Z_s)^2 | H_t] = V_t (1 - V_t), per V-bin, with MC error."""
    sc = world.scenario
    turns = sc.max_turns
    t0 = rng.integers(0, turns, samples)
    x0 = rng.normal(0.0, 1.0, samples) * np.sqrt(np.maximum(t0, 1) / turns)
    qv = np.empty(samples)
    qv_se = np.empty(samples)
    v0 = np.empty(samples)
    for t in np.unique(t0):
        rows = np.flatnonzero(t0 == t)
        z = _walk(np.repeat(x0[rows], continuations), t, turns, rng)
        per_walk = (np.diff(z, axis=1) ** 2).sum(axis=1).reshape(rows.size, continuations)
        qv[rows] = per_walk.mean(axis=1)
        qv_se[rows] = per_walk.std(axis=1, ddof=1) / math.sqrt(continuations)
        v0[rows] = z.reshape(rows.size, continuations, -1)[:, 0, 0]
    target = v0 * (1 - v0)
    error = qv - target
    return {
        "prefixes": samples,
        "continuations_each": continuations,
        "mean_qv": float(qv.mean()),
        "mean_v_1_minus_v": float(target.mean()),
        "mean_error": float(error.mean()),
        "mean_error_standard_error": float(math.sqrt((qv_se**2).sum()) / samples),
        "holds": bool(abs(error.mean()) <= 4 * math.sqrt((qv_se**2).sum()) / samples),
    }


def _information(world: SyntheticTasks, rng, samples: int) -> dict:
    """Prop 1: the Brier score of V(H_t) for the outcome never rises as t grows."""
    turns = world.scenario.max_turns
    z = _walk(rng.normal(0.0, 1.0, samples), 0, turns, rng)
    reward = z[:, -1]
    brier = [float(np.mean((z[:, t] - reward) ** 2)) for t in range(turns)]
    return {"turns": turns, "brier_by_turn": brier, "holds": bool(np.all(np.diff(brier) <= 1e-3))}


def _active_vs_uniform(world: SyntheticTasks, rng) -> dict:
    """Prop 3 with true values: expected mixed groups (Stage 1) and expected flipped prefixes
    (Stage 2) under the exact solvers vs uniform allocation of the same budget."""
    sc = world.scenario
    stage1_active, stage1_uniform, stage2_active, stage2_uniform = [], [], [], []
    for step in range(min(sc.steps, 10)):
        pool = np.random.default_rng([sc.seed, 2, step]).choice(sc.n_prompts, sc.pool_size, replace=False)
        v = normal_cdf(world.probit(pool, step))
        stage1_active.append(root_value(v, allocate_roots(v, sc.roots, m_min=sc.m_min, m_max=sc.m_max)).sum())
        n_uniform = sc.roots // sc.tree_group
        stage1_uniform.append(root_value(v[:n_uniform], sc.tree_group).sum())  # the pool order is random
        for p in pool[:n_uniform]:
            tree = world.root_tree(int(p), step)
            world.roll(tree.root, sc.tree_group, rng, continuation=False)
            candidates = tree.prefix_candidates()
            if not candidates:
                continue
            q = reproduce_probs([world.truth[c.node.prefix_text] for c in candidates], [c.reward for c in candidates])
            count = sc.continuations_per_root * sc.tree_group
            stage2_active.append(prefix_value(q, allocate_prefixes(q, count)).sum())
            # uniform with replacement: E[1 - q^k] with k ~ Binomial(count, 1/J) is 1 - (1 - (1-q)/J)^count
            stage2_uniform.append((1 - (1 - (1 - q) / len(q)) ** count).sum())
        world.truth.clear()
    return {
        "stage1_expected_mixed_active": float(np.mean(stage1_active)),
        "stage1_expected_mixed_uniform": float(np.mean(stage1_uniform)),
        "stage2_expected_flips_active": float(np.mean(stage2_active)),
        "stage2_expected_flips_uniform": float(np.mean(stage2_uniform)),
        "holds": bool(np.mean(stage1_active) >= np.mean(stage1_uniform)
                      and np.mean(stage2_active) >= np.mean(stage2_uniform)),
    }


def run(
    sc: Scenario,
    experiments: str = "abcd",
    *,
    shape_scale: float = 0.25,
    on_step: OnStep | None = None,
    make_world: WorldFactory = SyntheticTasks,
) -> dict:
    """Run the chosen experiments in the world `make_world` builds; the result is JSON-able
    (per-step curves included). (d) and (e) need the synthetic world's ground truth."""
    if make_world is not SyntheticTasks and set(experiments) & set("de"):
        raise ValueError("experiments d and e need a synthetic world (its true martingale and topic share)")
    result: dict = {"scenario": asdict(sc) | {"budget": sc.budget}}
    runs: dict[str, RunReport] = {}
    cards: dict[str, list[Scorecard]] | None = None if make_world is SyntheticTasks else {}
    if "a" in experiments or "b" in experiments:
        runs = compare(sc, on_step, make_world, cards)
        summaries = {name: _summary(r) for name, r in runs.items()}
        result["effective_ratio"] = {n: s["effective_ratio"] for n, s in summaries.items()}
        result["cost"] = {n: {"trajectory": s["cost_trajectory"], "turns": s["cost_turns"]}
                          for n, s in summaries.items()}
        result["compare"] = summaries
        result["per_step"] = {n: [asdict(s) for s in r.steps] for n, r in runs.items()}
        if cards:
            result["predictor_scores"] = {n: score_summary(c, sc.warmup) for n, c in cards.items() if c}
            result["per_step_scores"] = {n: [asdict(s) for s in c[0].scores] for n, c in cards.items() if c}
    if "b" in experiments:
        result["ablation"] = ablation(sc, runs, on_step, make_world)
    if "c" in experiments:
        result["shapes"] = shapes(sc, shape_scale, on_step, make_world)
    if "d" in experiments:
        result["propositions"] = propositions(sc)
    if "e" in experiments:
        result["sweep"] = sweep(sc, on_step=on_step)
    return result


def total_steps(sc: Scenario, experiments: str) -> int:
    """Simulator steps `run` will take, for progress bars."""
    n = 0
    if "a" in experiments or "b" in experiments:
        n += len(allocators(sc)) * sc.steps
    if "b" in experiments:
        n += 2 * sc.steps
    if "c" in experiments:
        n += len(PAPER_SHAPES) * sc.steps
    if "e" in experiments:
        n += len(SWEEP_SHARES) * len(SWEEP_METHODS) * sc.steps
    return n


def _bind(on_step: OnStep | None, name: str) -> Callable[[StepReport], None] | None:
    return None if on_step is None else (lambda s: on_step(name, s))
