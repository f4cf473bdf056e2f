#!/usr/bin/env bash
# The GRPO baseline at TRACE's cost: verl's own V1 trainer (trainer_mode=sync, adv_estimator=grpo)
# with trace-rl envs played by TraceEnvAgentLoop, flat groups of rollout.n. Same settings as
# run_trace.sh (examples/verl/common.sh); PROMPTS x 4 = 512 trajectories per step.
set -euo pipefail
source "$(dirname "$0")/common.sh"

python -m verl.trainer.main_ppo "${COMMON[@]}" \
    trainer.experiment_name=calculator-grpo-verl \
    algorithm.adv_estimator=grpo \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.actor.ppo_mini_batch_size="$PROMPTS" \
    "$@"
