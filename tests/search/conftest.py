import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trace_envs.search.qa import generated_world
from trace_envs.search.retrievers import shared_retriever

WORLD = {"people": 40, "distractors": 2, "questions": 200, "seed": 7}


@pytest.fixture(scope="session")
def world():
    return generated_world(**WORLD)


@pytest.fixture(scope="session")
def bm25(world):
    return shared_retriever("bm25", world.corpus)


def search_call(query, **extra) -> str:
    return "<tool_call>" + json.dumps(
        {"name": "search", "arguments": {"query": query, **extra}}) + "</tool_call>"


class FaultyServer:
    """A stand-in retrieval server whose next replies are scripted: "ok", "500", "slow",
    "broken" (invalid JSON) or "short" (wrong number of result lists)."""

    def __init__(self, default: str = "ok", slow_s: float = 2.0):
        self.plan: list[str] = []
        self.default, self.slow_s, self.calls = default, slow_s, 0

    def app(self) -> Starlette:
        async def retrieve(request: Request) -> Response:
            self.calls += 1
            body = json.loads(await request.body())
            mode = self.plan.pop(0) if self.plan else self.default
            if mode == "500":
                return JSONResponse({"error": "boom"}, 500)
            if mode == "slow":
                await asyncio.sleep(self.slow_s)
            if mode == "broken":
                return Response(b'{"result": [[{"document": ', media_type="application/json")
            n = len(body.get("queries", [None]))
            doc = {"document": {"id": "d1", "contents": "Stub\nA stub passage."}, "score": 1.0}
            return JSONResponse({"result": [[doc]] * (0 if mode == "short" else n)})

        return Starlette(routes=[Route("/retrieve", retrieve, methods=["POST"])])
