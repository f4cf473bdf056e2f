"""What the TRACE trainer promises inside verl's own control flow: the real ``PPOTrainer.fit``
(its order: ``step``, then the checkpoint, then ``on_step_end``), the real config, the real worker.

verl's GPU parts are stood in for: its ``step`` pipeline (rollouts, log-probs, actor update: here a
step that grows a known tree per global step, which `TraceTrainer.step` wraps as it wraps verl's),
its actor/critic checkpointing (the step marker written last, as verl does), weight sync, metrics
and TransferQueue clean-up.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
from omegaconf import open_dict
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.transferqueue_utils import KVBatchMeta

from trace_agents.verl.main import AGENT_LOOP_YAML
from trace_agents.verl.plans import PLAN_KEY, ContinuationPools
from trace_agents.verl.trainer import CONTINUATIONS_KEY, TraceAgentLoopWorker, TraceTrainer, trace_settings
from trace_allocation import RolloutTree

TEXTS = ["What is 2+3?", "What is 17*23?", "Add 4 and 9.", "What is 100-58?"]


def config(tmp_path: Path, *overrides: str):
    with hydra.initialize_config_dir(config_dir=str(AGENT_LOOP_YAML.parent), version_base=None):
        cfg = hydra.compose("trace_trainer", overrides=list(overrides))
    with open_dict(cfg):
        cfg.trainer.default_local_dir = str(tmp_path)
        cfg.trainer.resume_mode = "auto"
        cfg.trainer.save_freq = 1
        cfg.trainer.val_before_train = False
        cfg.trainer.test_freq = -1
        cfg.trainer.logger = ["console"]
    return cfg


def grown_step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
    """verl's step, as far as TRACE sees it: this global step's trees, observed."""
    self.sampler.reset()
    rng = np.random.default_rng(self.global_steps)
    for i, text in enumerate(TEXTS):
        tree = self.sampler.trees[f"uid{i}"] = RolloutTree(f"uid{i}", text)
        for r in rng.random(4) < (i + 1) / 5:
            tree.root.add_child(f"{text} turn").add_child(f"{text} turn answer").finish(float(r))
    return KVBatchMeta(partition_id="train", keys=[], tags=[])


@pytest.fixture
def verl_without_gpus(monkeypatch):
    def save(self) -> None:
        (Path(self.config.trainer.default_local_dir) / "latest_checkpointed_iteration.txt").write_text(
            str(self.global_steps))

    def load(self) -> None:
        latest = Path(self.config.trainer.default_local_dir) / "latest_checkpointed_iteration.txt"
        self.global_steps = int(latest.read_text()) if latest.is_file() else 0

    monkeypatch.setattr(PPOTrainer, "_save_checkpoint", save)
    monkeypatch.setattr(PPOTrainer, "_load_checkpoint", load)
    monkeypatch.setattr(PPOTrainer, "step", grown_step)
    monkeypatch.setattr(PPOTrainer, "_compute_metrics", lambda self, *a, **k: None)
    monkeypatch.setattr(trainer_base.tq, "kv_clear", lambda **_: None)


def fit(tmp_path: Path, total_steps: int) -> TraceTrainer:
    """Run verl's own ``fit()`` up to ``total_steps``, resuming from ``tmp_path`` if it holds a run."""
    trainer = TraceTrainer(config(tmp_path))
    trainer._load_checkpoint()
    trainer.total_training_steps, trainer.steps_per_epoch = total_steps, 100
    trainer.checkpoint_manager = SimpleNamespace(update_weights=lambda step: None, sleep_replicas=lambda: None)
    trainer._dump_executor, trainer._dump_futures = ThreadPoolExecutor(1), []
    trainer.fit(agent_loop_manager=None)
    return trainer


def test_a_resumed_run_plans_with_the_predictor_of_the_uninterrupted_run(tmp_path, verl_without_gpus):
    whole = fit(tmp_path / "whole", total_steps=2)
    fit(tmp_path / "stopped", total_steps=1)
    resumed = fit(tmp_path / "stopped", total_steps=2)  # step 2 after a restart
    expected = whole.sampler.allocator.predictor.predict(TEXTS)
    np.testing.assert_allclose(resumed.sampler.allocator.predictor.predict(TEXTS), expected)
    assert not np.allclose(expected, 0.5)  # both steps' refits happened


