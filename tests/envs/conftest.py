import pytest

from trace_envs.calculator.env import CalculatorEnv


def calc(expr: str) -> str:
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'


@pytest.fixture
def env():
    """A small generated calculator suite (built once per process thanks to the suite cache)."""
    e = CalculatorEnv(suite_options={"size": 50, "seed": 3}, max_turns=6)
    e.reset(seed=0)
    return e
