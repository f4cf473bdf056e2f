"""BFCL function docs as tool schemas, argument checks, and safe execution on an instance.

A call reaches a back-end only through :func:`execute`: the name must be one of the functions
the episode has revealed, the method is looked up on that episode's own instance, and the
arguments must be JSON values whose names match the doc. Results and
errors are rendered as BFCL's executor renders them, so the model reads what it would read there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

EXECUTION_ERROR = "Error during execution: "
"""BFCL's prefix for a call that raised (``multi_turn_utils.execute_multi_turn_func_call``)."""


class CallError(Exception):
    """A call that cannot run; the message is shown after :data:`EXECUTION_ERROR`."""


def tool_schema(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI-style function schema of a BFCL doc (BFCL's own type map to JSON Schema)."""
    return {
        "type": "function",
        "function": {
            "name": doc["name"],
            "description": doc["description"],
            "parameters": _schema(doc["parameters"]),
        },
    }


def _schema(node: Mapping[str, Any]) -> dict[str, Any]:
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    out = {k: v for k, v in node.items() if k not in ("type", "properties", "items")}
    out["type"] = GORILLA_TO_OPENAPI.get(node.get("type", "string"), "string")
    if "properties" in node:
        out["properties"] = {k: _schema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = _schema(node["items"])
    return out


def check_arguments(doc: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """Raise :class:`CallError` for unknown or missing arguments or a non-finite number.

    Value types are left to the back-end, as in BFCL: its ground truth itself passes e.g. a
    string where a doc says integer (``close_ticket(ticket_id='ticket_001')``) and expects the
    back-end's answer; a type the back-end cannot handle comes back as its execution error.
    """
    properties: Mapping[str, Any] = doc["parameters"].get("properties", {})
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        raise CallError(
            f"{doc['name']}() got unexpected argument(s) {unknown}; expected {sorted(properties)}"
        )
    missing = [k for k in doc["parameters"].get("required", []) if k not in arguments]
    if missing:
        raise CallError(f"{doc['name']}() missing required argument(s) {missing}")
    for key, value in arguments.items():
        if not _finite(value):
            raise CallError(f"argument {key!r} of {doc['name']}() holds a non-finite number")


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def execute(instance: Any, name: str, arguments: Mapping[str, Any]) -> str:
    """Run a checked call on the episode's own instance; render the result like BFCL.

    Only methods defined by the back-end's class are reachable (never attributes of the
    instance, inherited builtins or private names).
    """
    method = vars(type(instance)).get(name)
    if name.startswith("_") or not callable(method):
        raise CallError(f"{name} is not a function of {type(instance).__name__}")
    try:
        return render_result(method(instance, **arguments))
    except Exception as exc:  # a back-end error is an observation, as in BFCL
        return EXECUTION_ERROR + str(exc)


def render_result(result: Any) -> str:
    """``str`` as is, ``dict`` as JSON (else ``str``), anything else ``str`` (BFCL's rule)."""
    if type(result) is str:
        return result
    if type(result) is dict:
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)