@pytest.mark.parametrize("override, refused", [
    ("algorithm.adv_estimator=gae", "adv_estimator=gae"),
    ("algorithm.use_kl_in_reward=true", "use_kl_in_reward"),
    ("algorithm.norm_adv_by_std_in_grpo=false", "norm_adv_by_std_in_grpo"),
    ("trace.allocator=dapo", "dapo"),
])
def test_settings_the_trainer_would_silently_drop_are_refused_before_ray_starts(tmp_path, override, refused):
    """``trace_agents.verl.main`` calls `trace_settings` before ``run_ppo`` starts Ray."""
    trace_settings(config(tmp_path))  # the shipped config passes
    with pytest.raises(ValueError, match=refused):
        trace_settings(config(tmp_path, override))


class LocalPools:
    """A `PlanPools` actor handle's call shape (``await pools.take.remote(plan, uid, n)``) over the
    real pools."""

    def __init__(self) -> None:
        self.pools = ContinuationPools()
        for name in ("begin", "take", "give"):
            setattr(self, name, SimpleNamespace(remote=self._remote(getattr(self.pools, name))))

    @staticmethod
    def _remote(method):
        async def call(*args):
            return method(*args)
        return call


def test_a_prompt_verl_marks_greedy_is_sampled_greedily(monkeypatch):
    """verl's ``__do_sample__`` column (greedy rows) reaches the sessions' sampling parameters."""
    worker = object.__new__(TraceAgentLoopWorker)
    worker.allocator = SimpleNamespace(continuations_per_root=2)
    worker.pools = LocalPools()
    worker.config = SimpleNamespace(actor_rollout_ref=SimpleNamespace(rollout=SimpleNamespace(n=1)))
    seen: list[dict] = []

    async def run_agent_loop(params, **_):
        seen.append(dict(params))
        raise RuntimeError("no engine here")  # the sessions' outcome does not matter

    async def put(**_):
        return None

    monkeypatch.setattr(worker, "_run_agent_loop", run_agent_loop, raising=False)
    monkeypatch.setattr("trace_agents.verl.trainer.tq.async_kv_put", put)
    for plan, do_sample in ((0, True), (3, False)):
        prompt = {"uid": "u", "__rollout_n__": 1, CONTINUATIONS_KEY: 2, "__do_sample__": do_sample, PLAN_KEY: plan}
        asyncio.run(worker._run_prompt(prompt, {"temperature": 1.0, "top_p": 0.9}, {"validate": False}))
    assert seen[0]["temperature"] == 1.0 and seen[1]["temperature"] == 0
    # each prompt's sessions raised: its Stage 2 share (2) went to its own plan's pool
    assert worker.pools.pools.nets == {0: {"u": 2.0}, 3: {"u": 2.0}}


def test_a_re_issued_prompt_replaces_its_earlier_attempts_share_in_its_plans_pool(monkeypatch):
    """verl re-issues a resumed run's in-flight prompts: the real worker's second attempt of a
    prompt withdraws what the first gave its plan's pool, so a share is never counted twice."""
    worker = object.__new__(TraceAgentLoopWorker)
    worker.allocator = SimpleNamespace(continuations_per_root=2)
    worker.pools = LocalPools()
    worker.config = SimpleNamespace(actor_rollout_ref=SimpleNamespace(rollout=SimpleNamespace(n=1)))

    async def run_agent_loop(params, **_):
        raise RuntimeError("no engine here")  # every session fails: the prompt gives its whole share

    async def put(**_):
        return None

    monkeypatch.setattr(worker, "_run_agent_loop", run_agent_loop, raising=False)
    monkeypatch.setattr("trace_agents.verl.trainer.tq.async_kv_put", put)
    for uid in ("a", "b", "a"):  # "a" again: re-issued after a resume
        prompt = {"uid": uid, "__rollout_n__": 1, CONTINUATIONS_KEY: 2, PLAN_KEY: 0}
        asyncio.run(worker._run_prompt(prompt, {"temperature": 1.0}, {"validate": False}))
    assert worker.pools.pools.nets == {0: {"a": 2.0, "b": 2.0}} and worker.pools.pools.left(0) == 4.0
