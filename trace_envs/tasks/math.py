"""Math tasks: answer checking with math-verify, and loaders for the public file formats.

Grading order: exact rational comparison when both sides are plain numbers (fast, and what the
generated suites need), then `math-verify` (LaTeX, boxed answers, fractions, expressions), then
a normalised string match for answers such as "No" or "x=2, y=1".

Grading is bounded in time and size on any thread. math-verify bounds its sympy work with
``signal.alarm``, which only works in the main thread and cannot stop one long C call (a big
integer power) even there. So, before sympy sees an answer, :func:`too_costly` refuses answers
longer than ``MAX_ANSWER_CHARS``, nested deeper than ``MAX_NESTING``, with a power tower
(``9^{9^{9}}``), an exponent of more than ``MAX_EXPONENT_DIGITS`` digits or a factorial of a
number of more than ``MAX_FACTORIAL_DIGITS`` digits; what is left runs in a worker process
(:mod:`trace_envs.tasks.workers`) that is killed after ``HARD_TIMEOUT_S`` seconds and may use
at most ``WORKER_MEMORY_BYTES`` of memory. A refused, failed or killed check is "not verified":
reward 0, never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from trace_envs.jsonl import read_jsonl
from trace_envs.tasks.base import Grade, Task, TaskSuite
from trace_envs.tasks.workers import WorkerError, WorkerPool

MAX_ANSWER_CHARS = 300
MAX_NESTING = 12
MAX_EXPONENT_DIGITS = 4
MAX_FACTORIAL_DIGITS = 4
VERIFY_TIMEOUT_S = 5
"""math-verify's own (alarm) limit inside the worker."""
HARD_TIMEOUT_S = 8.0
"""When the worker is killed, whatever it is doing."""
WORKER_MEMORY_BYTES = 4 * 2**30
_VERIFIERS = WorkerPool(2, preload=("math_verify",), memory_bytes=WORKER_MEMORY_BYTES)
_POWER = re.compile(r"\^|\*\*")
_FACTORIAL = re.compile(r"\d{%d,}\s*!" % (MAX_FACTORIAL_DIGITS + 1))

_NUMBER_RE = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?(/\d+)?$")
_BOXED = "\\boxed{"


def _plain_number(text: str) -> Fraction | None:
    s = text.strip().strip("$").replace(" ", "").rstrip(".")
    if not s or not _NUMBER_RE.match(s) or s in {"+", "-", "."}:
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), as in MATH solutions."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _normalise_text(text: str) -> str:
    return re.sub(r"[\s$.]+", "", text).lower().replace("\\text{", "").replace("}", "")


def too_costly(text: str) -> str | None:
    """Why sympy could take unbounded time or memory on ``text`` (else ``None``)."""
    if len(text) > MAX_ANSWER_CHARS:
        return "too_long"
    depth = deepest = 0
    for char in text:
        depth += (char in "({[") - (char in ")}]")
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        return "too_nested"
    for match in _POWER.finditer(text):
        exponent = _exponent(text, match.end())
        if _POWER.search(exponent):
            return "power_tower"
        if re.search(r"\d{%d,}" % (MAX_EXPONENT_DIGITS + 1), exponent):
            return "huge_exponent"
    if _FACTORIAL.search(text):
        return "huge_factorial"
    return None


def _exponent(text: str, start: int) -> str:
    """The exponent after a ``^``/``**`` at ``start``: a bracketed group or the next token."""
    rest = text[start:].lstrip()
    if rest[:1] in ("{", "("):
        depth = 0
        for i, char in enumerate(rest):
            depth += (char in "({[") - (char in ")}]")
            if depth == 0:
                return rest[: i + 1]
        return rest
    match = re.match(r"[-+]?[\w.\\]*", rest)
    return match.group(0) if match else ""


