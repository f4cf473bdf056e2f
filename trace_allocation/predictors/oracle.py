"""The true success probability, for the simulator: the ceiling a learned predictor aims at."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class OraclePredictor:
    def __init__(self, truth: Callable[[str], float]) -> None:
        self.truth = truth

    def state_dict(self) -> dict:
        """Nothing is learned: the truth is given anew."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.truth(t) for t in texts], dtype=float)

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Nothing to learn."""
