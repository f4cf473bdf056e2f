#!/usr/bin/env bash
# TRACE on verl 0.9 (V1 trainer): one command. Qwen3-8B, SGLang (ENGINE=vllm for vLLM), 8 GPUs per
# node; multi-node: start a Ray cluster and set NNODES (verl places its workers across the nodes).
# Cost per step: trace.budget.roots x (1 + continuations_per_root x continuation_cost) trajectory
# units = 256 x 2 = 512 here, the same as run_grpo.sh's PROMPTS x rollout.n = 128 x 4. The actor
# sees up to 768 rows (256 roots + 512 half-cost continuations) against GRPO's 512; both arms take
# one optimizer step per step (ppo_mini_batch_size x rollout.n = all the step's rows), so the arms
# differ in allocation, not in update count. Compare them on cost_tokens too (trace/cost, verl's
# response-length metrics): a trajectory-equivalent is not a token.
# Run from the trace-rl repository root, with trace-rl and verl installed on every node.
set -euo pipefail
source "$(dirname "$0")/common.sh"

python -m trace_agents.verl.main "${COMMON[@]}" \
    trainer.experiment_name=calculator-trace-verl \
    trace.allocator=trace \
    trace.budget.roots=$((PROMPTS * 2)) \
    trace.budget.continuations_per_root=2 \
    trace.budget.m_min=2 trace.budget.m_max=8 \
    actor_rollout_ref.rollout.n=3 \
    actor_rollout_ref.actor.ppo_mini_batch_size=$((PROMPTS * 2)) \
    "$@"
