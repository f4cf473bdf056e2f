# Shared by run_trace.sh and run_grpo.sh: the dataset and the verl settings both arms use, so the
# comparison differs only in allocation. Override any of these in the environment.
DATA=${DATA:-$HOME/data/trace_calc}
MODEL=${MODEL:-Qwen/Qwen3-8B}
ENGINE=${ENGINE:-sglang}            # or vllm
NNODES=${NNODES:-1}
GPUS=${GPUS:-8}
PROMPTS=${PROMPTS:-128}            # data.train_batch_size: prompts per step

if [ ! -f "$DATA/train.parquet" ]; then
    python examples/verl/make_dataset.py --env trace/Calculator-v0 \
        --env-kwargs '{"suite_options": {"size": 4000, "seed": 0}, "max_turns": 8}' --out "$DATA"
fi

# An absolute path: Ray workers on other nodes do not share this working directory.
AGENT_LOOP_YAML=$(python -c "import pathlib, trace_agents; print(pathlib.Path(trace_agents.__file__).parent / 'verl/config/agent_loop.yaml')")

COMMON=(
    data.train_files="$DATA/train.parquet"
    data.val_files="$DATA/test.parquet"
    data.train_batch_size="$PROMPTS"
    data.max_prompt_length=2048
    data.max_response_length=4096
    data.return_raw_chat=True
    +data.apply_chat_template_kwargs.enable_thinking=False
    actor_rollout_ref.model.path="$MODEL"
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.rollout.name="$ENGINE"
    actor_rollout_ref.rollout.mode=async
    actor_rollout_ref.rollout.prompt_length=2048
    actor_rollout_ref.rollout.response_length=4096
    actor_rollout_ref.rollout.tensor_model_parallel_size=2
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4
    actor_rollout_ref.rollout.agent.num_workers=8
    actor_rollout_ref.rollout.agent.default_agent_loop=trace_env
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$AGENT_LOOP_YAML"
    algorithm.use_kl_in_reward=False
    trainer.project_name=trace-rl
    trainer.logger='["console"]'
    trainer.n_gpus_per_node="$GPUS"
    trainer.nnodes="$NNODES"
    trainer.save_freq=10               # checkpoints on: TRACE's predictor is saved with them
    trainer.test_freq=10
    trainer.total_epochs=1
)
