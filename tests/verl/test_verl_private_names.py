"""The private verl names the TRACE adapter relies on (docs/verl.md, "Private verl names") are
pinned: a verl release that changes one fails here by name, not later inside a Ray actor.

Sources we copy or whose order we rely on are fingerprinted (sha256 of the source text); the others
must keep their signatures. On a failure: read the new source, adapt `trace_agents.verl.trainer`,
then update the pin."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from verl.trainer.ppo.v1 import AgentLoopManagerTQ, AgentLoopWorkerTQ
from verl.trainer.ppo.v1.agent_loop_tq import apply_greedy_sampling_params
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

WORKER = AgentLoopWorkerTQ.__ray_actor_class__
MANAGER = AgentLoopManagerTQ

FINGERPRINTS = {  # copied (_run_prompt), or relied on for its order (fit, step) / what it computes
    "AgentLoopWorkerTQ._run_prompt": (WORKER._run_prompt, "3d9bca6b0ea5fe25"),
    "PPOTrainer.fit": (PPOTrainer.fit, "7d83a81c2e62979f"),
    "PPOTrainer._compute_advantage": (PPOTrainer._compute_advantage, "2a4a2aa4a475b228"),
    "apply_greedy_sampling_params": (apply_greedy_sampling_params, "a367a538e74c95e0"),
}
SIGNATURES = {  # overridden or called with these parameters
    "PPOTrainer.step": (PPOTrainer.step,
                        "(self, metrics: dict, timing_raw: dict) -> transfer_queue.metadata.KVBatchMeta"),
    "PPOTrainer._save_checkpoint": (PPOTrainer._save_checkpoint, "(self)"),
    "PPOTrainer._load_checkpoint": (PPOTrainer._load_checkpoint, "(self)"),
    "PPOTrainer._next_train_batch": (PPOTrainer._next_train_batch,
                                     "(self, num_prompts: int | None = None) -> tensordict._td.TensorDict"),
    "PPOTrainer._submit_batch_to_rollout": (PPOTrainer._submit_batch_to_rollout,
                                            "(self, batch: tensordict._td.TensorDict) -> int"),
    "PPOTrainer._build_replay_buffer": (PPOTrainer._build_replay_buffer,
                                        "(self) -> verl.trainer.ppo.v1.replay_buffer.ReplayBuffer"),
    "ReplayBuffer._materialize_batch": (
        ReplayBuffer._materialize_batch,
        "(self, partition_id: str, selected_prompt_uids: list[str], partition_snapshot: dict[str, dict]) "
        "-> transfer_queue.metadata.KVBatchMeta"),
    "ReplayBuffer._evict_terminal_groups": (
        ReplayBuffer._evict_terminal_groups,
        "(self, global_steps: int, partition_id: str, "
        "eviction_reasons: tuple[set[str], set[str], set[str], collections.Counter]) "
        "-> tuple[set[str], int, int, dict]"),
    "AgentLoopWorkerTQ._run_agent_loop": (
        WORKER._run_agent_loop,
        "(self, sampling_params: dict[str, typing.Any], trajectory: dict[str, typing.Any], *, agent_name: str, "
        "trace: bool = True, _ray_trace_ctx=None, **kwargs) "
        "-> verl.experimental.agent_loop.agent_loop._InternalAgentLoopOutput"),
    "AgentLoopWorkerTQ._agent_loop_postprocess": (
        WORKER._agent_loop_postprocess,
        "(self, output: verl.experimental.agent_loop.agent_loop.AgentLoopOutput "
        "| list[verl.experimental.agent_loop.agent_loop.AgentLoopOutput], validate, *, _ray_trace_ctx=None, "
        "**kwargs) -> None"),
}


def fingerprint(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_the_verl_sources_the_adapter_copies_or_orders_on_are_unchanged(name):
    fn, pinned = FINGERPRINTS[name]
    assert fingerprint(fn) == pinned, f"verl changed {name}: re-read it and adapt trace_agents.verl.trainer"


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_private_verl_methods_the_adapter_overrides_or_calls_keep_their_signatures(name):
    fn, pinned = SIGNATURES[name]
    assert str(inspect.signature(fn)) == pinned, f"verl changed the signature of {name}"


def test_the_attributes_and_row_keys_the_adapter_uses_are_still_there():
    manager = inspect.getsource(MANAGER)
    assert "agent_loop_workers_class" in manager and "self.agent_loop_workers" in manager
    run_prompt = inspect.getsource(WORKER._run_prompt)
    assert '"__rollout_n__"' in run_prompt and '"__do_sample__"' in run_prompt
    assert "self.trainer_mode" in inspect.getsource(PPOTrainer.__init__)
    assert "custom_sampler" in inspect.getsource(PPOTrainer._build_replay_buffer)
    assert "self.partitions" in inspect.getsource(ReplayBuffer.__init__)
