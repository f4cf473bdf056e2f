"""HTTP client for retrieval servers, sync and async, in the three wire variants in use.

- ``search-r1`` (Search-R1, Tree-GRPO): JSON ``{"queries": [q, ...], "topk": k,
  "return_scores": true}``, one request per batch;
- ``skyrl`` (SkyRL-gym): JSON ``{"query": q, "topk": k, "return_scores": true}``, one request
  per query;
- ``gem`` (GEM): the ``search-r1`` fields as a msgpack body (``application/msgpack``).

All reply ``{"result": [[{"document": {"id", "contents": "Title\\nText"}, "score": s}, ...]]}``
(one ranked list per query; bare document dicts when scores are not asked for).

Failures are bounded: each call has one overall ``timeout`` (seconds, covering every attempt),
transient problems (connection refused, timeouts, 5xx, an unreadable reply) are retried
``retries`` times with exponential backoff, and what still fails raises
:class:`RetrievalError`, never hangs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from trace_envs.search.corpus import Passage
from trace_envs.search.retrievers import Hit, RetrievalError

Api = Literal["search-r1", "skyrl", "gem"]
APIS: tuple[str, ...] = ("search-r1", "skyrl", "gem")
MSGPACK = "application/msgpack"


class _Retryable(Exception):
    pass


def retrieve_url(url: str) -> str:
    """``http://host:port`` means ``http://host:port/retrieve``; a full path is kept."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path="/retrieve")) if parsed.path in ("", "/") else url


def parse_hits(result: Any) -> list[Hit]:
    """One query's ranked list in the Search-R1 reply shape (with or without scores)."""
    if not isinstance(result, list):
        raise ValueError("each result must be a list of documents")
    hits = []
    for rank, item in enumerate(result):
        if not isinstance(item, dict):
            raise ValueError("each retrieved item must be an object")
        doc, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
        if not isinstance(doc, dict):
            raise ValueError("'document' must be an object")
        hits.append(Hit(Passage.from_record(doc, default_id=str(rank)), float(score)))
    return hits


class HttpRetriever:
    """A :class:`~trace_envs.search.retrievers.Retriever` backed by a retrieval server.

    Connections are pooled (one ``httpx.Client``; the ``httpx.AsyncClient`` is made on first
    ``asearch``). Call :meth:`close` / :meth:`aclose` when done, or use it as a context manager.
    """

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        api: Api = "search-r1",
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.1,
        max_connections: int = 32,
    ) -> None:
        if api not in APIS:
            raise ValueError(f"unknown retrieval api {api!r}; known: {APIS}")
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries non-negative")
        self.url, self.api = retrieve_url(url), api
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.retries, self.backoff = retries, backoff
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._client = httpx.Client(limits=self._limits)
        self._aclient: httpx.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- wire
    def _requests(self, queries: Sequence[str], topk: int) -> list[dict[str, Any]]:
        if self.api == "skyrl":
            return [{"query": q, "topk": topk, "return_scores": True} for q in queries]
        return [{"queries": list(queries), "topk": topk, "return_scores": True}]

    def _encode(self, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        if self.api == "gem":
            import msgpack

            return msgpack.packb(body), {"content-type": MSGPACK, "accept": MSGPACK}
        return json.dumps(body).encode(), {"content-type": "application/json"}

    def _decode(self, response: httpx.Response, expected: int) -> list[list[Hit]]:
        if response.status_code >= 500:
            raise _Retryable(f"server error {response.status_code}")
        if response.status_code >= 400:
            raise RetrievalError(
                f"retrieval server refused the request ({response.status_code}): "
                f"{response.text[:200]}"
            )
        try:
            if MSGPACK in response.headers.get("content-type", ""):
                import msgpack

                payload = msgpack.unpackb(response.content)
            else:
                payload = response.json()
            results = payload["result"]
            if not isinstance(results, list) or len(results) != expected:
                raise ValueError(f"expected {expected} result list(s)")
            return [parse_hits(r) for r in results]
        except Exception as exc:  # any unreadable reply is treated as transient
            raise _Retryable(f"unreadable reply: {type(exc).__name__}: {exc}") from None

    def _timeout(self, remaining: float) -> httpx.Timeout:
        return httpx.Timeout(remaining, connect=min(self.connect_timeout, remaining))

    def _expected(self, body: dict[str, Any]) -> int:
        return len(body["queries"]) if "queries" in body else 1

    # ------------------------------------------------------------- sync
    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        deadline = time.monotonic() + self.timeout
        out: list[list[Hit]] = []
        for body in self._requests(queries, topk):
            out.extend(self._post_with_retries(body, deadline))
        return out

    def _post_with_retries(self, body: dict[str, Any], deadline: float) -> list[list[Hit]]:
        content, headers = self._encode(body)
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._client.post(self.url, content=content, headers=headers,
                                             timeout=self._timeout(remaining))
                return self._decode(response, self._expected(body))
            except (httpx.TransportError, _Retryable) as exc:
                problem = _describe(exc)
            pause = min(self.backoff * 2**attempt, deadline - time.monotonic())
            if attempt < self.retries and pause > 0:
                time.sleep(pause)
        raise RetrievalError(f"retrieval server {self.url} failed: {problem}")

    # ------------------------------------------------------------ async
    async def asearch(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        """Like :meth:`search`; SkyRL-style single-query requests are sent concurrently."""
        if not queries:
            return []
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:  # an async client is loop-bound
            self._aclient, self._aloop = httpx.AsyncClient(limits=self._limits), loop
        deadline = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                parts = await asyncio.gather(*(
                    self._apost_with_retries(body, deadline)
                    for body in self._requests(queries, topk)
                ))
        except TimeoutError:
            raise RetrievalError(
                f"retrieval server {self.url} did not answer within {self.timeout}s"
            ) from None
        return [hits for part in parts for hits in part]

    async def _apost_with_retries(self, body: dict[str, Any], deadline: float) -> list[list[Hit]]:
        assert self._aclient is not None
        content, headers = self._encode(body)
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = await self._aclient.post(self.url, content=content, headers=headers,
                                                    timeout=self._timeout(remaining))
                return self._decode(response, self._expected(body))
            except (httpx.TransportError, _Retryable) as exc:
                problem = _describe(exc)
            pause = min(self.backoff * 2**attempt, deadline - time.monotonic())
            if attempt < self.retries and pause > 0:
                await asyncio.sleep(pause)
        raise RetrievalError(f"retrieval server {self.url} failed: {problem}")

    # ------------------------------------------------------------ admin
    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` reply (raises :class:`RetrievalError` when down)."""
        try:
            response = self._client.get(str(httpx.URL(self.url).copy_with(path="/health")),
                                        timeout=self._timeout(self.timeout))
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RetrievalError(f"retrieval server health check failed: {_describe(exc)}") from None

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def __enter__(self) -> HttpRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> HttpRetriever:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
