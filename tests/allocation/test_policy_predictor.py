"""The policy-state predictor: a ridge head on hidden states, refit from discounted statistics,
and the replay world that serves the recorded states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation.predictors import PolicyStatePredictor, auc

REPLAY = Path(__file__).parents[2] / "examples" / "data" / "replay" / "smollm2-calculator-warm.npz"


def table(states: dict[str, np.ndarray]):
    return lambda texts: np.stack([states[t] for t in texts])


@st.composite
def fits(draw):
    """A few rounds of (texts, targets, weights) over random states."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n, d = draw(st.integers(2, 40)), draw(st.integers(1, 12))
    states = {f"t{i}": rng.normal(size=d) * draw(st.sampled_from([1e-3, 1.0, 1e3])) for i in range(n)}
    rounds = []
    for _ in range(draw(st.integers(1, 4))):
        texts = [f"t{i}" for i in rng.integers(n, size=draw(st.integers(1, 30)))]
        rounds.append((texts, rng.integers(0, 2, size=len(texts)).astype(float), rng.random(len(texts)) + 0.1))
    return states, rounds


@examples(40)
@given(fits())
def test_predictions_stay_probabilities_and_a_checkpoint_resumes_exactly(case):
    states, rounds = case
    head = PolicyStatePredictor(table(states))
    for texts, y, w in rounds:
        head.update(texts, y, w)
        probs = head.predict(list(states))
        assert np.all((probs >= 0) & (probs <= 1)) and np.isfinite(probs).all()
    resumed = PolicyStatePredictor(table(states))
    resumed.load_state_dict(head.state_dict())
    assert np.array_equal(resumed.predict(list(states)), head.predict(list(states)))
    texts, y, w = rounds[0]
    head.update(texts, y, w)
    resumed.update(texts, y, w)
    assert np.array_equal(resumed.predict(list(states)), head.predict(list(states)))


def test_it_learns_a_direction_the_states_carry_and_forgets_at_its_discount():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    y = (x[:, 3] > 0).astype(float)
    states = {f"t{i}": x[i] for i in range(400)}
    head = PolicyStatePredictor(table(states))
    assert np.allclose(head.predict(["t0", "t1"]), 0.5)  # before any data: the prior
    for chunk in np.array_split(np.arange(300), 5):
        head.update([f"t{i}" for i in chunk], y[chunk])
    held = [f"t{i}" for i in range(300, 400)]
    assert auc(head.predict(held), y[300:]) > 0.9
    assert head.penalty is not None and head.penalty > 0
    flipped = PolicyStatePredictor(table(states), discount=0.5)  # the policy moved: old data fade
    flipped.update([f"t{i}" for i in range(300)], y[:300])
    for _ in range(6):
        flipped.update([f"t{i}" for i in range(300)], 1 - y[:300])
    assert auc(flipped.predict(held), 1 - y[300:]) > 0.9


def test_a_checkpoint_of_other_settings_is_refused():
    head = PolicyStatePredictor(table({"a": np.ones(2)}), discount=0.9)
    with pytest.raises(ValueError, match="other settings"):
        PolicyStatePredictor(head.featurize).load_state_dict(head.state_dict())
    with pytest.raises(ValueError, match="discount"):
        PolicyStatePredictor(head.featurize, discount=0.0)


def test_the_replay_world_serves_each_prompts_and_prefixs_recorded_state():
    from trace_agents.recording import load_recording
    from trace_agents.recording.replay import load_replay
    from trace_allocation.replay import ReplayTasks, replay_world

    prompts = load_replay(REPLAY)
    sc, make = replay_world(prompts)
    world: ReplayTasks = make(sc)
    recording = load_recording(REPLAY)
    first = recording.prompts[0]
    assert np.array_equal(world.features([first.prompt])[0], recording.hidden[first.hidden_row].astype(float))
    prefix = first.prefixes[0]
    assert np.array_equal(world.features([prefix.transcript])[0], recording.hidden[prefix.hidden_row].astype(float))
    assert world.features([p.text for p in prompts]).shape == (len(prompts), recording.meta.hidden_size)
    with pytest.raises(ValueError, match="no hidden state"):
        world.features(["a prompt that was never recorded"])
