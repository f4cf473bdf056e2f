"""The retrieval server over loopback (all three client variants, batching, bad requests, the
CLI) and the HTTP client against a faulty stand-in server (retries, timeouts, broken replies)."""

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import msgpack
import pytest

from tests.search.conftest import FaultyServer
from trace_envs.search.client import HttpRetriever, retrieve_url
from trace_envs.search.retrievers import RetrievalError
from trace_envs.search.server import background_server, create_app


@pytest.fixture(scope="module")
def server_url(bm25):
    with background_server(create_app(bm25, description={"index": "bm25"})) as url:
        yield url


@pytest.mark.parametrize("api", ["search-r1", "skyrl", "gem"])
def test_clients_of_every_variant_get_the_in_process_ranking(server_url, bm25, world, api):
    queries = [q.path[0] for q in world.questions[:5]]
    expected = bm25.search(queries, 3)
    with HttpRetriever(server_url, api=api) as client:
        got = client.search(queries, 3)
        assert [[h.passage for h in hits] for hits in got] == \
               [[h.passage for h in hits] for hits in expected]
        assert [h.score for hits in got for h in hits] == \
               pytest.approx([h.score for hits in expected for h in hits])
        assert asyncio.run(_asearch(client, queries)) == got


async def _asearch(client, queries):
    try:
        return await client.asearch(queries, 3)
    finally:
        await client.aclose()


def test_raw_search_r1_and_skyrl_bodies(server_url, world):
    name = world.questions[0].path[0]
    r = httpx.post(f"{server_url}/retrieve", json={"queries": [name, name], "topk": 2,
                                                   "return_scores": True})
    result = r.json()["result"]
    assert r.status_code == 200 and len(result) == 2 and len(result[0]) == 2
    assert set(result[0][0]) == {"document", "score"}
    assert result[0][0]["document"]["contents"].split("\n")[0] == name
    bare = httpx.post(f"{server_url}/retrieve", json={"query": name, "topk": 1}).json()
    assert set(bare["result"][0][0]) == {"id", "title", "contents"}  # no scores asked: documents
    packed = httpx.post(f"{server_url}/retrieve", content=msgpack.packb({"queries": [name]}),
                        headers={"content-type": "application/msgpack"})
    assert packed.headers["content-type"].startswith("application/msgpack")
    assert len(msgpack.unpackb(packed.content)["result"][0]) == 3  # server default topk
    assert httpx.post(f"{server_url}/retrieve", json={"queries": []}).json() == {"result": []}


@pytest.mark.parametrize("body, why", [
    (b"not json", "bad request body"),
    (json.dumps({"topk": 3}).encode(), "either 'queries'"),
    (json.dumps({"queries": ["a"], "query": "b"}).encode(), "either 'queries'"),
    (json.dumps({"queries": "a string"}).encode(), "bad request body"),
    (json.dumps({"queries": ["a"], "topk": 0}).encode(), "topk must be"),
    (json.dumps({"queries": ["x" * 100_000]}).encode(), "exceed"),
])
def test_bad_requests_get_400_and_the_server_stays_up(server_url, body, why):
    r = httpx.post(f"{server_url}/retrieve", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and why in r.json()["error"]
    assert httpx.get(f"{server_url}/health").json()["status"] == "ok"


def test_client_does_not_retry_a_refused_request(server_url):
    with HttpRetriever(server_url, retries=3) as client:
        start = time.monotonic()
        with pytest.raises(RetrievalError, match="refused: HTTP 400"):
            client.search(["x" * 5000], 3)
        assert time.monotonic() - start < 1.0


def test_concurrent_requests_are_batched(bm25, world):
    app = create_app(bm25, batch_wait_ms=50)
    queries = [q.path[0] for q in world.questions[:16]]

    async def burst(url):
        async with HttpRetriever(url, api="skyrl") as client:  # 16 concurrent requests
            return await client.asearch(queries, 2)

    with background_server(app) as url:
        results = asyncio.run(burst(url))
        batches = httpx.get(f"{url}/health").json()["batches"]
    assert [hits[0].passage.title for hits in results] == queries
    assert batches < len(queries)


def test_health_and_url_forms(server_url):
    assert retrieve_url("http://h:1") == "http://h:1/retrieve"
    assert retrieve_url("http://h:1/api/search") == "http://h:1/api/search"
    with HttpRetriever(server_url) as client:
        assert client.health()["index"] == "bm25"


# ---------------------------------------------------------------- faults
def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_server_down_fails_fast_with_a_clear_error():
    with HttpRetriever(_closed_port_url(), retries=2, backoff=0.01) as client:
        start = time.monotonic()
        with pytest.raises(RetrievalError, match="ConnectError"):
            client.search(["q"], 3)
        with pytest.raises(RetrievalError, match="health check failed"):
            client.health()
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("fault", ["500", "broken", "short"])
def test_transient_faults_are_retried(fault):
    stub = FaultyServer()
    stub.plan = [fault, fault]
    with background_server(stub.app()) as url, HttpRetriever(url, retries=2, backoff=0.01) as c:
        hits = c.search(["q1", "q2"], 3)
    assert stub.calls == 3 and [h[0].passage.title for h in hits] == ["Stub", "Stub"]


@pytest.mark.parametrize("fault, match", [("500", "server error: HTTP 500"),
                                          ("broken", "unreadable reply")])
def test_persistent_faults_give_up_after_the_retries(fault, match):
    stub = FaultyServer(default=fault)
    with background_server(stub.app()) as url, HttpRetriever(url, retries=2, backoff=0.01) as c:
        with pytest.raises(RetrievalError, match=match):
            c.search(["q"], 3)
        assert stub.calls == 3
        with pytest.raises(RetrievalError, match=match):
            asyncio.run(_asearch(c, ["q"]))


def test_a_slow_server_never_holds_a_call_past_the_timeout():
    stub = FaultyServer(default="slow", slow_s=1.2)
    with background_server(stub.app()) as url, HttpRetriever(url, timeout=0.5, retries=5) as c:
        for run in (lambda: c.search(["q"], 3), lambda: asyncio.run(_asearch(c, ["q"]))):
            start = time.monotonic()
            with pytest.raises(RetrievalError):
                run()
            assert time.monotonic() - start < 1.0


# ------------------------------------------------------------------- CLI
def test_cli_serves_a_corpus_file(tmp_path, world):
    corpus = tmp_path / "corpus.jsonl"
    world.corpus.write_jsonl(corpus)
    port = int(_closed_port_url().rsplit(":", 1)[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "trace_agents.cli", "serve-retriever", "--corpus", str(corpus),
         "--index", "bm25", "--index-dir", str(tmp_path / "idx"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        with HttpRetriever(f"http://127.0.0.1:{port}", timeout=2.0, retries=0) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    health = client.health()
                    break
                except RetrievalError:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                    time.sleep(0.1)
            assert health["passages"] == len(world.corpus) and health["index"] == "bm25"
            q = world.questions[3]
            assert client.search([q.path[0]], 1)[0][0].passage.id == q.supporting[0]
        assert (tmp_path / "idx" / "trace_index.json").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_reports_a_missing_corpus(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "trace_agents.cli", "serve-retriever",
         "--corpus", str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot load corpus" in out.stderr


def test_async_client_survives_a_new_event_loop(server_url, world):
    client = HttpRetriever(server_url)
    first = asyncio.run(client.asearch([world.questions[0].path[0]], 3))
    second = asyncio.run(_asearch(client, [world.questions[0].path[0]]))  # a fresh loop
    assert first == second and first[0][0].passage.title == world.questions[0].path[0]
    client.close()
