"""Python source a model wrote (calculator expressions, BFCL calls), parsed without noise.

The compiler reports some malformed input (``1is 1``, ``"\\d"`` on Python 3.12+) as a
``SyntaxWarning`` printed to stderr, once per distinct text: a policy sampling thousands of
replies floods the run's log. Parsing under its own file name lets one filter, set once at
import, silence exactly these warnings and nothing else in the process (``warnings.catch_warnings``
around each parse would race between the worker threads that step envs)."""

from __future__ import annotations

import ast
import re
import warnings

FILENAME = "<model output>"

warnings.filterwarnings("ignore", category=SyntaxWarning, module=re.escape(FILENAME))


def parse_expression(text: str) -> ast.Expression:
    """``ast.parse(text, mode="eval")`` without warnings; raises what it raises."""
    return ast.parse(text, filename=FILENAME, mode="eval")
