"""Malformed model-written Python is an error, never a SyntaxWarning on the run's stderr."""

import subprocess
import sys

SCRIPT = """
import ast
from trace_envs.bfcl.calls import CallSyntaxError, parse_call
from trace_envs.calculator.evaluator import CalculatorError, evaluate
for text in ("1is 1", "0x1for x", "2 if 1else 3"):
    try:
        evaluate(text)
    except CalculatorError:
        pass
    try:
        parse_call(f"f(a={text})")
    except CallSyntaxError:
        pass
print("done")
ast.parse("1is 2", mode="eval")  # anyone else's source still warns: the filter is targeted
"""


def test_no_syntax_warning_from_model_output_and_others_still_warned():
    run = subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True)
    assert run.stdout.strip() == "done"
    warnings = [line for line in run.stderr.splitlines() if "SyntaxWarning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("<unknown>:1"), run.stderr
