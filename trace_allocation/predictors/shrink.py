"""Root predictions shrunk toward the run's base rate by the skill the predictor has shown.

A text model that knows nothing of a prompt's difficulty (real calculator prompts: the numbers,
not the words, decide) is still confident after a few refits, and Stage 1 trusts it: it piles
the roots on two or three prompts it wrongly thinks sit near 1/2. Here every root prediction is
pulled toward the base rate (the mean root target seen so far, from 1/2) by the predictor's
Brier skill against that base rate on the roots it predicted just before each refit, discounted
over refits and clipped to [0, 1]. With no skill every prompt looks alike and the exact Stage 1
spreads the roots evenly (uniform, at worst); with full skill the predictions pass unchanged.
Shrinking a point estimate alone would make an unskilled model's Stage 1 treat every prompt as
sitting at the base rate, and spread the roots two by two; but real prompts are mostly all-pass
or all-fail, so two rollouts of a random prompt are mixed far less often than 2b(1-b). So
`root_moments` also reports, as a variance, the between-prompt variance of success rates (estimated from
the root groups) times (1 - skill): Stage 1 (`stage1_values`)
then plans with E[v(1-v)] and, knowing nothing, opens GRPO-like groups, not pairs.
Prefix predictions (Stage 2) are left alone: shrinking all of a tree's prefixes toward one value
would only blur the ranking Stage 2 relies on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trace_allocation.predictors.calibration import brier_score
from trace_allocation.tree import turns_in


class SkillShrunk:
    """`inner`'s predictions, roots shrunk by its earned skill. `memory`: weight of the evidence
    of earlier refits per refit (0: the last refit's roots only)."""

    def __init__(self, inner, *, memory: float = 0.5) -> None:
        if not 0 <= memory < 1:
            raise ValueError(f"memory must be in [0, 1), got {memory}")
        self.inner = inner
        self.memory = memory
        self._base = [0.0, 0.0]  # weighted sum of root targets, their weight
        self._errors = [0.0, 0.0]  # discounted weighted squared error: the model's, the base rate's
        self._pairs = [0.0, 0.0]  # sum over root groups of an unbiased estimate of v(1-v), their count

    @property
    def base_rate(self) -> float:
        """Mean root target so far with one pseudo-observation at 1/2: never exactly 0 or 1, or
        a run whose first roots all failed would rate every prompt hopeless and open none."""
        return (self._base[0] + 0.5) / (self._base[1] + 1.0)

    @property
    def skill(self) -> float:
        model, base = self._errors
        return float(np.clip(1.0 - model / base, 0.0, 1.0)) if base > 0 else 0.0

    @property
    def spread(self) -> float:
        """Between-prompt variance of success rates: b(1-b) - E[v(1-v)], E[v(1-v)] estimated from
        the root groups with one pseudo-group at b(1-b), so it stays below b(1-b) and an
        unskilled Stage 1 still opens prompts."""
        b = self.base_rate
        pairs = (self._pairs[0] + b * (1 - b)) / (self._pairs[1] + 1.0)
        return float(max(0.0, b * (1 - b) - pairs))

    def root_moments(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Shrunk mean, and the between-prompt variance the predictor has not explained."""
        return self.predict(prompts), np.full(len(prompts), (1.0 - self.skill) * self.spread)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        probs = np.asarray(self.inner.predict(texts), dtype=float).copy()
        roots = np.array([turns_in(t) == 0 for t in texts], dtype=bool)
        if roots.any():
            base = self.base_rate
            probs[roots] = base + self.skill * (probs[roots] - base)
        return probs

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        y = np.asarray(targets, dtype=float)
        w = np.ones(len(texts)) if weights is None else np.asarray(weights, dtype=float)
        roots = [i for i, t in enumerate(texts) if turns_in(t) == 0]
        if roots and w[roots].sum() > 0:
            probs = np.asarray(self.inner.predict([texts[i] for i in roots]), dtype=float)
            yr, wr = y[roots], w[roots]
            total = float(wr.sum())
            base = np.full(len(roots), self.base_rate)
            self._errors = [self.memory * self._errors[0] + total * brier_score(probs, yr, wr),
                            self.memory * self._errors[1] + total * brier_score(base, yr, wr)]
            groups = wr >= 2  # a group of n with mean y: y(1-y) n/(n-1) is unbiased for v(1-v)
            pairs = yr * (1 - yr) * wr / np.maximum(wr - 1, 1)
            self._pairs = [self._pairs[0] + float(pairs[groups].sum()), self._pairs[1] + int(groups.sum())]
            self._base = [self._base[0] + float(wr @ yr), self._base[1] + total]
        self.inner.update(texts, targets, weights)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "base": list(self._base), "errors": list(self._errors),
                "pairs": list(self._pairs)}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self._base = [float(v) for v in state["base"]]
        self._errors = [float(v) for v in state["errors"]]
        self._pairs = [float(v) for v in state["pairs"]]
