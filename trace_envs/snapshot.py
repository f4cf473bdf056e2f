"""Immutable, serialisable env snapshots.

A snapshot holds the episode state as canonical JSON bytes: immutable by construction, cheap to
keep one per turn, and safe to load from untrusted storage (JSON only, never pickle). Shared
read-only resources (task suites, corpora, indexes) are not in it; they are found again by the
env that restores it, which must be built with the same env id and arguments.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

_MAGIC = b"TRACESNAP1"
_RAW, _ZLIB = b"J", b"Z"
_COMPRESS_ABOVE = 4096


@dataclass(frozen=True, slots=True)
class Snapshot:
    env_id: str
    payload: bytes
    """Canonical JSON of the episode state."""

    @classmethod
    def of(cls, env_id: str, state: dict[str, Any]) -> Snapshot:
        return cls(env_id, json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode())

    def state(self) -> dict[str, Any]:
        """A fresh, mutable copy of the episode state."""
        return json.loads(self.payload)

    def to_bytes(self) -> bytes:
        body = json.dumps({"env_id": self.env_id}).encode() + b"\n" + self.payload
        if len(body) > _COMPRESS_ABOVE:
            return _MAGIC + _ZLIB + zlib.compress(body, 6)
        return _MAGIC + _RAW + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """Decode :meth:`to_bytes` output; anything else raises ``ValueError``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"snapshot data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
            raise ValueError("not a trace-rl snapshot (bad header)")
        kind, body = data[len(_MAGIC) : len(_MAGIC) + 1], data[len(_MAGIC) + 1 :]
        try:
            if kind == _ZLIB:
                body = zlib.decompress(body)
            elif kind != _RAW:
                raise ValueError(f"unknown snapshot encoding {kind!r}")
            header, _, payload = body.partition(b"\n")
            env_id = json.loads(header)["env_id"]
            json.loads(payload)  # validate now, not at restore time
        except (zlib.error, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"corrupt snapshot: {exc}") from None
        if not isinstance(env_id, str):
            raise ValueError("corrupt snapshot: env_id is not a string")
        return cls(env_id, payload)

    def __len__(self) -> int:
        return len(self.payload)
