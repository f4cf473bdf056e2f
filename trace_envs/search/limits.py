"""The retrieval server's limits, apart from the server so the CLI can list them without
importing starlette."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServerLimits:
    """What one client can ask of the server; every field is a ``serve-retriever`` option.

    The defaults admit Search-R1's largest requests (one request per rollout batch:
    ``train_batch_size x n_agent`` queries) and stop anything far beyond them."""

    max_body_bytes: int = 16 * 2**20
    """Largest request body (413 beyond)."""
    max_queries: int = 4096
    """Queries in one request (400 beyond)."""
    max_query_chars: int = 4096
    """Characters in one query (400 beyond)."""
    max_topk: int = 100
    """Largest ``topk`` (400 beyond; at least 1)."""
    max_pending_queries: int = 16384
    """Queries waiting or being searched, all requests together; a request that would pass
    it gets 503 with ``Retry-After`` (clients retry with backoff)."""
    max_connections: int = 1024
    """Open connections and requests in progress (uvicorn answers 503 beyond)."""
    header_timeout_s: float = 10.0
    """Time for a request's headers to arrive after its first byte or the connection's
    opening; the connection is closed after it."""
    body_timeout_s: float = 30.0
    """Time for a request's body to arrive once its headers have (408 beyond)."""
    keep_alive_s: float = 5.0
    """How long an idle keep-alive connection stays open."""
    max_header_bytes: int = 16 * 1024
    """Largest request head (request line and headers; 400 beyond)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)!r}")
        if self.max_queries > self.max_pending_queries:
            raise ValueError("max_queries must not exceed max_pending_queries: a full request "
                             "would always be turned away")
