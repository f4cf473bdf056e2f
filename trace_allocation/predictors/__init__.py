"""Shared success predictors V~(H): one protocol, several models.

`predict(texts) -> probs` scores prefixes (prompt alone or prompt + turns);
`update(texts, targets, weights)` refits online on backup targets of the current policy's trees;
`state_dict()` / `load_state_dict(state)` carry what was learned through a checkpoint (JSON values
and numpy arrays only, so a checkpoint never holds a pickle).
`EncoderPredictor` (torch) is imported lazily so `import trace_allocation` stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from trace_allocation.predictors.beta import BetaBernoulliPredictor
from trace_allocation.predictors.blend import BlendedPredictor
from trace_allocation.predictors.calibration import (
    ReliabilityCurve,
    auc,
    brier_score,
    brier_skill,
    reliability_curve,
    spearman,
)
from trace_allocation.predictors.lexical import LexicalPredictor
from trace_allocation.predictors.oracle import OraclePredictor
from trace_allocation.predictors.policy import PolicyStatePredictor
from trace_allocation.predictors.shrink import SkillShrunk

if TYPE_CHECKING:
    from trace_allocation.predictors.encoder import EncoderPredictor


@runtime_checkable
class SuccessPredictor(Protocol):
    def predict(self, texts: Sequence[str]) -> np.ndarray: ...

    def update(self, texts: Sequence[str], targets: np.ndarray, weights: np.ndarray | None = None) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def __getattr__(name: str):
    if name == "EncoderPredictor":
        from trace_allocation.predictors.encoder import EncoderPredictor

        return EncoderPredictor
    raise AttributeError(name)


__all__ = [
    "BetaBernoulliPredictor",
    "BlendedPredictor",
    "EncoderPredictor",
    "LexicalPredictor",
    "OraclePredictor",
    "PolicyStatePredictor",
    "ReliabilityCurve",
    "SkillShrunk",
    "SuccessPredictor",
    "auc",
    "brier_score",
    "brier_skill",
    "reliability_curve",
    "spearman",
]
