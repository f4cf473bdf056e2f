"""BFCL's own multi-turn verdict for an episode, without its global caches leaking.

``multi_turn_checker`` re-executes the model's calls and the ground truth on fresh instances
that ``execute_multi_turn_func_call`` caches in its module globals under
``<model_name>_<entry id>_<class>_instance``. Each verdict here uses a unique model name and
drops exactly those globals afterwards, so no episode, fork or later verdict sees another's
instances. The call strings it ``eval``s are only ones this env rendered from calls it
already validated (a plain function name and ``repr`` of JSON literals, see
:func:`trace_envs.bfcl.calls.render_call`), never raw model text and never strings read from
a snapshot (snapshots hold calls as name + JSON arguments, re-checked on restore). A checker
that fails is a failed verdict, not an exception.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from trace_envs.bfcl import guards

FORCE_TERMINATED = "multi_turn:force_terminated"
CHECKER_FAILED = "trace_rl:checker_failed"
_counter = itertools.count()
_lock = threading.Lock()


def bfcl_verdict(
    decoded: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any]
) -> dict[str, Any]:
    """``{"valid": bool, ...}`` as BFCL's eval runner judges one multi-turn entry."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(decoded) != len(ground_truth):
        return {
            "valid": False,
            "error_type": FORCE_TERMINATED,
            "error_message": f"{len(decoded)} turns played, {len(ground_truth)} expected",
        }
    guards.install()
    with _lock:
        model_name = f"trace_rl_verdict_{next(_counter)}"
    category = entry["id"].rsplit("_", 1)[0]
    try:
        result = multi_turn_checker(decoded, ground_truth, entry, category, model_name)
    except Exception as exc:  # BFCL's checker failing on odd input: the episode fails
        return {"valid": False, "error_type": CHECKER_FAILED,
                "error_message": f"{type(exc).__name__}: {exc}"[:1000]}
    finally:
        cache = vars(multi_turn_utils)
        for key in [k for k in list(cache) if k.startswith(model_name + "_")]:
            cache.pop(key, None)
    return _plain(result)


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    """The checker's details hold back-end objects; keep them readable and JSON-able."""
    return json.loads(json.dumps(result, default=repr))
