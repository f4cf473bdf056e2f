"""The search client against a hostile server: whatever the reply (dripped, endless, cut, wrong
types, broken JSON, random bytes, any status), a call ends within its timeout, raises nothing
but RetrievalError, reads no more than its cap, and the env turns it into an error observation."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from hypothesis import given, target
from hypothesis import strategies as st

from tests import fuzz
from tests.hostile_http import SLACK, Plan, plans, timed
from tests.search.conftest import search_call
from trace_envs.search.client import APIS, HttpRetriever
from trace_envs.search.env import SearchEnv
from trace_envs.search.corpus import Hit
from trace_envs.search.retrievers import RetrievalError

TEMPLATE = {"result": [[{"document": {"id": "d1", "contents": "Title\nSome text."}, "score": 1.5},
                        {"document": {"id": "d2", "title": "T", "text": "x"}, "score": 0}]]}
TIMEOUT = 0.2
def _check_hits(out: object, queries: int) -> None:
    assert isinstance(out, list) and len(out) == queries
    assert all(isinstance(h, Hit) and isinstance(h.passage.text, str) for hits in out for h in hits)


def test_any_reply_gives_hits_or_retrieval_error_within_the_timeout(hostile):
    clients = {api: HttpRetriever(hostile.url, api=api, timeout=TIMEOUT, retries=1, backoff=0.01,
                                  max_reply_bytes=256 * 1024) for api in APIS}
    env = SearchEnv(retriever=clients["search-r1"], max_turns=100)

    @fuzz.examples(80)
    @given(plan=plans(TEMPLATE, drip_s=0.02), how=st.sampled_from(["sync", "async", "env"]),
           api=st.sampled_from(APIS))
    def run(plan: Plan, how: str, api: str) -> None:
        hostile.plan = plan
        client = clients[api]
        queries = ["q", "r"] if api == "skyrl" else ["q"]  # skyrl: one request per query
        with timed() as took:
            if how == "env":
                env.reset(seed=0)
                obs, reward, terminated, truncated, info = env.step(search_call("q"))
                assert obs.startswith("Doc 1(") or (obs.startswith("Error:") and
                                                    "search is unavailable" in info["error"])
            else:
                try:
                    out = (client.search(queries, 3) if how == "sync"
                           else asyncio.run(client.asearch(queries, 3)))
                    _check_hits(out, len(queries))
                except RetrievalError:
                    pass
        target(took[0], label="seconds")  # steer the search towards slow replies
        assert took[0] < TIMEOUT + SLACK, (how, api, plan)

    try:
        run()
    finally:
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("drip_head", [False, True])
def test_a_dripping_server_is_cut_off_at_the_timeout(hostile, drip_head):
    """The issue's case: a reply sent a byte at a time held a `timeout=3` client for 49 s."""
    body = b'{"result": [[' + b" " * 2000 + b"]]}"  # 20 s at 10 ms a byte
    hostile.plan = Plan(body=body, drip_s=0.01, drip_head=drip_head)
    with HttpRetriever(hostile.url, timeout=0.5, retries=3, backoff=0.05) as client:
        for run in (lambda: client.search(["q"], 3),
                    lambda: asyncio.run(client.asearch(["q"], 3))):
            with timed() as took, pytest.raises(RetrievalError, match="attempt"):
                run()
            assert 0.45 < took[0] < 0.5 + SLACK


def test_an_endless_reply_is_refused_at_the_cap_with_bounded_memory(hostile):
    hostile.plan = Plan(body=b'{"result": [["', endless=True)
    cap = 1 << 20
    with HttpRetriever(hostile.url, timeout=10.0, retries=2, max_reply_bytes=cap) as client:
        tracemalloc.start()
        try:
            with timed() as took, pytest.raises(RetrievalError, match="exceeds the limit"):
                client.search(["q"], 3)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * cap and took[0] < 2.0  # not retried: a bigger reply will not shrink


def test_a_declared_huge_reply_is_refused_before_reading(hostile):
    hostile.plan = Plan(body=b"x", endless=True,
                        extra_headers=(("content-length", str(200 << 20)),))
    with HttpRetriever(hostile.url, timeout=5.0, max_reply_bytes=1 << 20) as client:
        with pytest.raises(RetrievalError, match="exceeds the limit"):
            client.search(["q"], 3)
