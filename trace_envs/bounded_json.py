"""JSON decoding with a nesting bound, for text that comes from a model or an untrusted file.

``json.loads`` recurses once per nesting level (RecursionError, or worse if a library raised the
recursion limit) and raises a bare ``ValueError`` for integers past Python's digit limit. Here the
nesting depth is measured first, without recursion (strings stripped, brackets counted with a
cumulative sum), and every failure is one :class:`ValueError` with a message a model or a person
can read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def nesting_depth(text: str | bytes) -> int:
    """How deeply ``[``/``{`` nest outside string literals (an upper bound for invalid JSON)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"[" not in data and b"{" not in data:
        return 0
    bare = _STRINGS.sub(b"", data)
    steps = _OPEN[np.frombuffer(bare, dtype=np.uint8)].astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def loads(text: str | bytes, *, max_depth: int) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth``; raises ``ValueError`` only."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON is nested {depth} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string (or dict key) inside a decoded JSON value holds a lone surrogate,
    which no UTF-8 encoder accepts (``"\\ud800"`` decodes to one)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