def _math_verify(gold: str, answer: str) -> bool:
    """math-verify's verdict; runs in a grading worker (its main thread, so the alarm works)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    timeout = VERIFY_TIMEOUT_S
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    wrap = (lambda s: s) if (_BOXED in gold or "$" in gold) else (lambda s: f"${s}$")
    gold_parsed = parse(wrap(gold), extraction_config=configs, parsing_timeout=timeout)
    pred = answer if (_BOXED in answer or "$" in answer) else f"${answer}$"
    pred_parsed = parse(pred, extraction_config=configs, parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def check_math_answer(answer: str, gold: str) -> tuple[bool, str]:
    """Is ``answer`` mathematically equal to ``gold``? Returns the verdict and the method used."""
    answer, gold = answer.strip(), str(gold).strip()
    if not answer:
        return False, "empty"
    boxed = last_boxed(answer)
    if boxed is not None:
        answer = boxed
    exact_a, exact_g = _plain_number(answer), _plain_number(gold)
    if exact_a is not None and exact_g is not None:
        return exact_a == exact_g, "exact"
    if _normalise_text(answer) == _normalise_text(gold):
        return True, "string"
    refused = too_costly(answer)
    if refused is not None:
        return False, refused
    try:
        return bool(_VERIFIERS.run(_math_verify, gold, answer, timeout=HARD_TIMEOUT_S)), \
            "math_verify"
    except WorkerError:  # sympy failed, timed out or ran out of memory: "not verified"
        return False, "math_verify_error"


def math_grader(response: str, task: Task) -> Grade:
    ok, method = check_math_answer(response, task.answer)
    return Grade(float(ok), float(ok), {"verified_by": method})


# ------------------------------------------------------------------ loaders
_PROMPT_KEYS = ("problem", "question", "prompt", "Problem", "Question")
_ANSWER_KEYS = ("answer", "final_answer", "expected_answer", "Answer", "solution", "Solution")
_ID_KEYS = ("id", "unique_id", "problem_id", "idx", "ID")


def _extract_answer(key: str, value: Any) -> str:
    text = str(value)
    if key.lower() == "solution":
        boxed = last_boxed(text)
        if boxed is None:
            raise ValueError("solution has no \\boxed{} answer")
        return boxed
    if "####" in text:  # GSM8K: reasoning, then '#### 72'
        return text.rsplit("####", 1)[1].strip()
    return text.strip()


def math_tasks_from_records(records: Iterable[Mapping[str, Any]], source: str) -> list[Task]:
    """Build tasks from dict records with any of the common field names."""
    tasks = []
    for i, rec in enumerate(records):
        where = f"{source} record {i}"
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        prompt_key = next((k for k in _PROMPT_KEYS if rec.get(k)), None)
        answer_key = next((k for k in _ANSWER_KEYS if rec.get(k) not in (None, "")), None)
        if prompt_key is None or answer_key is None:
            raise ValueError(
                f"{where}: needs one of {_PROMPT_KEYS} and one of {_ANSWER_KEYS}; has {sorted(rec)}"
            )
        try:
            answer = _extract_answer(answer_key, rec[answer_key])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        id_key = next((k for k in _ID_KEYS if rec.get(k) not in (None, "")), None)
        task_id = str(rec[id_key]) if id_key else f"{Path(source).stem}-{i}"
        tasks.append(Task(task_id, str(rec[prompt_key]), answer, math_grader, {"source": source}))
    return tasks


def _read_records(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [record for _, record in read_jsonl(path)]
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, Mapping):  # {"data": [...]} or {id: record}
            inner = data.get("data", data.get("problems"))
            data = inner if isinstance(inner, list) else [{"id": k, **v} for k, v in data.items()]
        return list(data)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported format {suffix!r} (use .jsonl, .json or .parquet)")


def load_math_file(path: str | Path, *, name: str | None = None) -> TaskSuite:
    """Load MATH-500/AIME/AMC/GSM8K/DeepScaleR-style files (JSONL, JSON or parquet)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such task file: {path}")
    return TaskSuite(name or path.stem, math_tasks_from_records(_read_records(path), str(path)))
