"""HTTP client for retrieval servers, sync and async, in the three wire variants in use.

- ``search-r1`` (Search-R1, Tree-GRPO): JSON ``{"queries": [q, ...], "topk": k,
  "return_scores": true}``, one request per batch;
- ``skyrl`` (SkyRL-gym): JSON ``{"query": q, "topk": k, "return_scores": true}``, one request
  per query;
- ``gem`` (GEM): the ``search-r1`` fields as a msgpack body (``application/msgpack``).

All reply ``{"result": [[{"document": {"id", "contents": "Title\\nText"}, "score": s}, ...]]}``
(one ranked list per query; bare document dicts when scores are not asked for).

Failures are bounded (:mod:`trace_envs.http`): ``timeout`` (seconds) covers the whole call,
every attempt, read and pause included, whatever the server does; replies are read up to
``max_reply_bytes`` and checked field by field; transient problems (connection refused,
timeouts, 5xx, 429, an unreadable reply) are retried ``retries`` times with exponential backoff;
what still fails raises :class:`RetrievalError`, never anything else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import httpx
import pydantic

from trace_envs import http
from trace_envs.search.corpus import Passage
from trace_envs.search.corpus import Hit
from trace_envs.search.retrievers import RetrievalError

Api = Literal["search-r1", "skyrl", "gem"]
APIS: tuple[str, ...] = ("search-r1", "skyrl", "gem")
MSGPACK = "application/msgpack"


def retrieve_url(url: str) -> str:
    """``http://host:port`` means ``http://host:port/retrieve``; a full path is kept."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path="/retrieve")) if parsed.path in ("", "/") else url


class _Document(pydantic.BaseModel):
    """A retrieved passage in either corpus shape (``text`` or Search-R1's ``contents``)."""

    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)
    id: str | int | None = None
    alt_id: str | int | None = pydantic.Field(None, alias="_id")
    title: str | None = None
    text: str | None = None
    contents: str | None = None

    @pydantic.model_validator(mode="after")
    def _has_text(self) -> _Document:
        if self.text is None and self.contents is None:
            raise ValueError("a document needs 'text' or 'contents'")
        return self

    def passage(self, rank: int) -> Passage:
        record = self.model_dump(exclude_none=True, by_alias=True)
        return Passage.from_record(record, default_id=str(rank))


class _Scored(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    document: _Document
    score: float = 0.0


def _item_kind(item: Any) -> str:
    return "scored" if isinstance(item, dict) and "document" in item else "bare"


_Item = Annotated[
    Annotated[_Scored, pydantic.Tag("scored")] | Annotated[_Document, pydantic.Tag("bare")],
    pydantic.Discriminator(_item_kind),
]


class _Reply(pydantic.BaseModel):
    """``{"result": [[item, ...], ...]}``: one ranked list per query."""

    model_config = pydantic.ConfigDict(extra="ignore")
    result: list[list[_Item]]


def parse_hits(result: list[_Scored | _Document]) -> list[Hit]:
    """One query's ranked list (scored items, or bare documents scored 0)."""
    return [Hit(item.document.passage(rank), item.score) if isinstance(item, _Scored)
            else Hit(item.passage(rank), 0.0) for rank, item in enumerate(result)]


def decode_reply(reply: http.Reply, expected: int) -> list[list[Hit]]:
    """A reply body (JSON, or msgpack when the server says so) checked against the wire shape;
    anything else is :class:`~trace_envs.http.Transient` (an unreadable reply is retried)."""
    try:
        if MSGPACK in reply.content_type:
            import msgpack

            parsed = _Reply.model_validate(msgpack.unpackb(reply.body))
        else:
            parsed = _Reply.model_validate_json(reply.body)
    except Exception as exc:  # any malformed byte string: msgpack raises several types
        raise http.Transient(f"unreadable reply: {type(exc).__name__}: {str(exc)[:300]}") from None
    if len(parsed.result) != expected:
        raise http.Transient(f"unreadable reply: expected {expected} result list(s), "
                             f"got {len(parsed.result)}")
    return [parse_hits(r) for r in parsed.result]


_HEALTH = pydantic.TypeAdapter(dict[str, Any])


class HttpRetriever:
    """A :class:`~trace_envs.search.retrievers.Retriever` backed by a retrieval server.

    Connections are pooled (one sync client; the async client is made on first ``asearch``).
    Call :meth:`close` / :meth:`aclose` when done, or use it as a context manager.
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
        max_reply_bytes: int = 64 * 2**20,
    ) -> None:
        if api not in APIS:
            raise ValueError(f"unknown retrieval api {api!r}; known: {APIS}")
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be positive and retries non-negative")
        self.url, self.api = retrieve_url(url), api
        self.bounds = http.Bounds(total_s=timeout, connect_s=connect_timeout,
                                  max_bytes=max_reply_bytes)
        self.retry = http.RetryPolicy(attempts=retries + 1, backoff_s=backoff, jitter=0.0)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._client = http.sync_client(self._limits)
        self._aclient: httpx.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    @property
    def timeout(self) -> float:
        return self.bounds.total_s

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

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The arguments of :func:`trace_envs.http.call` for one request body."""
        content, headers = self._encode(body)
        expected = len(body["queries"]) if "queries" in body else 1
        return {"content": content, "headers": headers, "bounds": self.bounds, "retry": self.retry,
                "parse": lambda reply: decode_reply(reply, expected)}

    # ------------------------------------------------------------- sync
    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        deadline = time.monotonic() + self.timeout  # SkyRL's one request per query share it
        try:
            return [hits for body in self._requests(queries, topk)
                    for hits in http.call(self._client, "POST", self.url, deadline=deadline,
                                          **self._post(body))]
        except http.CallFailed as exc:
            raise RetrievalError(f"retrieval server: {exc}") from None

    # ------------------------------------------------------------ async
    async def asearch(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        """Like :meth:`search`; SkyRL-style single-query requests are sent concurrently."""
        if not queries:
            return []
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:  # an async client is loop-bound
            self._aclient, self._aloop = http.async_client(self._limits), loop
        client = self._aclient
        try:  # the first failure cancels the other requests of the call
            async with asyncio.TaskGroup() as group:
                parts = [group.create_task(http.acall(client, "POST", self.url, **self._post(body)))
                         for body in self._requests(queries, topk)]
        except* http.CallFailed as failures:
            raise RetrievalError(f"retrieval server: {failures.exceptions[0]}") from None
        return [hits for part in parts for hits in part.result()]

    # ------------------------------------------------------------ admin
    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` reply (raises :class:`RetrievalError` when down)."""
        def parse(reply: http.Reply) -> dict[str, Any]:
            try:
                return _HEALTH.validate_json(reply.body)
            except pydantic.ValidationError as exc:
                raise http.CallFailed(f"not a health report: {reply.snippet()}") from exc

        url = str(httpx.URL(self.url).copy_with(path="/health"))
        try:
            return http.call(self._client, "GET", url, parse=parse, bounds=self.bounds,
                             retry=http.RetryPolicy(attempts=1))
        except http.CallFailed as exc:
            raise RetrievalError(f"retrieval server health check failed: {exc}") from None

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

