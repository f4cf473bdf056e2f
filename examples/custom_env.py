"""Add your own forkable tool env in a few lines: tools are typed methods, state is explicit.

    python examples/custom_env.py
"""

import gymnasium as gym

from trace_envs import Grade, Task, TaskSuite, ToolEnv, ToolError, register_env, tool


def exact_match(response: str, task: Task) -> Grade:
    ok = response.strip().lower() == str(task.answer).lower()
    return Grade(float(ok), float(ok))


class KeyValueEnv(ToolEnv):
    """Store and look up values; forks keep separate stores."""

    instructions = "Use `put` and `get` to work with the store, then answer inside <answer>."

    def __init__(self, max_turns: int = 6):
        tasks = TaskSuite("kv", [Task("kv-0", "Store colour=blue, then tell me the colour.", "blue", exact_match)])
        super().__init__(tasks, max_turns=max_turns)
        self.store: dict[str, str] = {}

    @tool
    def put(self, key: str, value: str) -> str:
        """Store a value under a key."""
        self.store[key] = value
        return f"stored {key}"

    @tool
    def get(self, key: str) -> str:
        """Read the value stored under a key."""
        if key not in self.store:
            raise ToolError(f"no value for {key!r}")
        return self.store[key]

    # the tools' state: what fork() copies and snapshot() saves
    def reset_tool_state(self, task: Task) -> None:
        self.store = {}

    def get_tool_state(self) -> dict[str, str]:
        return dict(self.store)

    def set_tool_state(self, state: dict[str, str]) -> None:
        self.store = dict(state)


if __name__ == "__main__":
    env = gym.make(register_env("KeyValue", KeyValueEnv))
    env.reset()
    print(env.step('<tool_call>{"name": "put", "arguments": {"key": "colour", "value": "blue"}}</tool_call>')[0])
    branch = env.fork()
    branch.step('<tool_call>{"name": "put", "arguments": {"key": "colour", "value": "red"}}</tool_call>')
    print("original:", env.step('<tool_call>{"name": "get", "arguments": {"key": "colour"}}</tool_call>')[0])
    print("branch:  ", branch.step('<tool_call>{"name": "get", "arguments": {"key": "colour"}}</tool_call>')[0])
    print("reward:", env.step("<answer>blue</answer>")[1])
