"""Hostile-network figures: how long a client is held and how much it reads when the server
misbehaves, and how the retrieval server answers hostile clients (the cases of issue 11).

    python benchmarks/hostile_http_bench.py [--json]

Clients (search client sync and async, SGLang backend) against a loopback server that drips its
reply a byte every 10 ms (a 50 s reply), or sends an endless body (200 MiB and more): seconds
until the error and the peak memory the call allocated (tracemalloc). The retrieval server with
its default limits: status and seconds for a 100 MiB body, 100k queries in one request, deep
JSON, 2,000 connections that never send their headers (when they are closed, whether a normal
request gets through meanwhile), and tracebacks logged for clients that hang up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.hostile_http import HostileServer, Plan  # noqa: E402
from trace_agents.backends import BackendError, SamplingParams, SGLangBackend  # noqa: E402
from trace_envs.search.client import HttpRetriever  # noqa: E402
from trace_envs.search.limits import ServerLimits  # noqa: E402
from trace_envs.search.retrievers import RetrievalError  # noqa: E402

DRIP = Plan(body=b'{"result": [[' + b" " * 5000 + b"]]}", drip_s=0.01)  # 50 s at full length


def measured(call: Any) -> dict[str, Any]:
    tracemalloc.start()
    start = time.monotonic()
    try:
        call()
        outcome = "ok"
    except (RetrievalError, BackendError) as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[-90:]}"
    seconds = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": round(seconds, 2), "peak_mib": round(peak / 2**20, 1), "outcome": outcome}


def clients() -> dict[str, Any]:
    out: dict[str, Any] = {}
    sampling = SamplingParams(max_tokens=4)

    def backend_call(url: str, **options: Any) -> Any:
        async def run() -> None:
            backend = SGLangBackend(url, **options)
            try:
                await backend.generate([1, 2, 3], sampling)
            finally:
                await backend.aclose()
        return lambda: asyncio.run(run())

    with HostileServer() as server:
        for name, plan in (("drip 10 ms/byte", DRIP),
                           ("drip head too", Plan(body=DRIP.body, drip_s=0.01, drip_head=True)),
                           ("endless body", Plan(body=b'{"result": [["', endless=True)),
                           ("declares 200 MiB", Plan(body=b"x", endless=True, extra_headers=(
                               ("content-length", str(200 << 20)),)))):
            server.plan = plan
            with HttpRetriever(server.url, timeout=3.0) as client:
                out[f"search sync, timeout=3: {name}"] = measured(lambda: client.search(["q"]))
                out[f"search async, timeout=3: {name}"] = measured(
                    lambda: asyncio.run(client.asearch(["q"])))
            out[f"sglang, timeout_s=2 (4 attempts): {name}"] = measured(
                backend_call(server.url, timeout_s=2.0))
            out[f"sglang, timeout_s=2, total_timeout_s=2: {name}"] = measured(
                backend_call(server.url, timeout_s=2.0, total_timeout_s=2.0))
        out["hostile server: most bytes one connection wrote"] = max(server.sent)
    return out


def server() -> dict[str, Any]:
    from trace_envs.search.qa import generated_world
    from trace_envs.search.retrievers import shared_retriever
    from trace_envs.search.server import background_server, create_app

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    out: dict[str, Any] = {}
    limits = ServerLimits()
    retriever = shared_retriever("bm25", generated_world(people=40, questions=10).corpus)
    with background_server(create_app(retriever, limits=limits)) as url:
        logging.getLogger("uvicorn.error").addHandler(handler)
        address = (httpx.URL(url).host, httpx.URL(url).port)
        client = httpx.Client(timeout=60)

        def timed_post(name: str, body: bytes, content_type: str = "application/json") -> None:
            start = time.monotonic()
            try:
                status: Any = client.post(f"{url}/retrieve", content=body,
                                          headers={"content-type": content_type}).status_code
            except httpx.HTTPError as exc:  # the server may close before all is sent
                status = type(exc).__name__
            out[name] = {"status": status, "seconds": round(time.monotonic() - start, 3)}

        timed_post("100 MiB body", b"x" * (100 << 20))
        timed_post("100k queries", json.dumps({"queries": ["who"] * 100_000}).encode())
        timed_post("JSON nested 100k deep", b"[" * 100_000 + b"]" * 100_000)
        timed_post("msgpack nested 100k deep", b"\x91" * 100_000 + b"\x90", "application/msgpack")
        timed_post("topk 10**30", json.dumps({"queries": ["a"], "topk": 10**30}).encode())

        idle = [socket.create_connection(address) for _ in range(2000)]
        start = time.monotonic()
        time.sleep(0.5)  # let the server accept them all (the client's pooled one is older)
        during = client.post(f"{url}/retrieve", json={"query": "a"}).status_code
        for sock in idle:
            sock.settimeout(limits.header_timeout_s + 10)
        closed_at = []
        for sock in idle:
            sock.recv(1)  # b"" once the server closes it
            closed_at.append(time.monotonic() - start)
            sock.close()
        after = client.post(f"{url}/retrieve", json={"query": "a"}).status_code
        out["2000 silent connections"] = {
            "normal request meanwhile": during, "all closed after s": round(max(closed_at), 2),
            "header_timeout_s": limits.header_timeout_s, "normal request after": after}

        for data in (b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{",
                     b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"):
            for _ in range(50):
                socket.create_connection(address).sendall(data)  # then dropped: hung up
        time.sleep(1.0)
        out["100 clients hanging up: records logged with a traceback"] = sum(
            1 for r in records if r.exc_info)
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {"clients": clients(), "retrieval server": server()}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for section, rows in figures.items():
            print(f"\n{section}")
            for name, value in rows.items():
                print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
