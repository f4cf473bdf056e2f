import pytest

from trace_agents.train.metrics import MetricsLog, plot_metrics


def test_log_round_trip_and_truncate(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(4):
        log.append({"step": step, "allocator": "trace", "reward_mean": step / 4})
    assert [r["step"] for r in log.read()] == [0, 1, 2, 3]
    log.truncate_after(1)
    assert [r["step"] for r in log.read()] == [0, 1]


def test_corrupt_line_is_reported(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": \n')
    with pytest.raises(ValueError, match="m.jsonl:2: invalid JSON"):
        MetricsLog(path).read()


def test_plots_are_written(tmp_path):
    records = [
        {"step": s, "allocator": a, "reward_mean": 0.1 * s, "effective_ratio": 0.5, "mixed_trees": 3,
         "informative_share": 0.5, "cost_trajectory": 32.0, "cost_turns": 70.0, "predictor_brier": 0.2,
         "calibration": {"predicted": [0.2, 0.8], "observed": [0.3, 0.7]}}
        for s in range(3) for a in ("trace", "grpo")
    ]
    paths = plot_metrics(records, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["calibration.png", "cost_trajectory.png", "cost_turns.png", "effective_ratio.png",
                     "informative_share.png", "mixed_trees.png", "predictor_brier.png", "reward_mean.png"]
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
