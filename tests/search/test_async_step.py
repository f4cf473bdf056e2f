"""`SearchEnv.astep`: HTTP searches are awaited with the async client (never the sync one), the
step's outcome is the same as `step`'s, and a slow server delays only its own episode."""

import asyncio
import time

import gymnasium as gym

import trace_envs  # noqa: F401  (registers trace/Search-v0)
from tests.search.conftest import WORLD, FaultyServer, search_call
from trace_envs.search.client import HttpRetriever
from trace_envs.search.server import background_server, create_app


def make(**kwargs):
    return gym.make("trace/Search-v0", suite_options=WORLD, **kwargs).unwrapped


ACTIONS = [
    search_call("Paris"),
    search_call("Paris") + search_call("  Paris  ", topk=3) + search_call("Rome", topk=2),
    search_call("", topk=2) + search_call("Paris", topk=99),  # bad calls: no request made
    "<answer>nobody</answer>",
    "no tool call at all",
]


def test_astep_matches_step_and_never_blocks_on_the_sync_client(bm25, monkeypatch):
    with background_server(create_app(bm25)) as url:
        sync_env, async_env = make(retriever="http", url=url), make(retriever="http", url=url)

        def forbidden(*args, **kwargs):
            raise AssertionError("the sync client was used on the async path")

        async def run():
            outcomes = []
            for action in ACTIONS:
                for env in (sync_env, async_env):
                    env.reset(options={"task_id": "gen-3"})
                expected = sync_env.step(action)
                with monkeypatch.context() as m:
                    m.setattr(HttpRetriever, "search", forbidden)
                    got = await async_env.astep(action)
                outcomes.append((expected, got, sync_env.get_tool_state(), async_env.get_tool_state()))
            return outcomes

        for expected, got, sync_state, async_state in asyncio.run(run()):
            assert got == expected and sync_state == async_state


def test_a_slow_server_delays_only_its_own_episode(bm25):
    stub = FaultyServer(default="slow", slow_s=4.0)
    with background_server(stub.app()) as slow, background_server(create_app(bm25)) as good:
        stalled = make(retriever="http", url=slow, timeout=1.0, retries=0)
        fine = [make(retriever="http", url=good) for _ in range(4)]
        for env in [stalled, *fine]:
            env.reset(options={"task_id": "gen-1"})

        async def timed(env):
            started = time.monotonic()
            out = await env.astep(search_call(env.task.metadata["path"][0]))
            return time.monotonic() - started, out

        async def run():
            return await asyncio.gather(timed(stalled), *(timed(e) for e in fine))

        (slow_s, (obs, *_, info)), *others = asyncio.run(run())
    assert "search is unavailable" in obs and "error" in info
    assert slow_s < 3.0  # the client's whole-call deadline (1 s) held, not the 4 s reply
    assert all("Doc 1(" in out[0] for _, out in others)
    assert max(s for s, _ in others) < slow_s
