"""Per-prompt Beta-Bernoulli success history (the MoPPS-style baseline).

It only knows a prompt by its identity, so it cannot read prefixes (every prefix of a prompt gets
the prompt's posterior mean) nor generalize to unseen prompts (they get the prior mean). A
discount forgets old evidence because the policy, and so the success rate, drifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trace_allocation.tree import prompt_of as prompt_of_text


class BetaBernoulliPredictor:
    def __init__(
        self,
        prompt_of: Callable[[str], str] = prompt_of_text,
        *,
        prior: tuple[float, float] = (1.0, 1.0),
        discount: float = 0.9,
    ) -> None:
        """`prompt_of` maps any prefix text to its prompt key; only texts that *are* their prompt
        (roots) update the posterior, since a root's backup target already pools all its leaves."""
        self.prompt_of = prompt_of
        self.prior = prior
        self.discount = discount
        self._evidence: dict[str, list[float]] = {}

    def state_dict(self) -> dict:
        return {"evidence": {k: list(v) for k, v in self._evidence.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._evidence = {k: [float(s), float(f)] for k, (s, f) in state["evidence"].items()}

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        a0, b0 = self.prior
        out = np.empty(len(texts))
        for i, text in enumerate(texts):
            s, f = self._evidence.get(self.prompt_of(text), (0.0, 0.0))
            out[i] = (a0 + s) / (a0 + b0 + s + f)
        return out

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        for text, target, weight in zip(texts, np.asarray(targets, dtype=float), w):
            key = self.prompt_of(text)
            if key != text:
                continue
            evidence = self._evidence.setdefault(key, [0.0, 0.0])
            evidence[0] = self.discount * evidence[0] + weight * target
            evidence[1] = self.discount * evidence[1] + weight * (1.0 - target)
