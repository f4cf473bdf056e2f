"""TensorBoard and W&B (offline) sinks beside metrics.jsonl, read back from what they wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from trace_agents.train.config import TrackingConfig
from trace_agents.train.tracking import TensorBoardSink, WandbSink, scalars

pytest.importorskip("tensorboard")


def records(step: int, scale: float = 1.0) -> list[dict]:
    return [{"step": step, "allocator": name, "reward_mean": scale * (step + i) / 10, "cost": 12.0,
             "effective_ratio": 0.5, "calibration": {"brier": 0.2, "predicted": [0.1, 0.9]},
             "predictor_brier": None, "note": "text is not a scalar"}
            for i, name in enumerate(["trace", "grpo"])]


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_scalars_flatten_numbers_and_drop_the_rest() -> None:
    assert scalars(records(0)[0]) == {"reward_mean": 0.0, "cost": 12.0, "effective_ratio": 0.5,
                                      "calibration/brier": 0.2}


def test_tensorboard_gets_every_record_and_a_resume_replaces_later_steps(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    for step in range(3):
        for r in records(step):
            sink.log(r)
    sink.close()
    got = read_scalars(tmp_path)
    assert got["grpo/reward_mean"] == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3})
    assert got["trace/calibration/brier"] == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2})
    resumed = TensorBoardSink(tmp_path, first_step=1)  # the checkpoint was after step 0
    for r in records(1, scale=10):
        resumed.log(r)
    resumed.close()
    assert read_scalars(tmp_path)["grpo/reward_mean"] == pytest.approx({0: 0.1, 1: 2.0})


def test_wandb_offline_run_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = TrackingConfig(sinks=["wandb"], project="tests")
    sink = WandbSink(tmp_path, cfg, {"seed": 1}, resume=False)
    for r in records(0) + records(1):
        sink.log(r)
    summary = dict(sink.run.summary)
    run_id = sink.run.id
    sink.close()
    assert summary["grpo/reward_mean"] == pytest.approx(0.2) and summary["step"] == 1
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and list(runs[0].glob("*.wandb")), "no offline W&B run written"
    again = WandbSink(tmp_path, cfg, {"seed": 1}, resume=True)
    assert again.run.id == run_id
    again.close()


def test_a_training_run_writes_its_records_to_tensorboard(tmp_path: Path) -> None:
    from tests.train.test_loop import config
    from trace_agents.train.loop import run

    cfg = config(steps=1, allocators=["grpo"], tracking={"sinks": ["tensorboard"]},
                 budget={"pool": 4, "roots": 4, "continuations_per_root": 0, "group_size": 2, "m_min": 2,
                         "m_max": 2},
                 optim={"lr": 1e-3, "micro_batch": 4, "ppo_epochs": 1})
    [record] = run(cfg, tmp_path, progress=False)
    got = read_scalars(tmp_path / "tensorboard")
    assert got["grpo/reward_mean"] == pytest.approx({0: record["reward_mean"]})
    assert got["grpo/cost"] == pytest.approx({0: record["cost"]})
