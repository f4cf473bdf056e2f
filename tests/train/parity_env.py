"""A test env whose outcome a random model can flip, importable by training subprocesses."""

from trace_envs import Grade, Task, TaskSuite, ToolEnv, register_env, tool


def parity(response: str, task: Task) -> Grade:
    ok = len(response) % 2 == 0
    return Grade(float(ok), float(ok))


class ParityEnv(ToolEnv):
    """Two turns; the last action is graded by the parity of its length, so even a random model
    gets mixed outcomes and every part of the pipeline has something to learn from."""

    def __init__(self, split: str = "all", max_turns: int = 2):
        tasks = TaskSuite("parity", [Task(f"p{i}", f"Task {i}: say anything.", None, parity)
                                     for i in range(12)])
        super().__init__(tasks.split(split), max_turns=max_turns)

    @tool
    def noop(self) -> str:
        """Do nothing."""
        return "ok"

    def step(self, action):
        final = self.turn + 1 >= self.max_turns
        wrapped = f"<answer>{action}</answer>" if final else '<tool_call>{"name": "noop"}</tool_call>'
        return super().step(wrapped)


ENV_ID = register_env("ParityTest", ParityEnv)
