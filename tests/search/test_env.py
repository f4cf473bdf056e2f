"""`trace/Search-v0`: scripted multi-hop agents, rewards, bad queries, retrieval faults, and
fork/snapshot of the episode state."""

import json
import subprocess
import sys
import time

import gymnasium as gym
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trace_envs  # noqa: F401  (registers trace/Search-v0)
from tests.search.conftest import WORLD, FaultyServer, search_call
from trace_envs import Snapshot
from trace_envs.search.env import SearchEnv
from trace_envs.search.server import background_server, create_app
from trace_envs.search.world import RELATIONS

ARGS = {"suite_options": WORLD}


def make(**kwargs) -> SearchEnv:
    return gym.make("trace/Search-v0", **{**ARGS, **kwargs})


def follow_the_chain(env, task) -> tuple[float, dict]:
    """A scripted agent: search the current entity, read the next one off its passage, repeat;
    then answer. It knows the relation chain, never the intermediate entities or the answer."""
    current, retrieved = task.metadata["path"][0], set()
    for rel in task.metadata["chain"]:
        obs, reward, terminated, truncated, info = env.step(search_call(current))
        assert not terminated and not truncated and "error" not in info
        retrieved.update(info["retrieved"][0])
        found = [RELATIONS[rel].extract(current, line) for line in obs.splitlines()]
        current = next((f for f in found if f), "I could not find it")
    _, reward, terminated, _, info = env.step(f"<answer>{current}</answer>")
    assert terminated
    return reward, {**info, "all_gold_retrieved": set(task.metadata["supporting"]) <= retrieved}


def test_default_make_is_fast_offline_and_the_env_itself():
    start = time.perf_counter()
    env = gym.make("trace/Search-v0")
    assert isinstance(env, SearchEnv) and time.perf_counter() - start < 5.0
    obs, info = env.reset(seed=0)
    assert obs == env.task.prompt and obs.startswith("What is ")
    (schema,) = env.tool_schemas()
    params = schema["function"]["parameters"]
    assert schema["function"]["name"] == "search" and params["required"] == ["query"]
    assert params["properties"]["query"]["type"] == "string"
    assert "integer" in json.dumps(params["properties"]["topk"])


def test_scripted_agent_answers_multi_hop_questions():
    env = make(split="test")
    outcomes = []
    for task in list(env.tasks)[:25]:
        env.reset(options={"task_id": task.id})
        reward, info = follow_the_chain(env, task)
        assert reward == float(info["all_gold_retrieved"])  # reward 1 when gold is retrieved
        assert info["em"] == reward and info["f1"] == reward
        outcomes.append(reward)
    assert sum(outcomes) == len(outcomes)


def test_answering_without_searching_fails():
    env = make()
    for seed in range(10):
        env.reset(seed=seed)
        _, reward, terminated, _, info = env.step(
            f"<answer>{env.task.metadata['path'][0]}</answer>")
        assert terminated and reward == 0.0 and info["em"] == 0.0


def test_reward_threshold_and_em_mode():
    env = make(reward_threshold=0.5)
    env.reset(options={"task_id": "gen-0"})
    gold = env.task.answer[0]
    _, reward, _, _, info = env.step(f"<answer>{gold} and also something else</answer>")
    assert reward == 0.0 and 0.0 < info["f1"] < 0.5 and info["score"] == info["f1"]
    strict = make(reward_mode="em")
    strict.reset(options={"task_id": "gen-0"})
    _, reward, *_ = strict.step(f"<answer>The {gold.upper()}.</answer>")
    assert reward == 1.0  # normalised exact match
    with pytest.raises(ValueError, match="reward_mode"):
        make(reward_mode="bleu")


@pytest.mark.parametrize("action, message", [
    (search_call("   "), "query is empty"),
    (search_call("word " * 1000), "keep it under 1000"),
    ("x" * 100_000, "characters long; the limit"),
    (search_call("Paris", topk=0), "topk must be between 1 and 10"),
    (search_call("Paris", topk="3"), "invalid arguments for search"),
    ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', "query: Field required"),
])
def test_bad_queries_get_a_clear_observation(action, message):
    env = make(max_turns=4)
    env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step(action)
    assert message in obs and message in info["error"] and obs.startswith("Error: ")
    assert (reward, terminated, truncated, env.turn) == (0.0, False, False, 1)
    obs, *_, info = env.step(search_call(env.task.metadata["path"][0], topk=2))
    assert obs.count("Doc ") == 2 and "error" not in info  # the episode goes on
    assert env.queries == [env.task.metadata["path"][0]]  # failed searches are not recorded


def test_http_retriever_gives_the_same_episode(bm25):
    with background_server(create_app(bm25)) as url:
        for api in ("search-r1", "skyrl", "gem"):
            env = make(retriever="http", url=url, api=api)
            env.reset(options={"task_id": "gen-5"})
            reward, info = follow_the_chain(env, env.task)
            assert reward == 1.0 and info["all_gold_retrieved"]


