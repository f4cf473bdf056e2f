"""A success predictor that reads the policy: a ridge head on its last-layer hidden states.

A text model sees the words of a prompt; whether a policy solves it depends on the policy, whose
hidden state at the prompt's end (and at each turn boundary) the engine computes anyway. The
head is a ridge regression of the backup targets on those states (a linear probability model,
clipped to [0.01, 0.99]), refit after every update from discounted sufficient statistics: earlier
steps' data are kept but fade by ``discount`` per update, as the policy moves. The penalty is
chosen at each refit by generalised cross-validation over a grid, from the same statistics.

The features come from an injected ``featurize(texts) -> [n, d]`` (the replay world's recorded
states; an engine's prefill), so this module stays numpy-only and never sees a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Featurize = Callable[[Sequence[str]], np.ndarray]

CLIP = 0.01
"""Predictions stay this far from 0 and 1: a linear head's extremes are extrapolations, and a
certain prediction is worth nothing to the exact solvers (a step of certain prefixes ran no
continuation)."""

SCALARS = ("n", "y", "yy")
"""The sufficient statistics that are numbers (a checkpoint may store them as 1-element arrays)."""

PENALTIES = np.logspace(-2, 4, 13)
"""The ridge penalties GCV chooses among (relative to the mean eigenvalue of the feature scatter)."""


class PolicyStatePredictor:
    def __init__(self, featurize: Featurize, *, discount: float = 0.95, prior: float = 0.5) -> None:
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.featurize = featurize
        self.discount = discount
        self.prior = prior
        self._stats: dict[str, np.ndarray | float] | None = None
        self._coef: np.ndarray | None = None
        self._mean_x: np.ndarray | None = None
        self._mean_y = prior
        self.penalty: float | None = None

    # ------------------------------------------------------------------ protocol
    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        if self._coef is None:
            return np.full(len(texts), self.prior)
        x = np.asarray(self.featurize(texts), dtype=np.float64)
        return np.clip(self._mean_y + (x - self._mean_x) @ self._coef, CLIP, 1.0 - CLIP)

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        if not len(texts):
            return
        x = np.asarray(self.featurize(texts), dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
        new = {"n": float(w.sum()), "x": w @ x, "y": float(w @ y), "yy": float(w @ (y * y)),
               "xx": (x * w[:, None]).T @ x, "xy": (x * w[:, None]).T @ y}
        if self._stats is None:
            self._stats = new
        else:
            self._stats = {k: self.discount * self._stats[k] + new[k] for k in new}
        self._refit()

    def _refit(self) -> None:
        s = self._stats
        assert s is not None
        n = float(s["n"])
        mean_x, mean_y = s["x"] / n, s["y"] / n
        scatter = s["xx"] - n * np.outer(mean_x, mean_x)
        cross = s["xy"] - n * mean_x * mean_y
        total = float(s["yy"]) - n * mean_y * mean_y
        eig, vec = np.linalg.eigh(scatter)
        eig = np.clip(eig, 0.0, None)
        proj = vec.T @ cross
        scale = max(float(eig.mean()), 1e-12)
        best = None
        for lam in PENALTIES * scale:  # GCV: n RSS / (n - df)^2, all from the statistics
            shrink = eig / (eig + lam)
            rss = total - float(np.sum(proj**2 * shrink * (2 - shrink) / np.where(eig > 0, eig, 1.0)))
            df = float(shrink.sum())
            if n - df <= 1e-9:
                continue
            score = n * max(rss, 0.0) / (n - df) ** 2
            if best is None or score < best[0]:
                best = (score, lam)
        lam = float(PENALTIES[-1] * scale) if best is None else best[1]
        self._coef = vec @ (proj / (eig + lam))
        self._mean_x, self._mean_y, self.penalty = mean_x, mean_y, lam

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        stats = {} if self._stats is None else {k: np.asarray(v) for k, v in self._stats.items()}
        return {"discount": self.discount, "prior": self.prior, "stats": stats}

    def load_state_dict(self, state: dict) -> None:
        if float(state["discount"]) != self.discount or float(state["prior"]) != self.prior:
            raise ValueError("the checkpoint's policy-state predictor has other settings")
        stats = state["stats"]
        if not stats:
            self._stats, self._coef = None, None
            return
        self._stats = {k: (float(np.asarray(v).reshape(-1)[0]) if k in SCALARS else np.asarray(v, dtype=np.float64))
                       for k, v in stats.items()}
        self._refit()


__all__ = ["PENALTIES", "Featurize", "PolicyStatePredictor"]
