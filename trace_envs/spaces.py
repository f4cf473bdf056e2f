"""A text space for natural-language actions and observations.

``gymnasium.spaces.Text`` only admits characters of a fixed charset (alphanumerics by default);
model output and tool results are arbitrary Unicode. This space admits any string within the
length bounds and samples printable text, so ``check_env`` and random agents still work.
"""

from __future__ import annotations

import multiprocessing as mp
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Text
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

_SAMPLE_CHARSET = string.printable + "×÷−éλ∑中"


class UnicodeText(Text):
    def __init__(self, max_length: int, *, min_length: int = 0, seed: Any = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"


# AsyncVectorEnv passes observations through shared memory: it reads the buffer once, at start,
# expecting array *views* that later writes show through, and returns a deep copy of them. Gymnasium's
# Text handler returns plain strings (decoded once, and limited to the charset), so every async
# observation came back as the start-up zeros. A UnicodeText buffer holds Unicode code points
# (-1 padded) and reads as a live view whose deep copy is the tuple of current strings.
class SharedTexts(Sequence[str]):
    """A live view of ``n`` strings in a shared int32 buffer (what AsyncVectorEnv keeps)."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        row = self._rows[index]
        return row[row >= 0].tobytes().decode("utf-32-le")

    def __deepcopy__(self, memo: dict[int, Any]) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"SharedTexts({tuple(self)!r})"


@create_shared_memory.register(UnicodeText)
def _create(space: UnicodeText, n: int = 1, ctx: Any = mp) -> Any:
    memory = ctx.Array(np.dtype(np.int32).char, n * space.max_length)
    np.frombuffer(memory.get_obj(), dtype=np.int32)[:] = -1
    return memory


@write_to_shared_memory.register(UnicodeText)
def _write(space: UnicodeText, index: int, value: str, shared_memory: Any) -> None:
    size = space.max_length
    row = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[index * size:(index + 1) * size]
    codes = np.frombuffer(value[:size].encode("utf-32-le"), dtype=np.int32)
    row[: len(codes)] = codes
    row[len(codes):] = -1


@read_from_shared_memory.register(UnicodeText)
def _read(space: UnicodeText, shared_memory: Any, n: int = 1) -> SharedTexts:
    return SharedTexts(np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(n, space.max_length))
