"""End to end: the tiny random Qwen3 trains with TRACE and GRPO; a stopped run resumes exactly."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.parity_env import ENV_ID
from trace_agents.cli import main as cli
from trace_agents.train.config import TrainConfig
from trace_agents.train.loop import run

TIMING = {"seconds", "update_s", "plan_s", "fit_s", "tokens_per_s", "period_s", "state_probe_s", "state_share"}
REPO = Path(__file__).resolve().parents[2]


def config_dict(**changes) -> dict:
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
    return base


def config(**changes) -> TrainConfig:
    return TrainConfig.model_validate(config_dict(**changes))


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
    for name in ("mixed_trees", "effective_ratio", "cost_trajectory", "cost_turns"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_dapo_over_samples_and_trains_only_its_quota(tmp_path):
    """DAPO may spend up to dapo_multiple x the common budget; it trains on at most its quota of
    mixed groups and its record shows what it really spent, in both units."""
    cfg = config(steps=1, allocators=["grpo", "dapo"],
                 budget={"pool": 8, "roots": 4, "continuations_per_root": 0, "group_size": 2,
                         "m_min": 2, "m_max": 4, "dapo_multiple": 4.0})
    records = {r["allocator"]: r for r in run(cfg, tmp_path, progress=False)}
    grpo, dapo = records["grpo"], records["dapo"]
    common, quota = cfg.budget.total, int(cfg.budget.total) // cfg.budget.group_size
    assert grpo["cost_trajectory"] == common and grpo["prompts_opened"] == quota
    assert dapo["budget"] == 4 * common and dapo["cost_trajectory"] <= 4 * common
    assert dapo["trained_trees"] == min(quota, dapo["mixed_trees"])
    if dapo["mixed_trees"] < quota:  # it kept drawing: more than the common budget
        assert dapo["cost_trajectory"] > common
    assert dapo["cost_turns"] >= dapo["cost_trajectory"]  # every rollout has at least one turn


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


def bfloat16(lr: float, steps: int) -> TrainConfig:
    return config(steps=steps, allocators=["grpo"], model={"name": "tiny-qwen3", "dtype": "bfloat16"},
                  optim={"lr": lr, "micro_batch": 4, "grad_accum": 2})


def test_bfloat16_training_moves_float32_weights(tmp_path):
    """In bfloat16 an AdamW step of ~lr (2e-6) rounds away on almost every weight: training keeps
    float32 weights and runs its forwards in bfloat16."""
    from trace_agents.models import tiny_qwen3

    assert run(bfloat16(2e-6, steps=1), tmp_path, progress=False)[0]["samples"] > 0
    start, trained = tiny_qwen3()[0].state_dict(), weights(tmp_path, "grpo")
    assert all(v.dtype == torch.float32 for v in trained.values())
    layers = [k for k in trained if ".layers." in k and k.endswith("weight")]
    moved = sum(int((trained[k] != start[k]).sum()) for k in layers)
    assert moved / sum(trained[k].numel() for k in layers) > 0.5


def test_bfloat16_engine_copy_follows_updates_and_resume(tmp_path):
    """The engine samples from a bfloat16 copy that every update, and a resume, refreshes: a stale
    copy changes the resumed step's samples."""
    full = run(bfloat16(1e-2, steps=2), tmp_path / "full", progress=False)
    run(bfloat16(1e-2, steps=2), tmp_path / "split", stop_after=1, progress=False)
    resumed = run(bfloat16(1e-2, steps=2), tmp_path / "split", resume=True, progress=False)
    assert strip(resumed) == strip(full)


def test_cli_rejects_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 2\nbudget: {roots: 1}\n")
    assert cli(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "budget.roots" in capsys.readouterr().err


CLI = """
import sys
import tests.train.parity_env  # registers the test env in this process
from trace_agents.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_exactly(uninterrupted, tmp_path):
    out, full = uninterrupted
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config_dict()))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-c", CLI, "train", "--no-progress"]
    proc = subprocess.Popen(command + ["--config", str(cfg), "--out", str(run_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = run_dir / "checkpoint" / "meta.json"
    deadline = time.monotonic() + 300
    while not meta.exists():  # the first step is saved: kill the run while step 1 is under way
        assert proc.poll() is None, "the training run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert json.loads(meta.read_text())["step"] == 0
    subprocess.run(command + ["--resume", str(run_dir)], cwd=REPO, check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert strip(resumed) == strip(json.loads(json.dumps(full)))
    for name in ("trace", "grpo"):
        a, b = weights(out, name), weights(run_dir, name)
        assert all(torch.equal(a[k], b[k]) for k in a)


PREDICTOR_ALLOCATORS = ["trace", "pcl"]
"""The allocators that read the predictor; the others are run once, with the default kind."""


@pytest.mark.parametrize("kind", ["lexical", "encoder", "beta", "blend", "policy"])
def test_every_predictor_kind_and_allocator_resumes_exactly(kind, tmp_path):
    """Every documented predictor kind, under every allocator that reads it, goes through a
    checkpoint and a resume, and the resumed run plans exactly as the uninterrupted one
    (``encoder`` crashed at its first checkpoint: it had no state to save; random branching drew
    its prefixes from one stream shared by prompts that finish in any order)."""
    from typing import get_args

    from trace_agents.train.config import AllocatorName

    allocators = list(get_args(AllocatorName)) if kind == "lexical" else PREDICTOR_ALLOCATORS
    cfg = config(steps=2, allocators=allocators, predictor={"kind": kind},
                 sampling={"temperature": 1.0, "max_tokens": 6},
                 budget={"pool": 4, "roots": 4, "continuations_per_root": 1, "group_size": 2,
                         "m_min": 2, "m_max": 2})
    full = run(cfg, tmp_path / "full", progress=False)
    run(cfg, tmp_path / "split", stop_after=1, progress=False)
    resumed = run(cfg, tmp_path / "split", resume=True, progress=False)
    assert strip(resumed) == strip(full)
