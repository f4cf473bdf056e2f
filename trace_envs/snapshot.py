"""Immutable, serialisable env snapshots.

A snapshot holds the episode state as canonical JSON bytes: immutable by construction, cheap to
keep one per turn, and safe to load from untrusted storage: JSON only (never pickle), with caps
on the compressed size, the decompressed size (decompression streams and stops at the cap, so a
zip bomb costs at most the cap) and the nesting depth. Every malformed input is a ``ValueError``.
What the JSON *means* is checked by the env that restores it (``ToolEnv.restore``). Shared
read-only resources (task suites, corpora, indexes) are not in it; they are found again by the
env that restores it, which must be built with the same env id and arguments.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from trace_envs import bounded_json

_MAGIC = b"TRACESNAP1"
_RAW, _ZLIB = b"J", b"Z"
_COMPRESS_ABOVE = 4096
MAX_BYTES = 64 * 2**20
"""The largest snapshot accepted, compressed or not (and the largest state ``of`` encodes)."""
MAX_DEPTH = 128
"""The deepest nesting of the state's JSON."""
MAX_ENV_ID_CHARS = 512


@dataclass(frozen=True, slots=True)
class Snapshot:
    env_id: str
    payload: bytes
    """Canonical JSON of the episode state."""

    @classmethod
    def of(cls, env_id: str, state: dict[str, Any]) -> Snapshot:
        """Encode ``state``; raises ``ValueError`` for a state that could not be loaded back."""
        try:
            payload = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
            raise ValueError(f"state cannot be snapshotted: {type(exc).__name__}: {exc}") from None
        if len(payload) > MAX_BYTES - MAX_ENV_ID_CHARS - 64:  # room for the header
            raise ValueError(f"state is {len(payload)} bytes; snapshots hold at most {MAX_BYTES}")
        return cls(env_id, payload)

    def state(self) -> dict[str, Any]:
        """A fresh, mutable copy of the episode state (``ValueError`` if it is not a JSON object
        within the caps)."""
        if len(self.payload) > MAX_BYTES:
            raise ValueError(f"snapshot state is {len(self.payload)} bytes; the cap is {MAX_BYTES}")
        try:
            state = bounded_json.loads(self.payload, max_depth=MAX_DEPTH)
        except ValueError as exc:
            raise ValueError(f"corrupt snapshot: {exc}") from None
        if not isinstance(state, dict):
            raise ValueError("corrupt snapshot: the state is not a JSON object")
        return state

    def to_bytes(self) -> bytes:
        body = json.dumps({"env_id": self.env_id}).encode() + b"\n" + self.payload
        if len(body) > _COMPRESS_ABOVE:
            return _MAGIC + _ZLIB + zlib.compress(body, 6)
        return _MAGIC + _RAW + body

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_BYTES) -> Snapshot:
        """Decode :meth:`to_bytes` output; anything else raises ``ValueError``.

        Neither the input nor its decompressed form may exceed ``max_bytes``; decompression
        stops as soon as the output would.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"snapshot data must be bytes, got {type(data).__name__}")
        if len(data) > max_bytes:
            raise ValueError(f"snapshot is {len(data)} bytes; the cap is {max_bytes}")
        data = bytes(data)
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
            raise ValueError("not a trace-rl snapshot (bad header)")
        kind, body = data[len(_MAGIC) : len(_MAGIC) + 1], data[len(_MAGIC) + 1 :]
        if kind == _ZLIB:
            body = _inflate(body, max_bytes)
        elif kind != _RAW:
            raise ValueError(f"unknown snapshot encoding {kind!r}")
        header, newline, payload = body.partition(b"\n")
        if not newline or len(header) > MAX_ENV_ID_CHARS + 20:
            raise ValueError("corrupt snapshot: no env id header")
        try:
            env_id = bounded_json.loads(header, max_depth=1)
        except ValueError as exc:
            raise ValueError(f"corrupt snapshot header: {exc}") from None
        if not isinstance(env_id, dict) or set(env_id) != {"env_id"}:
            raise ValueError("corrupt snapshot: the header is not {\"env_id\": ...}")
        env_id = env_id["env_id"]
        if not isinstance(env_id, str) or not env_id or len(env_id) > MAX_ENV_ID_CHARS:
            raise ValueError("corrupt snapshot: env_id is not a short string")
        snapshot = cls(env_id, payload)
        snapshot.state()  # validate now, not at restore time
        return snapshot

    def __len__(self) -> int:
        return len(self.payload)


def _inflate(body: bytes, max_bytes: int) -> bytes:
    """zlib-decompress ``body`` in 1 MiB steps, refusing output beyond ``max_bytes`` as soon as
    it is reached (a bomb costs at most the cap in memory, never its full size)."""
    inflater = zlib.decompressobj()
    chunks: list[bytes] = []
    total, pending = 0, body
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, 2**20)
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"snapshot decompresses to more than {max_bytes} bytes")
            chunks.append(chunk)
    except zlib.error as exc:
        raise ValueError(f"corrupt snapshot: {exc}") from None
    if not inflater.eof or inflater.unused_data:
        raise ValueError("corrupt snapshot: truncated or trailing compressed data")
    return b"".join(chunks)
