"""One command for TRACE on verl: ``python -m trace_agents.verl.main <overrides>``.

verl's own entry point (``verl.trainer.main_ppo``) with the TRACE config
(``trace_agents/verl/config/trace_trainer.yaml``: verl's ppo_trainer plus ``trainer.v1.trainer_mode
=trace``, the TRACE agent-loop manager and the ``trace`` block) and `TraceTaskRunner`, whose Ray
process has the ``trace`` trainer registered.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

AGENT_LOOP_YAML = Path(__file__).parent / "config" / "agent_loop.yaml"
"""Registers `TraceEnvAgentLoop` as ``trace_env`` in every agent-loop worker."""


@hydra.main(config_path="config", config_name="trace_trainer", version_base=None)
def main(config: DictConfig) -> None:
    from trace_agents.verl.trainer import TraceTaskRunner, trace_settings

    trace_settings(config)  # fail here, not inside a Ray actor, on a bad `trace` block
    agent = config.actor_rollout_ref.rollout.agent
    if not agent.agent_loop_config_path:
        agent.agent_loop_config_path = str(AGENT_LOOP_YAML)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config),
                    use_critic=need_critic(config))
    run_ppo(config, task_runner_class=TraceTaskRunner)


if __name__ == "__main__":
    main()
