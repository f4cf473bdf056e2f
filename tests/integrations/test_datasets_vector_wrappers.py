"""Task suites from HF `datasets`, per-sub-env tasks in vector envs, fork/snapshot through wrappers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trace_envs
from tests import fuzz
from trace_envs import Snapshot
from trace_envs.search.qa import load_qa_file
from trace_envs.tasks.math import load_math_file

pytest.importorskip("datasets")
from trace_envs.integrations.hf_datasets import hf_suite  # noqa: E402

CALC = 'Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>'


def _same_tasks(a, b) -> None:
    assert [(t.id, t.prompt, t.answer) for t in a] == [(t.id, t.prompt, t.answer) for t in b]


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "hf-cache")


def test_math_files_map_like_the_file_loader(tmp_path: Path, cache: str) -> None:
    rows = [
        {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "unique_id": "m/1"},
        {"question": "Tom has 3 apples and buys 4.", "answer": "3 + 4 = 7\n#### 7"},
        {"problem": "Half of 1?", "answer": "\\frac{1}{2}", "id": "h"},
    ]
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _same_tasks(hf_suite(str(jsonl), cache_dir=cache), load_math_file(jsonl))
    import pyarrow as pa
    import pyarrow.parquet as pq

    gsm = [{"question": f"{n} + 1?", "answer": f"so\n#### {n + 1}"} for n in range(3)]
    pq.write_table(pa.Table.from_pylist(gsm), tmp_path / "gsm.parquet")
    _same_tasks(hf_suite(str(tmp_path / "gsm.parquet"), cache_dir=cache), load_math_file(tmp_path / "gsm.parquet"))


def test_qa_rows_map_like_the_qa_loader(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "nq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "William Shakespeare"]},
        {"id": "q2", "question": "capital of france", "golden_answers": ["Paris"]},
    ]))
    suite = hf_suite(str(path), kind="qa", cache_dir=cache)
    _same_tasks(suite, load_qa_file(path))
    assert suite.get("q1").grade("william shakespeare").reward == 1.0


def test_an_env_loads_an_hf_suite_by_name(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps({"id": "t", "question": "2 + 3?", "answer": "5"}) + "\n")
    env = gym.make("trace/Calculator-v0", suite="hf", suite_options={"path": str(path), "cache_dir": cache})
    assert env.reset(seed=0)[1]["task_id"] == "t"
    assert env.step(CALC)[0] == "5"
    assert env.step("<answer>5</answer>")[1] == 1.0


def test_a_bad_row_is_a_clear_error(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "no question field", "label": 1}) + "\n")
    with pytest.raises(ValueError, match="needs one of"):
        hf_suite(str(path), cache_dir=cache)
    with pytest.raises(ValueError, match="kind must be"):
        hf_suite(str(path), kind="code", cache_dir=cache)  # type: ignore[arg-type]


@pytest.mark.parametrize("container", ["Dataset", "DatasetDict"])
def test_save_to_disk_folders_load_by_path_and_by_suite_name(tmp_path: Path, container: str) -> None:
    import datasets

    rows = [{"id": "a", "question": "2 + 3?", "answer": "5"}, {"id": "b", "question": "1 + 1?", "answer": "2"}]
    dataset = datasets.Dataset.from_list(rows)
    folder = tmp_path / "saved"
    (dataset if container == "Dataset" else datasets.DatasetDict({"test": dataset})).save_to_disk(str(folder))
    split = {"hf_split": "test"} if container == "DatasetDict" else {}
    assert [t.id for t in hf_suite(str(folder), **split)] == ["a", "b"]
    env = gym.make("trace/Calculator-v0", suite="hf", suite_options={"path": str(folder), **split})
    assert env.reset(options={"task_id": "a"})[1]["task_id"] == "a"
    if container == "DatasetDict":
        with pytest.raises(ValueError, match=r"holds the splits \['test'\], not 'train'"):
            hf_suite(str(folder))


_part = st.text(st.characters(categories=["L", "N"], include_characters="_-"), min_size=1, max_size=8)
_local_looking = st.one_of(  # paths that can only be local: never a hub id ("name", "owner/name")
    st.lists(_part, min_size=1, max_size=3).map(lambda p: "ABS/" + "/".join(p)),
    st.tuples(st.sampled_from(["./", "../", "~/"]), _part).map("".join),
    st.lists(_part, min_size=3, max_size=4).map("/".join),
    st.tuples(_part, st.sampled_from(sorted({".jsonl", ".json", ".parquet", ".csv", ".arrow"}))).map("".join),
    _part.map(lambda p: "INSIDE/" + p),
)


@fuzz.examples(60)
@given(path=_local_looking)
def test_a_missing_local_path_is_one_line_and_never_a_hub_lookup(tmp_path_factory, monkeypatch, path: str) -> None:
    import datasets

    root = tmp_path_factory.mktemp("missing")
    (root / "inside").mkdir()
    monkeypatch.chdir(root)
    path = path.replace("ABS", str(root / "absent")).replace("INSIDE", "inside")
    monkeypatch.setattr(datasets, "load_dataset", _hub_lookup)
    with pytest.raises(FileNotFoundError) as err:
        hf_suite(path)
    assert str(err.value).startswith(f"no such file or folder: {path} ") and "\n" not in str(err.value)


def _hub_lookup(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"looked up on the hub: {args}")


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({"question": _text, "answer": _text.filter(str.strip)}),
                min_size=1, max_size=5))
def test_any_rows_map_the_same_way_both_ways(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        expected = load_math_file(path)
    except ValueError:
        with pytest.raises(ValueError):
            hf_suite(str(path), cache_dir=str(tmp_path / "c"))
        return
    _same_tasks(hf_suite(str(path), cache_dir=str(tmp_path / "c")), expected)


@pytest.mark.skipif(os.environ.get("TRACE_RL_ONLINE_TESTS") != "1",
                    reason="downloads from the Hugging Face hub: set TRACE_RL_ONLINE_TESTS=1 (tests run offline)")
def test_a_hub_dataset() -> None:
    suite = hf_suite("openai/gsm8k", config="main", hf_split="test")
    assert len(suite) == 1319 and suite[0].answer == "18"


# ------------------------------------------------------------------------------------- vector
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_sub_env_gets_its_own_task(mode: str) -> None:
    envs = gym.make_vec("trace/Calculator-v0", num_envs=3, vectorization_mode=mode,
                        suite_options={"size": 20, "seed": 1})
    try:
        ids = [t.id for t in trace_envs.load_suite("arithmetic", size=20, seed=1)]
        want = [ids[7], ids[2], ids[7]]
        observations, infos = trace_envs.reset_tasks(envs, want, seed=0)
        assert list(infos["task_id"]) == want and infos["_task_id"].all()
        suite = trace_envs.load_suite("arithmetic", size=20, seed=1)
        assert list(observations) == [suite.get(i).prompt for i in want]
        observations, _, _, _, infos = envs.step([CALC] * 3)
        assert list(observations) == ["5"] * 3 and list(infos["task_id"]) == want
        _, infos = trace_envs.reset_tasks(envs, [None, ids[0], None], seed=5)
        assert infos["task_id"][1] == ids[0]
        with pytest.raises(ValueError, match="3 sub-envs"):
            trace_envs.reset_tasks(envs, want[:2])
    finally:
        envs.close()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12), min_size=1, max_size=4))
def test_unicode_observations_survive_shared_memory(texts: list[str]) -> None:
    """AsyncVectorEnv's path: a live view written by workers, deep-copied on return."""
    import copy

    from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

    from trace_envs.spaces import UnicodeText

    space = UnicodeText(12)
    memory = create_shared_memory(space, n=len(texts))
    view = read_from_shared_memory(space, memory, n=len(texts))
    for i, text in enumerate(texts):
        write_to_shared_memory(space, i, text, memory)
    assert copy.deepcopy(view) == tuple(texts)


