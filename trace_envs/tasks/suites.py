"""Named task suites, built once per process and shared by every env and fork that uses them.

``load_suite("arithmetic", steps=3, digits=4)`` builds a generated suite; a path to a
``.jsonl``/``.json``/``.parquet`` file loads a public-format math file. Add your own with
:func:`register_suite`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from trace_envs.integrations.hf_datasets import hf_suite
from trace_envs.tasks.base import Task, TaskSuite
from trace_envs.tasks.math import load_math_file, math_grader
from trace_envs.validation import validation_problems

SuiteFactory = Callable[..., TaskSuite]
_FACTORIES: dict[str, SuiteFactory] = {}


def register_suite(name: str, factory: SuiteFactory) -> None:
    """Make ``load_suite(name, **options)`` call ``factory(**options)``, the options checked
    (and ``"8"`` read as 8) against the factory's type hints first, so that a wrong option is a
    ``ValueError`` naming it rather than a failure deep inside the factory. A factory whose hints
    cannot be resolved here (a name imported only for type checkers) is called unchecked."""
    try:
        _FACTORIES[name] = pydantic.validate_call(factory, config={"arbitrary_types_allowed": True})
    except (NameError, pydantic.PydanticUserError):
        _FACTORIES[name] = factory


def suite_names() -> list[str]:
    return sorted(_FACTORIES)


def load_suite(spec: str, **options: Any) -> TaskSuite:
    """A registered suite by name, or a task file by path (cached per arguments)."""
    return _load_cached(spec, json.dumps(options, sort_keys=True, default=str))


@functools.lru_cache(maxsize=32)
def _load_cached(spec: str, options_json: str) -> TaskSuite:
    options = json.loads(options_json)
    if spec in _FACTORIES:
        try:
            return _FACTORIES[spec](**options)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"option {p}" for p in validation_problems(exc, limit=3))
            raise ValueError(f"suite {spec!r}: {problems}") from None
    if Path(spec).suffix.lower() in {".jsonl", ".json", ".parquet"}:
        return load_math_file(spec, **options)
    raise KeyError(f"unknown suite {spec!r}: use a task file path or one of {suite_names()}")


def _label(name: str, **knobs: Any) -> str:
    return f"{name}(" + ",".join(f"{k}={v}" for k, v in sorted(knobs.items())) + ")"


def arithmetic_suite(
    *, steps: int = 2, digits: int = 3, size: int = 1000, seed: int = 0
) -> TaskSuite:
    """Generated multi-step arithmetic word problems (see :mod:`trace_envs.tasks.word_problems`)."""
    from trace_envs.tasks.word_problems import generate_word_problems

    name = _label("arithmetic", steps=steps, digits=digits, size=size, seed=seed)
    return TaskSuite(name, (
        Task(p.id, p.text, str(p.answer), math_grader, {"steps": steps, "digits": digits,
                                                         "expression": p.expression})
        for p in generate_word_problems(size, steps=steps, digits=digits, seed=seed)
    ))


def gsm_symbolic_suite(*, size: int = 500, seed: int = 0) -> TaskSuite:
    """GSM8K-style word problems with fresh numbers, from reasoning-gym's ``gsm_symbolic``."""
    import reasoning_gym

    data = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    return TaskSuite(_label("gsm_symbolic", size=size, seed=seed), (
        Task(f"gsm-{seed}-{i}", e["question"], str(e["answer"]), math_grader, {})
        for i, e in enumerate(data)
    ))


def champ_suite() -> TaskSuite:
    """The 270 CHAMP competition problems (``champ-dataset`` wheel, MIT), with final answers."""
    from importlib.resources import files

    path = files("champ_dataset") / "dataset_files" / "v0.json"
    problems = json.loads(path.read_text(encoding="utf-8"))["problems"]
    return TaskSuite("champ", (
        Task(pid, p["_text"], p["_answer"], math_grader, {"category": p.get("category")})
        for pid, p in problems.items()
    ))


register_suite("arithmetic", arithmetic_suite)
register_suite("gsm_symbolic", gsm_symbolic_suite)
register_suite("champ", champ_suite)


register_suite("hf", hf_suite)  # `datasets` is imported only when it loads
