"""`trace-rl demo`: a scripted agent plays calculator episodes and branches them with fork().

Runs offline in about a second. Each episode: the agent calls the calculator on the problem,
then the env is forked at that turn into several branches; in each branch the agent answers,
slipping by one with probability ``--slip``. The tree printed per task shows which branches
succeeded: mixed trees are the ones that carry a learning signal.
"""

from __future__ import annotations

import argparse
import json
import random

import gymnasium as gym
from rich.console import Console
from rich.tree import Tree

import trace_envs  # noqa: F401  (registers the envs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="scripted agent + env.fork() on the calculator suite",
                              description=__doc__)
    p.add_argument("--tasks", type=int, default=4, help="episodes to play")
    p.add_argument("--branches", type=int, default=4, help="forks per episode after turn 1")
    p.add_argument("--slip", type=float, default=0.4, help="chance a branch answers wrongly")
    p.add_argument("--seed", type=int, default=0, help="seed of the tasks and the slips")
    p.set_defaults(run=run)


def _call(expression: str) -> str:
    payload = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    return f"I'll compute it. <tool_call>{payload}</tool_call>"


def run(args: argparse.Namespace) -> int:
    console, rng = Console(), random.Random(args.seed)
    env = gym.make("trace/Calculator-v0", suite_options={"size": 200, "seed": args.seed})
    mixed = 0
    for episode in range(args.tasks):
        prompt, info = env.reset(seed=args.seed + episode)
        expression = env.task.metadata["expression"]
        observation, *_ = env.step(_call(expression))
        tree = Tree(f"[bold]{info['task_id']}[/]: {prompt}")
        turn1 = tree.add(f"turn 1: calculator({expression}) → {observation}")
        rewards = []
        for b in range(args.branches):
            branch = env.fork()
            answer = int(observation) + (rng.choice((-1, 1)) if rng.random() < args.slip else 0)
            _, reward, *_ = branch.step(f"<answer>{answer}</answer>")
            rewards.append(reward)
            colour = "green" if reward else "red"
            turn1.add(f"branch {b}: <answer>{answer}</answer> → [{colour}]reward {reward:g}[/]")
        mixed += 0 < sum(rewards) < len(rewards)
        size = len(env.snapshot().to_bytes())
        tree.add(f"[dim]snapshot at turn 1: {size} bytes (safe JSON, restorable anywhere)[/]")
        console.print(tree)
    console.print(f"[bold]{mixed}/{args.tasks}[/] episodes ended with mixed outcomes across branches.")
    return 0
