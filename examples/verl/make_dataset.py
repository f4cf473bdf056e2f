"""Write a verl RL dataset (parquet) whose rows play a trace-rl env through TraceEnvAgentLoop.

    python examples/verl/make_dataset.py --env trace/Calculator-v0 \
        --env-kwargs '{"suite_options": {"size": 1000, "seed": 0}, "max_turns": 8}' --out ~/data/trace_calc

Each row names the agent loop (`agent_name`) and, in `extra_info`, the env, its kwargs (a JSON
string, so parquet keeps it verbatim) and the task id. `prompt` holds the task as a user message:
verl uses it for length filtering and logging; the agent loop builds the conversation from the env.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import pyarrow as pa
import pyarrow.parquet as pq

import trace_envs  # noqa: F401  (registers trace/* envs)
from trace_envs import ToolEnv


def dataset_rows(env_id: str, env_kwargs: dict[str, Any], split: str) -> list[dict[str, Any]]:
    env = gym.make(env_id, **env_kwargs).unwrapped
    assert isinstance(env, ToolEnv), f"{env_id} is not a trace_envs.ToolEnv"
    tasks = env.tasks.split(split) if split != "all" else env.tasks
    return [
        {
            "data_source": f"trace-rl/{env_id}",
            "agent_name": "trace_env",
            "prompt": [{"role": "user", "content": task.prompt}],
            "ability": "tool-use",
            "reward_model": {"style": "rule", "ground_truth": str(task.answer)},
            "extra_info": {"env_id": env_id, "env_kwargs": json.dumps(env_kwargs, sort_keys=True),
                           "task_id": task.id, "index": i, "split": split},
        }
        for i, task in enumerate(tasks)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="trace/Calculator-v0")
    parser.add_argument("--env-kwargs", default="{}", help="JSON object passed to gym.make")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.expanduser().mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = dataset_rows(args.env, json.loads(args.env_kwargs), split)
        pq.write_table(pa.Table.from_pylist(rows), args.out.expanduser() / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows -> {args.out / f'{split}.parquet'}")


if __name__ == "__main__":
    main()
