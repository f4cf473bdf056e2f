"""The text model blended with what the run has seen of each prompt (empirical Bayes).

A text model generalizes across prompts but learns one prompt's own difficulty slowly and noisily
(its identity tokens are a few features among many, refit on every prompt's targets). A
per-prompt Beta-Bernoulli posterior (MoPPS) learns it from a handful of outcomes but knows nothing
about a prompt it has not seen. The blend is a Beta posterior per prompt whose *prior* comes from
the text model:

    V(prompt) = (n0 p0 + s) / (n0 + s + f)

* p0 is what the text model predicted for the prompt **before it had seen any of its outcomes**
  (recorded at the prompt's first update). A prior must not be fit on the evidence it is combined
  with: once the text model has trained on a prompt's outcomes its prediction already holds them,
  and blending it with the same outcomes counts them twice (that version closed 4% of the
  effective-ratio gap to `trace_oracle_seen`; this one 28 ± 8% in trajectory-equivalents and
  33 ± 7% in turns over three seeds, without adding mixed trees: docs/allocation_results.md).
* s, f are the prompt's successes and failures: each update's root backup target times its
  leaves, discounted by `discount` per update because the policy, and so the success rate, drifts.
* n0, the prior's strength, is fit by empirical Bayes (method of moments) on every prompt's first
  sighting: the excess of the squared error of p0 over the binomial noise,
  tau^2 = mean((y - p0)^2 - p0(1 - p0)/n), is the variance of the true value around the text
  prediction, and a Beta prior of mean p0 with that variance has n0 = mean p0(1 - p0)/tau^2 - 1.

A prefix keeps the text model's prediction shifted in logit by its prompt's correction
(logit V(prompt) - logit of the text model's current prediction for the prompt): the evidence is
about the prompt, the text model's prefix features say how the turns so far moved it.

`root_moments` also gives each prompt's posterior variance, so Stage 1 can prefer a prompt known to
sit near 1/2 over one merely guessed to (`allocators.TreeAllocator`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trace_allocation.tree import prompt_of as prompt_of_text

EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class BlendedPredictor:
    def __init__(
        self,
        text_model,
        *,
        prompt_of: Callable[[str], str] = prompt_of_text,
        discount: float = 0.95,
        prior_strength: float | None = None,
        initial_strength: float = 4.0,
        strength_memory: float = 0.3,
        shift_prefixes: bool = True,
    ) -> None:
        """`prior_strength` fixes n0 (None: empirical Bayes over recent first sightings, each
        update's moments weighted by `strength_memory` per later update since the text model
        keeps improving; `initial_strength` until there are any); `discount` multiplies old
        evidence at every update (the policy drifts)."""
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.text_model = text_model
        self.prompt_of = prompt_of
        self.discount = discount
        self.fixed_strength = prior_strength
        self.initial_strength = initial_strength
        self.strength_memory = strength_memory
        self.shift_prefixes = shift_prefixes
        self._prior: dict[str, float] = {}  # prompt -> text model's probability before its first outcome
        self._evidence: dict[str, list[float]] = {}  # prompt -> [successes, failures], discounted
        self._moments = np.zeros(3)  # first sightings: sum n, sum n (y - p0)^2 - p0(1-p0), sum n p0(1-p0)

    @property
    def strength(self) -> float:
        """n0: fixed, or the empirical-Bayes estimate from the recent first sightings."""
        if self.fixed_strength is not None:
            return self.fixed_strength
        weight, excess, noise = self._moments
        if weight <= 0:
            return self.initial_strength
        return float(np.clip(noise / max(excess, 1e-3 * weight) - 1.0, 0.5, 200.0))

    def state_dict(self) -> dict:
        return {"text_model": self.text_model.state_dict(), "prior": dict(self._prior),
                "moments": self._moments.tolist(),
                "evidence": {k: list(v) for k, v in self._evidence.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.text_model.load_state_dict(state["text_model"])
        self._prior = {k: float(v) for k, v in state["prior"].items()}
        self._moments = np.asarray(state["moments"], dtype=float)
        self._evidence = {k: [float(s), float(f)] for k, (s, f) in state["evidence"].items()}

    def root_moments(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of each prompt's success rate (an unseen prompt: the text
        model's prediction with the prior's variance p(1-p)/(n0+1))."""
        n0 = self.strength
        if not len(prompts):
            p = np.zeros(0)
        else:
            p = np.clip(np.asarray(self.text_model.predict(list(prompts)), dtype=float), EPS, 1 - EPS)
        p = np.array([self._prior.get(q, x) for q, x in zip(prompts, p)])
        s, f = np.array([self._evidence.get(q, (0.0, 0.0)) for q in prompts]).reshape(-1, 2).T
        a, b = n0 * p + s, n0 * (1 - p) + f
        total = a + b
        return a / total, a * b / (total**2 * (total + 1))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        prompts = [self.prompt_of(t) for t in texts]
        text_probs = np.asarray(self.text_model.predict(list(texts)), dtype=float)
        seen = [p for p in dict.fromkeys(prompts) if p in self._evidence]
        if not seen:
            return text_probs
        posterior = dict(zip(seen, self.root_moments(seen)[0]))
        out = text_probs.copy()
        prefixes = [i for i, (p, t) in enumerate(zip(prompts, texts)) if p in posterior and p != t]
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            if prompt == text and prompt in posterior:
                out[i] = posterior[prompt]
        if prefixes and self.shift_prefixes:
            shifted = list(dict.fromkeys(prompts[i] for i in prefixes))
            now = dict(zip(shifted, _logit(np.asarray(self.text_model.predict(shifted), dtype=float))))
            for i in prefixes:
                out[i] = _sigmoid(_logit(text_probs[i]) + _logit(posterior[prompts[i]]) - now[prompts[i]])
        return out

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        y = np.asarray(targets, dtype=float)
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        roots = [i for i, t in enumerate(texts) if self.prompt_of(t) == t]
        new = [i for i in roots if texts[i] not in self._prior]
        self._moments *= self.strength_memory
        if new:  # the text model has not trained on these prompts yet: its prediction is a prior
            p0 = np.clip(np.asarray(self.text_model.predict([texts[i] for i in new]), dtype=float), EPS, 1 - EPS)
            n = w[new]
            spread = p0 * (1 - p0)
            self._moments += [n.sum(), float(n @ (y[new] - p0) ** 2 - spread.sum()), float(n @ spread)]
            self._prior.update(zip((texts[i] for i in new), p0.tolist()))
        for evidence in self._evidence.values():
            evidence[0] *= self.discount
            evidence[1] *= self.discount
        for i in roots:
            evidence = self._evidence.setdefault(texts[i], [0.0, 0.0])
            evidence[0] += w[i] * y[i]
            evidence[1] += w[i] * (1.0 - y[i])
        self.text_model.update(texts, targets, weights)
