"""Multi-hop QA task suites: loaders for the public formats and the generated offline suite.

Formats (``format="auto"`` tells them apart by their fields):

- ``hotpotqa``: the official JSON list of ``{"_id", "question", "answer", "context", ...}``.
- ``2wiki``: 2WikiMultiHopQA, the same shape plus ``"evidences"``.
- ``musique``: JSONL of ``{"id", "question", "answer", "answer_aliases", "paragraphs", ...}``.
- ``bamboogle``: rows of ``{"Question", "Answer"}`` (JSON/JSONL, or the CSV export).
- ``unified``: FlashRAG / Search-R1 JSONL of ``{"id", "question", "golden_answers"}``.

Every task's ``answer`` is the list of gold answers (aliases included); :class:`QAGrader` scores
the best match.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trace_envs.jsonl import read_jsonl
from trace_envs.search.metrics import best_em_f1
from trace_envs.search.world import cached_world
from trace_envs.tasks.base import Grade, Task, TaskSuite

QA_FORMATS = ("hotpotqa", "2wiki", "musique", "bamboogle", "unified")


@dataclass(frozen=True)
class QAGrader:
    """Reward 1.0 when the answer's token F1 against any gold answer reaches ``threshold``
    (``mode="f1"``, the TRACE setting) or when it matches one exactly (``mode="em"``)."""

    threshold: float = 0.3
    mode: Literal["f1", "em"] = "f1"

    def __call__(self, response: str, task: Task) -> Grade:
        em, f1 = best_em_f1(response, task.answer)
        passed = em == 1.0 if self.mode == "em" else f1 >= self.threshold
        return Grade(float(passed), f1, {"em": em, "f1": f1})


def _records(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON list, a JSONL file or a CSV file, with file:line context on errors."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        return rows
    return [row for _, row in read_jsonl(path)]


def detect_format(record: dict[str, Any]) -> str:
    if "golden_answers" in record:
        return "unified"
    if "paragraphs" in record or "answer_aliases" in record:
        return "musique"
    if "evidences" in record:
        return "2wiki"
    if "_id" in record and "answer" in record:
        return "hotpotqa"
    if "Question" in record and "Answer" in record:
        return "bamboogle"
    raise ValueError(f"cannot tell the QA format of a record with fields {sorted(record)}")


def _golds(record: dict[str, Any], fmt: str) -> list[str]:
    if fmt == "unified":
        golds = record["golden_answers"]
        return [golds] if isinstance(golds, str) else [str(g) for g in golds]
    if fmt == "bamboogle":
        return [str(record["Answer"])]
    return [str(record["answer"]), *map(str, record.get("answer_aliases") or ())]


def load_qa_file(
    path: str | Path, *, format: str = "auto", grader: QAGrader | None = None
) -> TaskSuite:
    """A QA file as a task suite named after the file; a bad record raises ``ValueError``."""
    path = Path(path)
    return TaskSuite(f"qa:{path.name}", qa_tasks_from_records(_records(path), str(path), format=format,
                                                               grader=grader))


def qa_tasks_from_records(
    rows: Iterable[Any], source: str, *, format: str = "auto", grader: QAGrader | None = None
) -> list[Task]:
    """Tasks from QA records of any of :data:`QA_FORMATS` (files, or rows of a ``datasets`` split)."""
    grader = grader or QAGrader()
    stem = Path(source).stem
    tasks = []
    for i, record in enumerate(rows):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {i} is not an object")
        try:
            fmt = detect_format(record) if format == "auto" else format
            if fmt not in QA_FORMATS:
                raise ValueError(f"unknown QA format {fmt!r}; known: {QA_FORMATS}")
            question = record["Question"] if fmt == "bamboogle" else record["question"]
            task_id = str(record.get("id", record.get("_id", f"{stem}-{i}")))
            metadata = {"dataset": fmt, **{k: record[k] for k in ("type", "level") if k in record}}
            tasks.append(Task(task_id, str(question), _golds(record, fmt), grader, metadata))
        except KeyError as exc:
            raise ValueError(f"{source}: record {i} lacks field {exc}") from None
    return tasks


def context_passages(path: str | Path) -> Iterable[dict[str, str]]:
    """The context paragraphs of a HotpotQA / 2Wiki / MuSiQue file as corpus records
    (``{"id", "title", "text"}``, de-duplicated), to search a QA file's own distractor setting."""
    seen: set[tuple[str, str]] = set()
    for record in _records(Path(path)):
        if "context" in record:  # HotpotQA / 2Wiki: [[title, [sentences]]]
            paragraphs = [(t, " ".join(x.strip() for x in s)) for t, s in record["context"]]
        else:  # MuSiQue: [{"title", "paragraph_text"}]
            paragraphs = [(p["title"], p["paragraph_text"]) for p in record.get("paragraphs", ())]
        for title, text in paragraphs:
            if (title, text) not in seen:
                seen.add((title, text))
                yield {"id": f"ctx{len(seen) - 1}", "title": title, "text": text}


def generated_suite(
    *, people: int = 120, distractors: int = 2, questions: int = 1000,
    hops: int | Sequence[int] = (2, 3, 4), seed: int = 0, grader: QAGrader | None = None,
) -> TaskSuite:
    """The generated multi-hop suite (see :mod:`trace_envs.search.world`); its corpus is
    ``generated_world(...).corpus`` with the same knobs."""
    world = generated_world(people=people, distractors=distractors, questions=questions,
                            hops=hops, seed=seed)
    grader = grader or QAGrader()
    hop_label = hops if isinstance(hops, int) else "-".join(map(str, sorted(hops)))
    name = (f"generated(distractors={distractors},hops={hop_label},people={people},"
            f"questions={questions},seed={seed})")
    return TaskSuite(name, (
        Task(q.id, q.question, [q.answer], grader,
             {"dataset": "generated", "hops": len(q.chain), "chain": list(q.chain),
              "path": list(q.path), "supporting": list(q.supporting)})
        for q in world.questions
    ))


def generated_world(
    *, people: int = 120, distractors: int = 2, questions: int = 1000,
    hops: int | Sequence[int] = (2, 3, 4), seed: int = 0,
):  # type: ignore[no-untyped-def]
    """The cached world behind :func:`generated_suite` (one per knob setting per process)."""
    hop_key = (hops,) if isinstance(hops, int) else tuple(sorted(hops))
    return cached_world(people, distractors, questions, hop_key, seed)
