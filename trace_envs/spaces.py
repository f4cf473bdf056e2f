"""A text space for natural-language actions and observations.

``gymnasium.spaces.Text`` only admits characters of a fixed charset (alphanumerics by default);
model output and tool results are arbitrary Unicode. This space admits any string within the
length bounds and samples printable text, so ``check_env`` and random agents still work.
"""

from __future__ import annotations

import string
from typing import Any

from gymnasium.spaces import Text

_SAMPLE_CHARSET = string.printable + "×÷−éλ∑中"


class UnicodeText(Text):
    def __init__(self, max_length: int, *, min_length: int = 0, seed: Any = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"