# ------------------------------------------------------------------------------------ wrappers
def test_fork_and_snapshot_through_wrappers() -> None:
    env = TimeLimit(RecordEpisodeStatistics(gym.make("trace/Calculator-v0")), max_episode_steps=5)
    with pytest.raises(AttributeError):
        env.fork  # noqa: B018  (Gymnasium wrappers hide it: the reason for the helpers)
    env.reset(seed=3)
    env.step(CALC)
    branch = trace_envs.fork(env)
    assert isinstance(branch, TimeLimit) and isinstance(branch.env, RecordEpisodeStatistics)
    inner, branch_inner = trace_envs.unwrap_forkable(env), trace_envs.unwrap_forkable(branch)
    assert branch_inner is not inner and (branch_inner.task, branch_inner.turn) == (inner.task, 1)
    assert branch._elapsed_steps == env._elapsed_steps == 1
    branch.step(CALC)
    assert (branch._elapsed_steps, env._elapsed_steps) == (2, 1)  # wrapper state is not shared
    assert (branch.env.episode_lengths, env.env.episode_lengths) == (2, 1)
    other = gym.make("trace/Calculator-v0")
    other.restore(Snapshot.from_bytes(inner.snapshot().to_bytes()))
    assert (other.task, other.turn) == (inner.task, 1)
    with pytest.raises(TypeError, match="not a trace-rl ToolEnv"):
        trace_envs.unwrap_forkable(gym.make("CartPole-v1"))
    assert np.isscalar(branch.unwrapped.turn)
