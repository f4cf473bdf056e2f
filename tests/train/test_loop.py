"""End to end: the tiny random Qwen3 trains with TRACE and GRPO; a stopped run resumes exactly."""

import json

import pytest
import torch

from trace_envs import Grade, Task, TaskSuite, ToolEnv, register_env, tool
from trace_agents.cli import main as cli
from trace_agents.train.config import TrainConfig
from trace_agents.train.loop import run

TIMING = {"seconds", "update_s", "plan_roots_s", "tokens_per_s"}


def parity(response: str, task: Task) -> Grade:
    ok = len(response) % 2 == 0
    return Grade(float(ok), float(ok))


class ParityEnv(ToolEnv):
    """Two turns; the last action is graded by the parity of its length, so even a random model
    gets mixed outcomes and every part of the pipeline has something to learn from."""

    def __init__(self, split: str = "all", max_turns: int = 2):
        tasks = TaskSuite("parity", [Task(f"p{i}", f"Task {i}: say anything.", None, parity)
                                     for i in range(12)])
        super().__init__(tasks.split(split), max_turns=max_turns)

    @tool
    def noop(self) -> str:
        """Do nothing."""
        return "ok"

    def step(self, action):
        final = self.turn + 1 >= self.max_turns
        wrapped = f"<answer>{action}</answer>" if final else '<tool_call>{"name": "noop"}</tool_call>'
        return super().step(wrapped)


ENV_ID = register_env("ParityTest", ParityEnv)


def config(**changes) -> TrainConfig:
    base = {
        "seed": 1, "steps": 2, "allocators": ["trace", "grpo"],
        "model": {"name": "tiny-qwen3"},
        "env": {"id": ENV_ID},
        "sampling": {"temperature": 1.0, "max_tokens": 12},
        "budget": {"pool": 8, "roots": 8, "continuations_per_root": 2, "group_size": 4,
                   "m_min": 2, "m_max": 4},
        "optim": {"lr": 1e-3, "micro_batch": 4, "grad_accum": 2, "ppo_epochs": 2},
    }
    base.update(changes)
    return TrainConfig.model_validate(base)


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def weights(run_dir, name):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoint" / f"model-{name}.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, run(config(), out, progress=False)


def test_training_runs_and_logs(uninterrupted):
    out, records = uninterrupted
    assert [(r["step"], r["allocator"]) for r in records] == [
        (0, "trace"), (0, "grpo"), (1, "trace"), (1, "grpo")]
    budget = config().budget.total
    for r in records:
        assert 0 <= r["effective_ratio"] <= 1 and r["cost"] <= budget + 1e-9
        assert r["weight_sync"] == "in-process"
    trace = [r for r in records if r["allocator"] == "trace"]
    assert any(r["continuations"] > 0 for r in trace), "TRACE never branched"
    assert any(r["samples"] > 0 and r["trained_tokens"] > 0 for r in records), "nothing trained"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 0, 1, 1]
    for name in ("reward_mean", "effective_ratio", "cost"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_training_changes_the_policy(uninterrupted):
    from trace_agents.models import tiny_qwen3

    out, _ = uninterrupted
    start = tiny_qwen3()[0].state_dict()
    trained = weights(out, "trace")
    assert any(not torch.equal(trained[k], start[k]) for k in trained)


def test_resume_is_exact(uninterrupted, tmp_path):
    out, full = uninterrupted
    first = run(config(), tmp_path, stop_after=1, progress=False)
    assert [r["step"] for r in first] == [0, 0]
    with (tmp_path / "metrics.jsonl").open("a") as fh:  # a step that ran but was never saved
        fh.write(json.dumps({"step": 1, "allocator": "trace", "effective_ratio": 0}) + "\n")
    resumed = run(config(), tmp_path, resume=True, progress=False)
    assert strip(resumed) == strip(full)
    for name in ("trace", "grpo"):
        a, b = weights(out, name), weights(tmp_path, name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_rejects_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 2\nbudget: {roots: 1}\n")
    assert cli(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "budget.roots" in capsys.readouterr().out
