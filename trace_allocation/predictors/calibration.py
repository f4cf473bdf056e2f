"""Calibration metrics for any predictor: Brier score and reliability curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def brier_score(probs: np.ndarray, outcomes: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean squared error of predicted probabilities against observed outcomes (or targets)."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    if p.shape != y.shape or p.size == 0:
        raise ValueError("need equally shaped, non-empty probs and outcomes")
    return float(np.average((p - y) ** 2, weights=weights))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per probability bin: mean prediction, observed success rate, and how many fell in it."""

    predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray

    @property
    def calibration_error(self) -> float:
        """Expected calibration error: count-weighted |predicted - observed| over non-empty bins."""
        used = self.counts > 0
        return float(np.average(np.abs(self.predicted[used] - self.observed[used]), weights=self.counts[used]))


def reliability_curve(probs: np.ndarray, outcomes: np.ndarray, n_bins: int = 10) -> ReliabilityCurve:
    p = np.asarray(probs, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(bins, weights=p, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=y, minlength=n_bins) / counts
    return ReliabilityCurve(predicted, observed, counts)
