"""The project's retrieval server: any local retriever behind the Search-R1 HTTP API.

``POST /retrieve`` accepts Search-R1 bodies (``"queries": [...]``), SkyRL-gym bodies (one
``"query"``) and GEM's msgpack bodies, and answers in the request's encoding, so existing
clients work unchanged. ``GET /health`` reports the index. Concurrent requests are batched:
queries arriving within ``batch_wait_ms`` of each other go to the retriever in one call (up to
``max_batch`` queries), which runs in a worker thread so the event loop keeps accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pydantic
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trace_envs.search.client import MSGPACK
from trace_envs.search.retrievers import Hit, Retriever


class RetrieveRequest(pydantic.BaseModel):
    """Search-R1 (``queries``) or SkyRL-gym (``query``) request fields."""

    model_config = pydantic.ConfigDict(extra="ignore")
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
    max_topk: int = 100,
    max_batch: int = 256,
    batch_wait_ms: float = 2.0,
    max_query_chars: int = 4096,
    description: dict[str, Any] | None = None,
) -> Starlette:
    """The ASGI app; ``description`` is extra information for ``/health`` (index, corpus)."""
    batcher = Batcher(retriever, max_batch=max_batch, wait_s=batch_wait_ms / 1000)

    def reply(payload: dict[str, Any], status: int, as_msgpack: bool) -> Response:
        if as_msgpack:
            return Response(msgpack.packb(payload), status, media_type=MSGPACK)
        return JSONResponse(payload, status)

    async def retrieve(request: Request) -> Response:
        as_msgpack = "msgpack" in request.headers.get("content-type", "")
        raw = await request.body()
        try:
            body = msgpack.unpackb(raw) if as_msgpack else json.loads(raw)
            req = RetrieveRequest.model_validate(body)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return reply({"error": f"bad request body: {exc}"}, 400, as_msgpack)
        queries = req.queries if req.queries is not None else [req.query or ""]
        topk = default_topk if req.topk is None else req.topk
        if not 1 <= topk <= max_topk:
            return reply({"error": f"topk must be between 1 and {max_topk}"}, 400, as_msgpack)
        too_long = [i for i, q in enumerate(queries) if len(q) > max_query_chars]
        if too_long:
            return reply({"error": f"queries {too_long} exceed {max_query_chars} characters"},
                         400, as_msgpack)
        results = await batcher.search(queries, topk) if queries else []
        if req.return_scores:
            payload = [[{"document": _document(h), "score": h.score} for h in hits]
                       for hits in results]
        else:
            payload = [[_document(h) for h in hits] for hits in results]
        return reply({"result": payload}, 200, as_msgpack)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "batches": batcher.batches, **(description or {})})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    return Starlette(
        routes=[Route("/retrieve", retrieve, methods=["POST"]),
                Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
    )


def serve(app: Starlette, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


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
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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
