"""BFCL v4 multi-turn entries, ground truth and function docs, as trace-rl task suites.

The files come from the installed ``bfcl-eval`` wheel (``bfcl_eval/data``) or from a BFCL data
directory the user points to (``data_dir=...`` or the ``TRACE_BFCL_DATA`` environment variable)
with the same layout: ``BFCL_v4_multi_turn_<subset>.json``, ``possible_answer/`` and
``multi_turn_func_doc/``. Files are read directly (JSON lines) rather than through
``bfcl_eval.utils``, whose import needs ``filelock`` and creates result folders.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trace_envs.jsonl import read_jsonl
from trace_envs.tasks.base import Grade, Task, TaskSuite

SUBSETS = ("base", "long_context", "miss_func", "miss_param")
VERSION_PREFIX = "BFCL_v4"
DATA_DIR_ENV = "TRACE_BFCL_DATA"
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
"""What BFCL appends to every multi-turn function description before a model sees it."""

# BFCL's class -> doc file map (bfcl_eval.constants.executable_backend_config) is imported
# lazily with the rest of the package; only the eight multi-turn classes are supported here.
MULTI_TURN_CLASSES = (
    "GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot",
    "TravelAPI", "VehicleControlAPI",
)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the BFCL data lives: the argument, ``$TRACE_BFCL_DATA``, or the installed wheel."""
    chosen = explicit or os.environ.get(DATA_DIR_ENV)
    if chosen:
        path = Path(chosen)
    else:
        try:
            from importlib.resources import files

            path = Path(str(files("bfcl_eval") / "data"))
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "bfcl-eval is not installed: run `pip install --no-deps bfcl-eval mpmath`, "
                f"or point {DATA_DIR_ENV} at a BFCL data directory"
            ) from None
    if not (path / f"{VERSION_PREFIX}_multi_turn_base.json").is_file():
        raise FileNotFoundError(f"no BFCL v4 multi-turn data in {path}")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in read_jsonl(path)]


def load_function_docs(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Class name -> its BFCL function docs (with BFCL's Python-syntax hint appended)."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    docs: dict[str, list[dict[str, Any]]] = {}
    for class_name in MULTI_TURN_CLASSES:
        file_name = MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
        entries = _read_jsonl(root / "multi_turn_func_doc" / file_name)
        for doc in entries:
            doc["description"] = doc["description"] + PYTHON_HINT
        docs[class_name] = entries
    return docs


def _not_graded(response: str, task: Task) -> Grade:
    """BFCL tasks are judged on the episode's executed calls (see the env), not on a text answer."""
    raise TypeError("BFCL tasks are graded by BFCLEnv with BFCL's multi-turn checker")


def load_subset(subset: str, root: str | os.PathLike[str] | None = None) -> TaskSuite:
    """One BFCL multi-turn subset as a suite: ``Task.answer`` is BFCL's ground truth.

    ``Task.metadata`` holds the raw entry (``entry``), the function docs the model sees at the
    start (``functions``), the held-out docs by user turn (``held_out``), as BFCL's
    ``populate_test_cases_with_predefined_functions`` arranges them, and which class owns
    each function (``owner``).
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown BFCL subset {subset!r}; choose from {SUBSETS}")
    path = data_dir(root)
    file_name = f"{VERSION_PREFIX}_multi_turn_{subset}.json"
    entries = _read_jsonl(path / file_name)
    ground_truth = _read_jsonl(path / "possible_answer" / file_name)
    answers = {a["id"]: a["ground_truth"] for a in ground_truth}
    docs = load_function_docs(path)
    tasks = []
    for entry in entries:
        functions, held_out = _split_docs(entry, docs)
        owner = {d["name"]: c for c in entry["involved_classes"] for d in docs[c]}
        first = entry["question"][0] if entry["question"] else []
        tasks.append(Task(
            entry["id"], user_text(first), answers[entry["id"]], _not_graded,
            {"entry": entry, "functions": functions, "held_out": held_out, "owner": owner,
             "subset": subset},
        ))
    return TaskSuite(f"bfcl-multi_turn_{subset}", tasks)


def _split_docs(
    entry: Mapping[str, Any], docs: Mapping[str, list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    unknown = [c for c in entry["involved_classes"] if c not in docs]
    if unknown:
        raise ValueError(f"entry {entry['id']} uses unsupported classes {unknown}")
    functions = [copy.deepcopy(d) for c in entry["involved_classes"] for d in docs[c]]
    held_out: dict[int, list[dict[str, Any]]] = {}
    for turn, names in entry.get("missed_function", {}).items():
        held_out[int(turn)] = [d for d in functions if d["name"] in names]
        functions = [d for d in functions if d["name"] not in names]
    return functions, held_out


def user_text(messages: list[dict[str, Any]]) -> str:
    """The text of one BFCL user turn (a list of chat messages, usually one)."""
    return "\n\n".join(str(m.get("content", "")) for m in messages)
