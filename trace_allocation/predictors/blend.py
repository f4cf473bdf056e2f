"""The text model blended with what the run has seen of each prompt (empirical Bayes).

A text model generalizes across prompts but learns one prompt's own difficulty slowly (its
identity tokens are a few features among many, refit on all prompts' targets). A per-prompt
Beta-Bernoulli posterior (MoPPS) learns it from a handful of outcomes but knows nothing about a
prompt it has not seen. The blend takes the text model's prediction p as the prior mean and a
prompt's discounted successes s and failures f as evidence:

    V(prompt) = (n0 p + s) / (n0 + s + f)

with the prior strength n0 set by empirical Bayes (method of moments, as in GPS/MoPPS-style
prompt selection): on the roots of each update, the excess of the squared error of p over the
binomial noise, tau^2 = mean((y - p)^2 - p(1 - p)/n), is the variance of the true value around
the text prediction, and a Beta prior of mean p with that variance has n0 = mean p(1-p)/tau^2 - 1.
A prefix keeps the text model's prediction shifted in logit by its prompt's correction
(logit V(prompt) - logit p(prompt)): the evidence is about the prompt, the text model's prefix
features say how the turns so far moved it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trace_allocation.tree import prompt_of as prompt_of_text

EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


class BlendedPredictor:
    def __init__(
        self,
        text_model,
        *,
        prompt_of: Callable[[str], str] = prompt_of_text,
        discount: float = 0.8,
        prior_strength: float | None = None,
        smoothing: float = 0.7,
        initial_strength: float = 4.0,
        shift_prefixes: bool = True,
    ) -> None:
        """`prior_strength` fixes n0 (None: empirical Bayes, starting at `initial_strength` and
        moving by `1 - smoothing` of the way to each update's estimate); `discount` multiplies
        old evidence at every update (the policy drifts)."""
        self.text_model = text_model
        self.prompt_of = prompt_of
        self.discount = discount
        self.fixed_strength = prior_strength
        self.strength = prior_strength if prior_strength is not None else initial_strength
        self.smoothing = smoothing
        self.shift_prefixes = shift_prefixes
        self._evidence: dict[str, list[float]] = {}

    def state_dict(self) -> dict:
        text = self.text_model.state_dict() if hasattr(self.text_model, "state_dict") else None
        return {"text_model": text, "strength": self.strength,
                "evidence": {k: list(v) for k, v in self._evidence.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["text_model"] is not None:
            self.text_model.load_state_dict(state["text_model"])
        self.strength = float(state["strength"])
        self._evidence = {k: [float(s), float(f)] for k, (s, f) in state["evidence"].items()}

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        prompts = [self.prompt_of(t) for t in texts]
        is_root = np.array([p == t for p, t in zip(prompts, texts)])
        text_probs = self.text_model.predict(list(texts))
        if not self._evidence:
            return text_probs
        unique = list(dict.fromkeys(prompts))
        seen = [p for p in unique if p in self._evidence]
        if not seen:
            return text_probs
        root_probs = dict(zip(texts, text_probs)) if is_root.all() else None
        prior = np.array([root_probs[p] for p in seen]) if root_probs else self.text_model.predict(seen)
        s, f = np.array([self._evidence[p] for p in seen]).T
        posterior = (self.strength * prior + s) / (self.strength + s + f)
        shift = dict(zip(seen, _logit(posterior) - _logit(prior)))
        out = text_probs.copy()
        for i, (prompt, root) in enumerate(zip(prompts, is_root)):
            if prompt in shift and (root or self.shift_prefixes):
                out[i] = 1 / (1 + np.exp(-(_logit(text_probs[i]) + shift[prompt])))
        return out

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        y = np.asarray(targets, dtype=float)
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        roots = [i for i, t in enumerate(texts) if self.prompt_of(t) == t]
        if roots and self.fixed_strength is None:
            self._estimate_strength([texts[i] for i in roots], y[roots], w[roots])
        for evidence in self._evidence.values():
            evidence[0] *= self.discount
            evidence[1] *= self.discount
        for i in roots:
            evidence = self._evidence.setdefault(texts[i], [0.0, 0.0])
            evidence[0] += w[i] * y[i]
            evidence[1] += w[i] * (1.0 - y[i])
        self.text_model.update(texts, targets, weights)

    def _estimate_strength(self, roots: list[str], rates: np.ndarray, n: np.ndarray) -> None:
        """Method of moments on this update's roots, against the text model's predictions."""
        p = np.clip(self.text_model.predict(roots), EPS, 1 - EPS)
        noise = p * (1 - p)
        excess = float(np.mean((rates - p) ** 2 - noise / np.maximum(n, 1)))
        estimate = float(np.clip(noise.mean() / max(excess, 1e-3) - 1.0, 0.5, 200.0))
        self.strength = self.smoothing * self.strength + (1 - self.smoothing) * estimate
