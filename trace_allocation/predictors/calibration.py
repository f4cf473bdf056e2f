"""Calibration and ranking metrics for any predictor: Brier score and its skill against a base
rate, reliability curve, AUC, Spearman correlation (numpy only: no scipy in the pure package)."""

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


def brier_skill(probs: np.ndarray, outcomes: np.ndarray, base: float,
                weights: np.ndarray | None = None) -> float | None:
    """1 - Brier(probs) / Brier(constant `base`): positive when the predictor beats always saying
    the base rate, 0 when it merely matches it, negative when it is confidently wrong. None when
    the outcomes all equal the base (nothing to beat)."""
    y = np.asarray(outcomes, dtype=float)
    reference = brier_score(np.full(y.shape, float(base)), y, weights)
    return None if reference == 0 else 1.0 - brier_score(probs, y, weights) / reference


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(1, v.size + 1)
    _, group, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(group, weights=ranks)
    return sums[group] / counts[group]


def auc(probs: np.ndarray, outcomes: np.ndarray) -> float | None:
    """Area under the ROC curve for binary outcomes (Mann-Whitney, ties count half); None
    without both classes."""
    y = np.asarray(outcomes) > 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return None
    ranks = average_ranks(probs)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation of a and b (ties averaged); None when either is constant or n < 3."""
    if len(a) != len(b):
        raise ValueError("need equally long sequences")
    if len(a) < 3:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
