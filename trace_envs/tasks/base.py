"""Tasks and task suites: what an episode is about and how its final answer is graded."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

Split = Literal["train", "test", "all"]


@dataclass(frozen=True)
class Grade:
    """A verdict: ``reward`` is the binary RL reward; ``score`` a graded one (F1, partial credit)."""

    reward: float
    score: float
    details: Mapping[str, Any] = field(default_factory=dict)


Grader = Callable[[str, "Task"], Grade]


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    answer: Any
    grader: Grader = field(repr=False, compare=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def grade(self, response: str) -> Grade:
        return self.grader(response, self)


def in_test_split(task_id: str, test_fraction: float, salt: str = "") -> bool:
    """Stable split by hashing the id, so the same task lands on the same side everywhere."""
    digest = hashlib.sha256(f"{salt}{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


class TaskSuite(Sequence[Task]):
    """An ordered, id-addressable, read-only collection of tasks (shared by every fork)."""

    def __init__(self, name: str, tasks: Iterable[Task]):
        self.name = name
        self._tasks = tuple(tasks)
        self._by_id = {t.id: i for i, t in enumerate(self._tasks)}
        if len(self._by_id) != len(self._tasks):
            dup = next(i for i, n in Counter(t.id for t in self._tasks).items() if n > 1)
            raise ValueError(f"suite {name!r} has duplicate task id {dup!r}")

    @overload
    def __getitem__(self, key: int) -> Task: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[Task]: ...
    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        return self._tasks[key]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __contains__(self, item: object) -> bool:
        key = item.id if isinstance(item, Task) else item
        return key in self._by_id

    def get(self, task_id: str) -> Task:
        try:
            return self._tasks[self._by_id[task_id]]
        except KeyError:
            raise KeyError(f"task {task_id!r} is not in suite {self.name!r}") from None

    def split(self, split: Split, test_fraction: float = 0.2) -> TaskSuite:
        """Deterministic train/test split by task id (``"all"`` returns the suite itself)."""
        if split == "all":
            return self
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
        want_test = split == "test"
        chosen = [t for t in self._tasks if in_test_split(t.id, test_fraction) == want_test]
        return TaskSuite(f"{self.name}:{split}", chosen)

    def __repr__(self) -> str:
        return f"TaskSuite({self.name!r}, {len(self)} tasks)"
