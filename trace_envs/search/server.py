"""The project's retrieval server: any local retriever behind the Search-R1 HTTP API.

``POST /retrieve`` accepts Search-R1 bodies (``"queries": [...]``), SkyRL-gym bodies (one
``"query"``) and GEM's msgpack bodies, and answers in the request's encoding, so existing
clients work unchanged. ``GET /health`` reports the index. Concurrent requests are batched:
queries arriving within ``batch_wait_ms`` of each other go to the retriever in one call (up to
``max_batch`` queries), which runs in a worker thread so the event loop keeps accepting.

The server is safe to expose to untrusted clients within :class:`ServerLimits`: bodies,
queries per request, query length and ``topk`` are capped (413/400), headers and bodies must
arrive within their timeouts (the connection is closed / 408), the work queued at once is
bounded (503 with ``Retry-After``), so are connections (uvicorn's 503), malformed or deeply
nested bodies get 400, and a client that hangs up is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pydantic
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trace_envs.search.client import MSGPACK
from trace_envs.search.limits import ServerLimits
from trace_envs.search.corpus import Hit
from trace_envs.search.retrievers import Retriever

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class RetrieveRequest(pydantic.BaseModel):
    """Search-R1 (``queries``) or SkyRL-gym (``query``) request fields, strictly typed
    (``"topk": 2.0`` or ``"return_scores": "yes"`` is a 400, not a guess)."""

    model_config = pydantic.ConfigDict(extra="ignore", strict=True)
    queries: list[str] | None = None
    query: str | None = None
    topk: int | None = None
    return_scores: bool = False

    @pydantic.model_validator(mode="after")
    def _one_form(self) -> RetrieveRequest:
        if (self.queries is None) == (self.query is None):
            raise ValueError("give either 'queries' (a list) or 'query' (a string)")
        return self


@dataclass
class _Pending:
    queries: list[str]
    topk: int
    future: asyncio.Future[list[list[Hit]]]


class Batcher:
    """Groups queries from concurrent requests into one retriever call."""

    def __init__(self, retriever: Retriever, *, max_batch: int, wait_s: float) -> None:
        self.retriever, self.max_batch, self.wait_s = retriever, max_batch, wait_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0  # number of retriever calls, for tests and monitoring

    async def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(queries, topk, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size, deadline = len(batch[0].queries), loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item.queries)
            await self._answer(batch)

    async def _answer(self, batch: list[_Pending]) -> None:
        queries = [q for item in batch for q in item.queries]
        try:
            results = await run_in_threadpool(
                self.retriever.search, queries, max(item.topk for item in batch)
            )
            self.batches += 1
        except Exception as exc:  # the requests fail, the server stays up
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            part = [hits[: item.topk] for hits in results[start : start + len(item.queries)]]
            start += len(item.queries)
            if not item.future.done():
                item.future.set_result(part)


def _document(hit: Hit) -> dict[str, Any]:
    return {"id": hit.passage.id, "title": hit.passage.title, "contents": hit.passage.contents}


def create_app(
    retriever: Retriever,
    *,
    default_topk: int = 3,
    max_batch: int = 256,
    batch_wait_ms: float = 2.0,
    limits: ServerLimits = ServerLimits(),
    description: dict[str, Any] | None = None,
) -> Starlette:
    """The ASGI app; ``description`` is extra information for ``/health`` (index, corpus).
    ``limits`` travel with the app (``app.state.limits``) to :func:`serve`."""
    if not 1 <= default_topk <= limits.max_topk:
        raise ValueError(f"default_topk must be between 1 and max_topk={limits.max_topk}")
    batcher = Batcher(retriever, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
    pending = 0  # queries accepted and not yet answered

    def reply(payload: dict[str, Any], status: int, as_msgpack: bool,
              headers: dict[str, str] | None = None) -> Response:
        if as_msgpack:
            return Response(msgpack.packb(payload), status, headers, media_type=MSGPACK)
        return JSONResponse(payload, status, headers)

    too_big = f"the body must be at most {limits.max_body_bytes} bytes"

    async def read_body(request: Request) -> bytearray:
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > limits.max_body_bytes):
            raise _Refused(413, too_big)
        body = bytearray()
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_body_bytes:
                        raise _Refused(413, too_big)
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {limits.body_timeout_s}s") from None
        return body

    def parse(raw: bytearray, as_msgpack: bool) -> tuple[list[str], int, bool]:
        try:
            if as_msgpack:
                req = RetrieveRequest.model_validate(msgpack.unpackb(raw))
            else:
                req = RetrieveRequest.model_validate_json(raw)
        except Exception as exc:  # any malformed body (msgpack raises several types)
            raise _Refused(400, f"bad request body: {str(exc)[:500]}") from None
        queries = req.queries if req.queries is not None else [req.query or ""]
        topk = default_topk if req.topk is None else req.topk
        if not 1 <= topk <= limits.max_topk:
            raise _Refused(400, f"topk must be between 1 and {limits.max_topk}")
        if len(queries) > limits.max_queries:
            raise _Refused(400, f"at most {limits.max_queries} queries per request, "
                                f"got {len(queries)}")
        too_long = [i for i, q in enumerate(queries) if len(q) > limits.max_query_chars][:10]
        if too_long:
            raise _Refused(400, f"queries {too_long} exceed {limits.max_query_chars} characters")
        return queries, topk, req.return_scores

    async def search(queries: list[str], topk: int) -> list[list[Hit]]:
        nonlocal pending
        if pending + len(queries) > limits.max_pending_queries:
            raise _Refused(503, "the server is busy; retry shortly", {"retry-after": "1"})
        pending += len(queries)
        try:
            return await batcher.search(queries, topk)
        except Exception as exc:  # the retriever failed: this request fails, the server stays up
            log.warning("retriever failed on %d queries: %s: %s", len(queries),
                        type(exc).__name__, exc)
            raise _Refused(500, f"the retriever failed: {type(exc).__name__}") from None
        finally:
            pending -= len(queries)

    async def retrieve(request: Request) -> Response:
        as_msgpack = "msgpack" in request.headers.get("content-type", "")
        try:
            queries, topk, scores = parse(await read_body(request), as_msgpack)
            results = await search(queries, topk) if queries else []
        except _Refused as exc:
            return reply({"error": str(exc)}, exc.status, as_msgpack,
                         {**exc.headers, "connection": "close"} if exc.status in (408, 413)
                         else exc.headers)
        except ClientDisconnect:  # the client hung up: nobody to answer, nothing to log
            return Response(status_code=499)
        if scores:
            payload = [[{"document": _document(h), "score": h.score} for h in hits]
                       for hits in results]
        else:
            payload = [[_document(h) for h in hits] for hits in results]
        return reply({"result": payload}, 200, as_msgpack)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "batches": batcher.batches, "pending": pending,
                             **(description or {})})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    app = Starlette(
        routes=[Route("/retrieve", retrieve, methods=["POST"]),
                Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
    )
    app.state.limits = limits
    return app


def _header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, plus a deadline for each request's headers.

    uvicorn times out only idle keep-alive connections: a client that opens a connection and
    sends its headers slowly, or never, would hold it (and a file descriptor) forever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app: Starlette, **options: Any) -> Any:
    """A ``uvicorn.Config`` enforcing the app's :class:`ServerLimits` on connections."""
    import uvicorn

    limits: ServerLimits = getattr(app.state, "limits", ServerLimits())
    return uvicorn.Config(
        app, http=_header_deadline_protocol(limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  # used as a float
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        log_level="warning", **options,
    )


def serve(app: Starlette, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host=host, port=port)).run()


@contextlib.contextmanager
def background_server(app: Starlette, *, host: str = "127.0.0.1",
                      start_timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` on a free port of ``host`` in a daemon thread; yields its base URL and
    stops the server on exit (for tests, benchmarks and notebooks)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        waited = 0.0
        while not server.started:
            if not thread.is_alive() or waited > start_timeout:
                raise RuntimeError("retrieval server did not start")
            threading.Event().wait(0.01)
            waited += 0.01
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
