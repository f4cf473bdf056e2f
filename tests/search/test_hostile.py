"""Hostile input for `trace/Search-v0` at the env level: actions, snapshot states and bytes,
and a retriever that fails in every way (the HTTP client's own limits are tested with it)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzz
from tests.envs.test_hostile import step_safely
from tests.search.conftest import WORLD, search_call
from trace_envs import Snapshot
from trace_envs.search.env import SearchEnv

VALID = [search_call("born in"), search_call("Labs", topk=2), search_call("x" * 10, topk=10),
         "<answer>Kari Mo</answer>", "<answer></answer>"]


def make_env(steps=(), **options):
    env = SearchEnv(suite_options=WORLD, max_turns=6, **options)
    env.reset(seed=2)
    for action in steps:
        if not env.done:
            env.step(action)
    return env


@fuzz.examples(300)
@given(prefix=st.lists(st.sampled_from(VALID[:3]), max_size=2),
       action=fuzz.hostile_actions(VALID, ["search"]))
def test_hostile_actions_never_raise(prefix, action):
    env = make_env(prefix)
    step_safely(env, action, "search: action")


class BrokenRetriever:
    """A retriever (any back-end) failing with whatever a buggy one raises."""

    def __init__(self, error):
        self.error = error

    def search(self, queries, topk=3):
        raise self.error


@pytest.mark.parametrize("error", [KeyError("hits"), RecursionError(), MemoryError(),
                                   ValueError("Exceeds the limit (4300 digits)"), TimeoutError()])
def test_a_failing_retriever_is_an_error_observation(error):
    env = make_env(retriever=BrokenRetriever(error))
    obs, reward, terminated, truncated, info = env.step(search_call("anything"))
    assert "error" in info and obs.startswith("Error") and env.turn == 1
    assert env.queries == [] and env.retrieved == []  # a failed search leaves no trace


def restore_case(target, restore, kind):
    with fuzz.measured(kind):
        accepted = fuzz.unchanged_after_refusal(target, restore)
    if accepted and target.task is not None and not target.done:
        step_safely(target, search_call("born"), kind + " (then step)")


@fuzz.examples(300)
@given(data=st.data())
def test_hostile_snapshot_states_are_refused_or_safe(data):
    source = make_env(VALID[:2])
    state = data.draw(fuzz.state_mutations(source.snapshot().state()))
    target = make_env(VALID[:1])
    try:
        snapshot = Snapshot.of(target.env_id, state)
    except ValueError:
        return
    restore_case(target, lambda: target.restore(snapshot), "search: snapshot state")


@fuzz.examples(200)
@given(data=st.data())
def test_hostile_snapshot_bytes_are_refused_or_safe(data):
    source = make_env(VALID[:2])
    raw = data.draw(fuzz.byte_mutations(source.snapshot().to_bytes()))
    target = make_env(VALID[:1])
    restore_case(target, lambda: target.restore(Snapshot.from_bytes(raw)), "search: snapshot bytes")


@pytest.mark.parametrize("tools", [
    {"queries": ["a"], "retrieved": []},
    {"queries": ["x" * 2000], "retrieved": [[]]},
    {"queries": [" "], "retrieved": [[]]},
    {"queries": ["a"], "retrieved": [["w1"] * 11]},
    {"queries": ["a"] * 49, "retrieved": [[]] * 49},
    {"queries": [1], "retrieved": [[]]},
    {"queries": ["a"], "retrieved": [[]], "extra": 1},
])
def test_out_of_range_search_states_are_refused(tools):
    env = make_env(VALID[:1])
    state = env.snapshot().state()
    state["tools"] = tools
    assert not fuzz.unchanged_after_refusal(env, lambda: env.restore(Snapshot.of(env.env_id, state)))
