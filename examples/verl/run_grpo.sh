#!/usr/bin/env bash
# GRPO on verl with trace-rl envs played by TraceEnvAgentLoop (flat groups of rollout.n).
# For TRACE's per-prompt counts and continuations, drive TraceSampler from a custom trainer step
# (docs/verl.md, "TRACE on verl"). Run from the trace-rl repository root; 8 GPUs on one node here,
# set trainer.nnodes / n_gpus_per_node for more (verl starts Ray workers across the nodes).
set -euo pipefail

DATA=${DATA:-$HOME/data/trace_calc}
MODEL=${MODEL:-Qwen/Qwen3-1.7B}

python examples/verl/make_dataset.py --env trace/Calculator-v0 \
    --env-kwargs '{"suite_options": {"size": 2000, "seed": 0}, "max_turns": 8}' --out "$DATA"

python -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/test.parquet" \
    data.train_batch_size=128 \
    data.max_prompt_length=2048 \
    data.max_response_length=4096 \
    data.return_raw_chat=True \
    +data.apply_chat_template_kwargs.enable_thinking=False \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.mode=async \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.prompt_length=2048 \
    actor_rollout_ref.rollout.response_length=4096 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.agent.agent_loop_config_path=examples/verl/agent_loop.yaml \
    actor_rollout_ref.rollout.agent.default_agent_loop=trace_env \
    algorithm.use_kl_in_reward=False \
    trainer.project_name=trace-rl \
    trainer.experiment_name=calculator-grpo-verl \
    trainer.logger='["console"]' \
    trainer.n_gpus_per_node=8 \
    trainer.nnodes=1 \
    trainer.total_epochs=1 "$@"
