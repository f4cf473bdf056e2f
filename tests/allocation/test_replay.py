"""The replay world (`trace_allocation.replay`): validation, resampling, truth, scoring, and the
allocators it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation.allocators import PclAllocator
from trace_allocation.experiments import allocators
from trace_allocation.predictors import OraclePredictor
from trace_allocation.replay import (
    REAL_RUN,
    ReplayPrefix,
    ReplayPrompt,
    ReplayTasks,
    Scorecard,
    replay_world,
    score_summary,
    scored,
)
from trace_allocation.simulate import simulate
from trace_allocation.tree import TURN_MARK, RolloutTree


def _prompt(i: int, rewards, *, prefix_rewards=(0.0, 1.0)) -> ReplayPrompt:
    """Prompt i: bare rollouts with `rewards` (2 turns each); rollout 0 has a recorded prefix."""
    text = f"prompt {i}"
    prefix = ReplayPrefix(f"{text}{TURN_MARK}call {i}", np.array(prefix_rewards, dtype=float),
                          np.ones(len(prefix_rewards)))
    rewards = np.array(rewards, dtype=float)
    paths = ((0,),) + ((),) * (rewards.size - 1)
    return ReplayPrompt(text, rewards, np.full(rewards.size, 2.0), paths, (prefix,))


def _world(prompts, **changes) -> ReplayTasks:
    sc, make = replay_world(prompts, REAL_RUN.with_(**changes))
    return make(sc)


def test_bare_rollouts_resample_the_recorded_outcomes_and_keep_their_prefixes():
    world = _world([_prompt(0, [1, 0, 0, 0]), _prompt(1, [1, 1, 1, 1])], pool_size=2)
    tree = world.root_tree(0, step=0)
    leaves = world.roll(tree.root, 4000, np.random.default_rng(0), continuation=False)
    rewards = np.array([leaf.reward for leaf in leaves])
    assert abs(rewards.mean() - 0.25) < 0.03
    through_prefix = [leaf for leaf in leaves if leaf.depth == 2]
    assert abs(len(through_prefix) / len(leaves) - 0.25) < 0.03  # rollout 0 only: its prefix was recorded
    assert {leaf.reward for leaf in through_prefix} == {1.0}  # the prefix's rollout succeeded
    assert all(leaf.depth == 1 and leaf.bare for leaf in leaves if leaf.depth != 2)
    candidates = tree.prefix_candidates()
    assert {c.node.prefix_text for c in candidates} == {f"prompt 0{TURN_MARK}call 0"}
    assert world.truth["prompt 0"] == 0.25 and world.truth[f"prompt 0{TURN_MARK}call 0"] == 0.5
    assert world.text_truth["prompt 0"] == pytest.approx(5 / 8)  # the recording's base rate
    assert tree.root.handle.turns == 2.0


def test_continuations_resample_the_prefix_outcomes_only():
    world = _world([_prompt(0, [0, 0], prefix_rewards=(1.0, 1.0))], pool_size=1)
    tree = world.root_tree(0, step=0)
    rng = np.random.default_rng(1)
    while not tree.prefix_candidates():
        world.roll(tree.root, 1, rng, continuation=False)
    node = tree.prefix_candidates()[0].node
    assert node.handle.t == 1 and node.handle.turns == 2.0  # depth 1 + one recorded continuation turn
    leaves = world.roll(node, 20, rng, continuation=True)
    assert {leaf.reward for leaf in leaves} == {1.0} and not any(leaf.bare for leaf in leaves)
    assert tree.is_mixed


@pytest.mark.parametrize("make, message", [
    (lambda: _prompt(0, [2.0]), "in \\[0, 1\\]"),
    (lambda: _prompt(0, [np.nan]), "finite"),
    (lambda: ReplayPrompt("p", np.ones(2), np.ones(2) * 2, ((),), ()), "paths"),
    (lambda: ReplayPrompt("p", np.ones(1), np.ones(1) * 2, ((3,),), ()), "does not exist"),
    (lambda: ReplayPrompt("p", np.ones(1), np.ones(1) * 2, ((0,),),
                          (ReplayPrefix(f"q{TURN_MARK}x", np.ones(1), np.ones(1)),)), "another prompt"),
    (lambda: ReplayPrompt("p", np.ones(1), np.ones(1), ((0,),),
                          (ReplayPrefix(f"p{TURN_MARK}x", np.ones(1), np.ones(1)),)), "before its last turn"),
    (lambda: ReplayPrompt("p", np.ones(1), np.ones(1) * 2, ((),),
                          (ReplayPrefix(f"p{TURN_MARK}x", np.ones(1), np.ones(1)),) * 2), "same transcript"),
    (lambda: ReplayPrefix("no turn", np.ones(1), np.ones(1)), "holds no turn"),
    (lambda: ReplayPrefix(f"p{TURN_MARK}x", np.zeros(0), np.zeros(0)), "non-empty"),
    (lambda: ReplayTasks([_prompt(0, [1])], REAL_RUN.with_(n_prompts=2, pool_size=1)), "n_prompts"),
    (lambda: ReplayTasks([_prompt(0, [1])], REAL_RUN.with_(n_prompts=1, pool_size=2)), "pool_size"),
    (lambda: ReplayTasks([_prompt(0, [1])] * 2, REAL_RUN.with_(n_prompts=2, pool_size=1)), "same text"),
])
def test_malformed_data_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@examples(60)
@given(rewards=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=6),
       turns=st.lists(st.integers(-2, 4), min_size=0, max_size=6),
       path=st.lists(st.integers(-1, 2), max_size=3))
def test_hostile_arrays_are_refused_or_replayable(rewards, turns, path):
    """Whatever arrays arrive, the data either refuse them with ValueError or replay: every
    rollout ends with a reward in [0, 1] and every charge reads a positive length."""
    try:
        prefix = ReplayPrefix(f"p{TURN_MARK}x", np.array(rewards[:2], dtype=float), np.array(turns[:2], dtype=float))
        prompt = ReplayPrompt("p", np.array(rewards, dtype=float), np.array(turns, dtype=float),
                              tuple(tuple(path) for _ in rewards), (prefix,))
    except ValueError:
        return
    world = _world([prompt], pool_size=1)
    tree = world.root_tree(0, step=0)
    leaves = world.roll(tree.root, 8, np.random.default_rng(0), continuation=False)
    assert all(0 <= leaf.reward <= 1 for leaf in leaves) and tree.root.handle.turns >= 1
    for c in tree.prefix_candidates():
        assert c.node.handle.turns > c.node.handle.t


PROMPTS = [_prompt(i, [1, 0, 0, 1] if i % 3 == 0 else [0] * 4 if i % 3 == 1 else [1] * 4,
                   prefix_rewards=(1.0, 1.0) if i % 2 else (0.0, 0.0)) for i in range(24)]


def test_every_method_runs_within_budget_and_the_oracle_finds_the_mixed_prompts():
    sc, make_world = replay_world(PROMPTS, REAL_RUN.with_(pool_size=12, steps=6, warmup=1))
    mixed = {}
    for name, make in allocators(sc).items():
        run = simulate(sc, make, name=name, make_world=make_world)
        mixed[name] = run.mean("mixed_trees")
        multiple = sc.dapo_budget_multiple if name == "dapo" else 1.0
        for step in run.steps:
            assert step.cost_trajectory <= sc.budget * multiple + 1e-9
    # 4 of 12 pooled prompts are mixed (1/2 each); the oracle opens them, uniform GRPO finds ~1 in 3
    assert mixed["trace_oracle"] > 2.0 > mixed["grpo"]
    assert mixed["dapo"] >= mixed["grpo"]


def test_scorecard_scores_before_the_refit_and_ranks_prefixes_by_the_recorded_rates():
    sc, make_world = replay_world(PROMPTS, REAL_RUN.with_(pool_size=12, steps=4, warmup=1))
    cards: list[Scorecard] = []
    make = allocators(sc)["trace_oracle"]
    simulate(sc, scored(make, cards), name="trace_oracle", make_world=make_world)
    (card,) = cards
    assert [s.step for s in card.scores] == [0, 1, 2, 3]
    assert card.scores[0].base_rate == 0.5 and 0 < card.scores[1].base_rate < 1
    # the oracle opens only the prompts at 1/2 (a sure prompt is worth nothing): ties, Brier 1/4
    assert all(s.auc_root in (None, 0.5) and s.brier_root == pytest.approx(0.25) for s in card.scores)
    summary = score_summary(cards, sc.warmup)
    assert summary["spearman_pooled"] == pytest.approx(1.0)
    assert score_summary([], sc.warmup)["skill_root"] is None
    assert score_summary([], sc.warmup)["skill_positive"] is None


def test_skill_positive_is_the_share_of_steps_that_beat_the_running_base_rate():
    """The share counts the measured steps whose root skill is positive; the recorded rates beat
    the running base rate on more steps than a constant 1/2 does."""
    sc, make_world = replay_world(PROMPTS, REAL_RUN.with_(pool_size=12, steps=8, warmup=1))
    rates = {p.text: float(p.rewards.mean()) for p in PROMPTS}
    shares = {}
    for name, predictor in (("half", lambda: OraclePredictor(lambda t: 0.5)),
                            ("rates", lambda: OraclePredictor(lambda t: rates.get(t, 0.5)))):
        cards: list[Scorecard] = []
        simulate(sc, scored(lambda w, rng: PclAllocator(predictor(), sc.grpo_group), cards), name=name,
                 make_world=make_world)
        skills = [s.skill_root for s in cards[0].scores[sc.warmup:] if s.skill_root is not None]
        shares[name] = score_summary(cards, sc.warmup)["skill_positive"]
        assert shares[name] == pytest.approx(sum(k > 0 for k in skills) / len(skills))
    assert shares["rates"] > shares["half"]


def test_scorecard_forwards_everything_and_measures_a_constant_as_no_skill():
    world = _world(PROMPTS, pool_size=12)
    constant = OraclePredictor(lambda text: 0.5)
    card = Scorecard(constant, world)
    assert card.truth is constant.truth  # attribute access reaches the wrapped predictor
    trees = [world.root_tree(i, step=0) for i in range(6)]
    rng = np.random.default_rng(0)
    for tree in trees:
        world.roll(tree.root, 4, rng, continuation=False)
    card.update(["prompt 0"], np.array([1.0]))
    score = card.scores[0]
    assert score.skill_root == pytest.approx(0.0) and score.auc_root == 0.5
    assert isinstance(trees[0], RolloutTree)
