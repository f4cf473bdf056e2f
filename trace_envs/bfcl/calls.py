"""BFCL call strings (``cd(folder='document')``) without ``eval``.

BFCL writes ground truth and decoded model calls as Python call expressions and runs them with
``eval``. Here a call string is parsed with :mod:`ast` into a bare function name and keyword
arguments that must be literals (``ast.literal_eval``); anything else (attribute chains,
nested calls, names, dunders, positional arguments) is refused. The inverse, :func:`render_call`,
writes the canonical string that BFCL's checker re-executes: a bare name and ``repr`` literals.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Callable, Sequence
from typing import Any

from trace_envs.model_source import parse_expression

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
MAX_CALL_CHARS = 100_000


class CallSyntaxError(ValueError):
    """A call string that is not ``name(key=<literal>, ...)``."""


def is_plain_name(name: str) -> bool:
    """A name BFCL can hold: letters, digits and ``_``, no leading ``_``, not a Python keyword."""
    return bool(_NAME_RE.fullmatch(name)) and not keyword.iskeyword(name)


def parse_call(
    text: str, parameters: Callable[[str], Sequence[str]] | None = None
) -> tuple[str, dict[str, Any]]:
    """Parse ``name(<literal>, ..., k=<literal>, ...)`` into ``(name, {k: value})``.

    Positional arguments (BFCL's ground truth has some) are named by ``parameters(name)``, the
    function's parameter names in order; without it they are refused. Raises
    :class:`CallSyntaxError`.
    """
    if len(text) > MAX_CALL_CHARS:
        raise CallSyntaxError(f"call is {len(text)} characters long")
    try:
        node = parse_expression(text.strip()).body
    except SyntaxError as exc:
        raise CallSyntaxError(f"not a Python call expression: {exc.msg}") from None
    if not isinstance(node, ast.Call):
        raise CallSyntaxError("not a function call")
    if not isinstance(node.func, ast.Name) or not is_plain_name(node.func.id):
        raise CallSyntaxError("the function must be a plain name (no attributes, no dunders)")
    name = node.func.id
    arguments: dict[str, Any] = {}
    if node.args:
        if parameters is None:
            raise CallSyntaxError("positional arguments are not supported; use keyword arguments")
        names = list(parameters(name))
        if len(node.args) > len(names):
            raise CallSyntaxError(f"{name} takes at most {len(names)} arguments")
        for key, value in zip(names, node.args):
            arguments[key] = _literal(key, value)
    for item in node.keywords:
        if item.arg is None:
            raise CallSyntaxError("**kwargs is not supported")
        if item.arg in arguments:
            raise CallSyntaxError(f"argument {item.arg!r} given twice")
        arguments[item.arg] = _literal(item.arg, item.value)
    return name, arguments


def _literal(key: str, node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise CallSyntaxError(f"argument {key!r} is not a literal value") from None


def render_call(name: str, arguments: dict[str, Any]) -> str:
    """The BFCL call string for a checked call (``repr`` of JSON values is a Python literal)."""
    if not is_plain_name(name) or not all(is_plain_name(k) for k in arguments):
        raise CallSyntaxError(f"cannot render call {name!r}")
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"