def test_retrieval_faults_become_error_observations_and_other_episodes_go_on(bm25):
    stub = FaultyServer(default="500")
    with background_server(stub.app()) as bad, background_server(create_app(bm25)) as good:
        broken = make(retriever="http", url=bad, timeout=1.0, retries=1)
        healthy = make(retriever="http", url=good)
        broken.reset(seed=1)
        healthy.reset(seed=1)
        start = time.monotonic()
        obs, reward, terminated, truncated, info = broken.step(search_call("anything"))
        assert time.monotonic() - start < 1.5
        assert "search is unavailable" in obs and "server error: HTTP 500" in info["error"]
        assert not terminated and not truncated and broken.queries == []
        stub.default = "ok"  # the server recovers: the same episode searches again
        obs, *_, info = broken.step(search_call("anything"))
        assert "Doc 1(Title: Stub) A stub passage." == obs and "error" not in info
        reward, info = follow_the_chain(healthy, healthy.task)
        assert reward == 1.0


def test_constructor_errors():
    with pytest.raises(ValueError, match="needs url"):
        make(retriever="http")
    with pytest.raises(ValueError, match="topk must be"):
        make(topk=20)


def test_qa_file_suite_with_a_corpus_file(tmp_path, world):
    corpus = tmp_path / "corpus.jsonl"
    world.corpus.write_jsonl(corpus)
    questions = tmp_path / "qa.jsonl"
    questions.write_text("".join(
        json.dumps({"id": q.id, "question": q.question, "golden_answers": [q.answer]}) + "\n"
        for q in world.questions[:5]))
    with pytest.raises(ValueError, match="needs corpus"):
        gym.make("trace/Search-v0", suite=str(questions))
    env = gym.make("trace/Search-v0", suite=str(questions), corpus=str(corpus))
    env.reset(options={"task_id": world.questions[2].id})
    q = world.questions[2]
    obs, *_ = env.step(search_call(q.path[0]))
    assert f"(Title: {q.path[0]})" in obs
    _, reward, *_ = env.step(f"<answer>{q.answer}</answer>")
    assert reward == 1.0


# ------------------------------------------------------------ fork/snapshot
def test_forks_share_the_index_and_copy_only_episode_state():
    env = make()
    env.reset(seed=4)
    env.step(search_call("first"))
    child = env.fork()
    assert child.retriever is env.retriever and child.tasks is env.tasks
    child.step(search_call("second"))
    assert env.queries == ["first"] and child.queries == ["first", "second"]
    assert env.turn == 1 and child.turn == 2


@settings(max_examples=25, deadline=None)
@given(parent=st.lists(st.sampled_from(["alpha", "born", "city", "mentor"]), max_size=3),
       child=st.lists(st.sampled_from(["works", "capital", "founded"]), max_size=3))
def test_fork_isolation(parent, child):
    env = make(max_turns=10)
    env.reset(seed=0)
    env.step(search_call("start"))
    before = env.get_tool_state()
    clone = env.fork()
    for q in child:
        clone.step(search_call(q))
    assert env.get_tool_state() == before
    for q in parent:
        env.step(search_call(q))
    assert clone.queries == ["start", *child] and env.queries == ["start", *parent]
    assert len(clone.retrieved) == len(clone.queries)


def test_snapshot_restores_in_a_fresh_process(world):
    env = make()
    task = next(t for t in env.tasks if t.metadata["hops"] == 4)
    env.reset(options={"task_id": task.id})
    path = task.metadata["path"]
    for entity in path[:3]:  # three hops done: turn 3, the fourth search and answer remain
        env.step(search_call(entity))
    blob = env.snapshot().to_bytes()
    script = f"""
import sys, json, gymnasium as gym, trace_envs
from trace_envs import Snapshot
from tests.search.conftest import search_call
env = gym.make("trace/Search-v0", suite_options={WORLD!r})
env.restore(Snapshot.from_bytes(sys.stdin.buffer.read()))
obs, *_ = env.step(search_call({path[3]!r}))
_, reward, done, _, info = env.step("<answer>{task.answer[0]}</answer>")
print(json.dumps({{"turn": env.turn, "queries": env.queries, "reward": reward, "obs": obs}}))
"""
    out = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True,
                         timeout=60, check=True)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["turn"] == 5 and result["reward"] == 1.0
    assert result["queries"] == list(path[:4])
    local = env.fork()
    obs, *_ = local.step(search_call(path[3]))
    assert obs == result["obs"]
    assert Snapshot.from_bytes(blob).state()["tools"]["queries"] == list(path[:3])


def test_dense_retriever_by_argument(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = make(retriever="dense", suite_options={**WORLD, "people": 12, "questions": 20})
    env.reset(options={"task_id": "gen-1"})
    reward, info = follow_the_chain(env, env.task)
    assert info["all_gold_retrieved"] == (reward == 1.0)
    assert type(env.retriever).__name__ == "DenseRetriever"
