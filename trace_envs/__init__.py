"""Gymnasium environments for tool use, forkable and snapshottable at any turn.

    import gymnasium as gym
    import trace_envs  # registers trace/Calculator-v0 and friends

    env = gym.make("trace/Calculator-v0")
    obs, info = env.reset(seed=0)
    branch = env.fork()              # independent copy at this turn
    snap = env.snapshot().to_bytes() # safe, small, restorable in another process
"""

from trace_envs.actions import ParsedAction, ToolCall, parse_action
from trace_envs.core import Response, ToolEnv
from trace_envs.registration import register_env
from trace_envs.snapshot import Snapshot
from trace_envs.structured import AssistantMessage, to_action
from trace_envs.tasks.base import Grade, Task, TaskSuite
from trace_envs.tasks.suites import load_suite, register_suite
from trace_envs.tools import Tool, ToolError, tool
from trace_envs.wrappers import fork, reset_tasks, unwrap_forkable

register_env("Calculator", "trace_envs.calculator.env:CalculatorEnv")
register_env("BFCL", "trace_envs.bfcl.env:BFCLEnv")
register_env("Search", "trace_envs.search.env:SearchEnv")
register_env("MCP", "trace_envs.integrations.mcp:MCPToolEnv")  # needs the `mcp` extra when made

__all__ = [
    "AssistantMessage", "Grade", "ParsedAction", "Response", "Snapshot", "Task", "TaskSuite",
    "Tool", "ToolCall", "ToolEnv", "ToolError", "fork", "load_suite", "parse_action",
    "register_env", "register_suite", "reset_tasks", "to_action", "tool", "unwrap_forkable",
]
