"""The recorder (tiny model, calculator suite): structure, determinism, exact resume, hidden
states, and a loader that refuses every damaged or hostile file with a ValueError."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trace_envs  # noqa: F401  (registers the envs)
from tests.fuzz import examples, measured
from trace_agents.backends import ScriptedBackend
from trace_agents.backends.base import SamplingParams
from trace_agents.cli import main
from trace_agents.recording import Plan, load_recording, make_meta, record
from trace_agents.recording.format import MEMBERS, chunk_path, read_chunk, subsample, write_chunk
from trace_agents.recording.recorder import hidden_states, task_order
from trace_agents.rollout import RolloutRunner, start_of
from trace_allocation.tree import turns_in

KWARGS = {"max_turns": 3, "suite_options": {"steps": 2, "digits": 2, "size": 200}}
SPEC = {"id": "trace/Calculator-v0", "split": "train", "kwargs": KWARGS}
PLAN = Plan(bare=3, prefix_rollouts=2, continuations=2, chunk=2, seed=0)


def make_env():
    return gym.make("trace/Calculator-v0", split="train", **KWARGS)


def run_record(tiny, out: Path, prompts: int, plan: Plan = PLAN, on_chunk=None) -> int:
    model, tokenizer = tiny
    env = make_env()
    meta = make_meta("tiny-qwen3", model, env, SPEC, SamplingParams(temperature=1.0, max_tokens=8),
                     "auto", plan)
    return asyncio.run(record(out, model, tokenizer, env, meta, prompts=prompts, batch=8,
                              on_chunk=on_chunk))


@pytest.fixture(scope="module")
def recorded(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "full"
    assert run_record(tiny, out, 4) == 4
    return out


def test_structure_and_counts(tiny, recorded):
    rec = load_recording(recorded)
    env = make_env()
    order = task_order(len(env.tasks), PLAN.seed)
    assert [p.index for p in rec.prompts] == [0, 1, 2, 3]
    assert [p.task_id for p in rec.prompts] == [env.tasks[int(order[i])].id for i in range(4)]
    assert rec.meta.tasks == len(env.tasks) and rec.meta.hidden_size == tiny[0].config.hidden_size
    rows = 0
    for p in rec.prompts:
        assert len(p.bare) == PLAN.bare
        # the random tiny model never answers: every rollout runs all 3 turns, so each of the
        # first two has prefixes at depths 1 and 2
        assert all(o.turns == 3 and o.status == "truncated" and o.reward == 0 for o in p.bare)
        assert [(x.rollout, x.depth) for x in p.prefixes] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        for x in p.prefixes:
            assert x.transcript.startswith(p.prompt) and turns_in(x.transcript) == x.depth
            assert x.tokens > p.prompt_tokens
            assert len(x.continuations) == PLAN.continuations
            assert all(1 <= c.turns <= 3 - x.depth and c.tokens <= 8 * c.turns
                       for c in x.continuations)
        deeper = {x.rollout: x.tokens for x in p.prefixes if x.depth == 2}
        assert all(x.tokens < deeper[x.rollout] for x in p.prefixes if x.depth == 1)
        rows += 1 + len(p.prefixes)
    assert rec.hidden.shape == (rows, 64) and rec.hidden.dtype == np.float16
    assert len({p.hidden_row for p in rec.prompts}) == 4


def test_hidden_states_are_the_policy_body_at_each_position(tiny, recorded):
    """The recorded prompt row is the body's state at the prompt's last token; padding in a batch
    of unequal rows changes nothing."""
    import torch

    model, tokenizer = tiny
    rec = load_recording(recorded)
    runner = RolloutRunner(ScriptedBackend(lambda *_: "", tokenizer), tokenizer=tokenizer)
    ids = [list(start_of(runner.new_tree(make_env(), p.task_id).root).prompt_ids)
           for p in rec.prompts]
    with torch.inference_mode():
        alone = model.base_model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0]
    np.testing.assert_allclose(rec.hidden[rec.prompts[0].hidden_row].astype(np.float32),
                               alone[-1].numpy(), atol=2e-3, rtol=2e-3)
    requests = [(ids[0], [3, len(ids[0]) - 1]), (ids[1][:40], [39])]
    batched, single = hidden_states(model, requests, 2), hidden_states(model, requests, 1)
    assert batched[0].shape == (2, 64) and batched[1].shape == (1, 64)
    np.testing.assert_allclose(batched[0].astype(np.float32), alone[[3, -1]].numpy(),
                               atol=2e-3, rtol=2e-3)
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b.astype(np.float32), s.astype(np.float32), atol=2e-3)


def test_same_seed_same_files_and_another_seed_differs(tiny, recorded, tmp_path):
    again = tmp_path / "again"
    run_record(tiny, again, 4)
    for name in ("meta.json", "chunk-00000.npz", "chunk-00001.npz"):
        assert (again / name).read_bytes() == (recorded / name).read_bytes()
    other = tmp_path / "other"
    run_record(tiny, other, 2, Plan(**{**PLAN.__dict__, "seed": 1}))
    assert load_recording(other).prompts != load_recording(recorded).prompts[:2]


def test_resume_after_interruption_writes_the_same_files(tiny, recorded, tmp_path):
    out = tmp_path / "stopped"

    def stop(k, records, seconds):
        raise KeyboardInterrupt  # killed right after the first chunk was written

    with pytest.raises(KeyboardInterrupt):
        run_record(tiny, out, 4, on_chunk=stop)
    assert [f.name for f in out.glob("chunk-*.npz")] == ["chunk-00000.npz"]
    assert not list(out.glob(".*tmp*"))
    assert run_record(tiny, out, 4) == 4
    for name in ("meta.json", "chunk-00000.npz", "chunk-00001.npz"):
        assert (out / name).read_bytes() == (recorded / name).read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        run_record(tiny, out, 4, Plan(**{**PLAN.__dict__, "continuations": 1}))


def test_subsample_is_a_valid_smaller_recording(recorded, tmp_path):
    rec = load_recording(recorded)
    small = subsample(rec, 2, seed=3)
    write_chunk(tmp_path / "small.npz", small)
    back = load_recording(tmp_path / "small.npz")
    assert len(back.prompts) == 2 and back.prompts == small.prompts
    for p in back.prompts:
        original = next(q for q in rec.prompts if q.index == p.index)
        assert [x.transcript for x in p.prefixes] == [x.transcript for x in original.prefixes]
        np.testing.assert_array_equal(back.hidden[p.hidden_row], rec.hidden[original.hidden_row])
        for x, y in zip(p.prefixes, original.prefixes):
            np.testing.assert_array_equal(back.hidden[x.hidden_row], rec.hidden[y.hidden_row])


@examples(150)
@given(data=st.data())
def test_loader_refuses_damaged_files(recorded, tmp_path_factory, data):
    good = chunk_path(recorded, 0).read_bytes()
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at: at + data.draw(st.integers(1, 64))]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=32))
        else:
            raw[at: at + 8] = bytes(len(raw[at: at + 8]))
        if not raw:
            break
    path = tmp_path_factory.mktemp("bad") / "chunk.npz"
    path.write_bytes(bytes(raw))
    with measured("recording load", max_seconds=10):
        try:
            rec = read_chunk(path)
        except ValueError as exc:
            assert str(exc)
        else:  # a mutation the CRCs cannot see (zip padding): the content is still the original
            assert bytes(raw) == good or rec.prompts == read_chunk(chunk_path(recorded, 0)).prompts


def _rezipped(source: Path, target: Path, **replace: bytes) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            out.writestr(name, replace.get(name.removesuffix(".npy"), archive.read(name)))
    return target


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_loader_refuses_hostile_contents(recorded, tmp_path):
    source = chunk_path(recorded, 0)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 64), np.float16))
    header["shape"] = (1 << 40, 64)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    claims_a_terabyte = buffer.getvalue() + bytes(128)
    records = json.loads(np.load(source)["records"].tobytes())
    records[0]["hidden_row"] = 999
    cases = {
        "shape": {"hidden": claims_a_terabyte},
        "objects": {"hidden": _npy(np.array([{"a": 1}], dtype=object))},
        "not json": {"records": _npy(np.frombuffer(b"[{", np.uint8))},
        "row": {"records": _npy(np.frombuffer(json.dumps(records).encode(), np.uint8))},
        "dtype": {"hidden": _npy(np.zeros((5, 64), np.float32))},
    }
    for label, replace in cases.items():
        with pytest.raises(ValueError):
            read_chunk(_rezipped(source, tmp_path / f"{label}.npz", **replace))
    extra = tmp_path / "extra.npz"
    _rezipped(source, extra)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("evil.npy", b"")
    with pytest.raises(ValueError, match="members"):
        read_chunk(extra)
    with pytest.raises(ValueError, match="bound"):
        read_chunk(source, max_bytes=100)
    with pytest.raises(ValueError, match="no recording"):
        load_recording(tmp_path / "missing.npz")
    assert sorted(np.load(source).files) == sorted(MEMBERS)


def test_cli_records_resumes_and_subsamples(tmp_path, capsys):
    config = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"
    out = tmp_path / "rec"
    args = ["record", "--config", str(config), "--out", str(out), "--prompts", "3", "--chunk", "2",
            "--prefix-rollouts", "1", "--continuations", "1", "--batch", "8", "--threads", "1",
            "--no-progress"]
    assert main([*args, "--bare", "2"]) == 0
    assert "chunk 1: prompts 2-3 written (4/4)" in capsys.readouterr().out
    assert len(load_recording(out).prompts) == 4
    assert main([*args, "--bare", "2", "--prompts", "8", "--max-seconds", "0"]) == 0
    assert "holds 4 prompts" in capsys.readouterr().out  # out of time before a new chunk
    assert main([*args, "--bare", "2"]) == 0  # nothing left to do
    assert "chunk" not in capsys.readouterr().out
    assert main([*args, "--bare", "3"]) == 2
    assert "other settings (bare)" in capsys.readouterr().err
    assert main(["record", "--from", str(out), "--sample", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert len(load_recording(tmp_path / "s.npz").prompts) == 2
    assert main(["record", "--out", str(out)]) == 2
