"""A recording as replay data (`trace_agents.recording.replay`), the shipped recordings, and
`trace-rl simulate --world replay`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trace_agents.cli import main
from trace_agents.recording import Meta, Outcome, Prefix, PromptRecord, Recording
from trace_agents.recording.replay import load_replay, replay_prompts
from trace_allocation.tree import TURN_MARK

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "data" / "replay"


def _outcome(reward, turns=2):
    return Outcome(reward=reward, status="failed" if reward is None else "terminated", turns=turns, tokens=10)


def _recording(records: list[tuple[str, list, list[tuple[int, str, list]]]]) -> Recording:
    """Prompts (text, bare rewards, prefixes as (rollout, turn text, continuation rewards))."""
    meta = Meta(model="m", weights="w", env={"id": "e", "split": "train", "kwargs": {}}, sampling={}, dialect="react",
                seed=0, bare=3, prefix_rollouts=2, continuations=2, chunk=8, tasks=8, hidden_size=2)
    prompts, row = [], 0
    for index, (text, bare, prefixes) in enumerate(records):
        own_row, row = row, row + 1
        recorded = []
        for rollout, turn, rewards in prefixes:
            recorded.append(Prefix(rollout=rollout, depth=1, transcript=f"{text}{TURN_MARK}{turn}", tokens=5,
                                   hidden_row=row, continuations=[_outcome(r, 1) for r in rewards]))
            row += 1
        prompts.append(PromptRecord(index=index, task_id=str(index), prompt=text, prompt_tokens=3, hidden_row=own_row,
                                    bare=[_outcome(r) for r in bare], prefixes=recorded))
    return Recording(meta, prompts, np.zeros((row, 2), dtype=np.float16))


def test_failed_episodes_are_dropped_and_equal_transcripts_pooled():
    (prompt,) = replay_prompts(_recording([
        ("p", [1.0, None, 0.0], [(0, "a", [1.0, 0.0]), (1, "a", [None, 1.0])]),
    ]))
    assert prompt.rewards.tolist() == [1.0, 0.0]  # the failed rollout 1 is gone, and its path with it
    (shared,) = prompt.prefixes
    assert shared.text == f"p{TURN_MARK}a" and sorted(shared.rewards.tolist()) == [0.0, 1.0, 1.0]
    assert prompt.paths == ((0,), ())


def test_repeated_prompts_merge_and_prompts_without_an_ended_rollout_go():
    prompts = replay_prompts(_recording([
        ("p", [1.0, 1.0, 0.0], [(0, "a", [1.0, 1.0])]),
        ("q", [None, None, None], []),
        ("p", [0.0, 0.0, 0.0], [(1, "b", [0.0, 0.0])]),
    ]))
    (p,) = prompts
    assert p.rewards.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [x.text.split(TURN_MARK)[1] for x in p.prefixes] == ["a", "b"]
    assert p.paths == ((0,), (), (), (), (1,), ())
    with pytest.raises(ValueError, match="no ended bare rollout"):
        replay_prompts(_recording([("q", [None, None, None], [])]))


def test_the_shipped_recordings_load_as_replay_data():
    for name in ("warm", "trained"):
        path = SHIPPED / f"smollm2-calculator-{name}.npz"
        assert path.stat().st_size < 1_000_000
        prompts = load_replay(path)
        assert len(prompts) == 96
        rates = np.array([p.rewards.mean() for p in prompts])
        assert 0.2 < rates.mean() < 0.35 and 0.3 < np.mean((rates > 0) & (rates < 1)) < 0.5
        assert sum(bool(path) for p in prompts for path in p.paths) == 192  # 2 rollouts a prompt
    assert "trace-rl record --from" in (SHIPPED / "README.md").read_text()


def test_cli_replays_a_recording(capsys, tmp_path):
    data = str(SHIPPED / "smollm2-calculator-warm.npz")
    assert main(["simulate", "--world", "replay", "--data", data, "--quick", "--experiments", "a", "--json",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scenario"]["n_prompts"] == 96 and result["scenario"]["roots"] == 8
    assert result["cost"]["trace"]["trajectory"] <= result["scenario"]["budget"]
    assert set(result["predictor_scores"]) >= {"trace", "pcl", "trace_oracle"}
    assert result["predictor_scores"]["trace_oracle"]["spearman_pooled"] in (None, pytest.approx(1.0))


@pytest.mark.parametrize("argv, message", [
    (["--world", "replay"], "go together"),
    (["--data", "x.npz"], "go together"),
    (["--world", "replay", "--data", "missing.npz"], "no recording"),
    (["--world", "replay", "--data", str(SHIPPED / "README.md")], "not a valid recording"),
    (["--world", "replay", "--data", str(SHIPPED / "smollm2-calculator-warm.npz"), "--experiments", "ad"],
     "a, b and c"),
])
def test_cli_refuses_bad_replay_flags(argv, message, capsys):
    assert main(["simulate", "--quick", "--no-progress", *argv]) != 0
    assert message in capsys.readouterr().err
