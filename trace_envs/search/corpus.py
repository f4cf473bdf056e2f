"""Passage corpora: JSONL files of ``{"id", "title", "text"}`` or ``{"id", "contents"}``.

``contents`` is the field of the Wikipedia dumps prepared for Search-R1 / FlashRAG: the title on
the first line (often in double quotes), the text after it. Both shapes load into the same
:class:`Passage`, and :meth:`Passage.contents` renders the Search-R1 wire form back.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_envs.jsonl import read_jsonl


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The Search-R1 ``"Title\\nText"`` form."""
        return f"{self.title}\n{self.text}"

    @classmethod
    def from_record(cls, record: dict[str, Any], default_id: str) -> Passage:
        """Read either corpus shape; ``contents`` wins only when ``text`` is absent."""
        pid = str(record.get("id", record.get("_id", default_id)))
        if "text" in record:
            return cls(pid, str(record.get("title") or ""), str(record["text"]))
        if "contents" in record:
            title, _, text = str(record["contents"]).partition("\n")
            title = title.strip()
            if len(title) >= 2 and title[0] == title[-1] == '"':
                title = title[1:-1]
            return cls(pid, title, text.strip())
        raise ValueError(f"passage {pid!r} has neither 'text' nor 'contents'")


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved passage and its score (higher is better)."""

    passage: Passage
    score: float


class Corpus(Sequence[Passage]):
    """An immutable list of passages (shared read-only by every retriever, env and fork)."""

    def __init__(self, passages: Iterable[Passage], name: str = "corpus"):
        self.name = name
        self._passages = tuple(passages)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self._passages[i]

    def __len__(self) -> int:
        return len(self._passages)

    def __iter__(self) -> Iterator[Passage]:
        return iter(self._passages)

    def fingerprint(self) -> str:
        """A content hash, so a saved index is only reused for the corpus it was built from."""
        digest = hashlib.sha256()
        for p in self._passages:
            digest.update(f"{p.id}\x1f{p.title}\x1f{p.text}\x1e".encode())
        return digest.hexdigest()[:32]

    def write_jsonl(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for p in self._passages:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text},
                                   ensure_ascii=False) + "\n")


def load_corpus(path: str | Path) -> Corpus:
    """Load a JSONL corpus; a malformed line raises ``ValueError`` naming the file and line."""
    path = Path(path)
    passages = []
    for lineno, record in read_jsonl(path):
        try:
            if not isinstance(record, dict):
                raise ValueError("a line must be a JSON object")
            passages.append(Passage.from_record(record, default_id=str(lineno - 1)))
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    return Corpus(passages, name=path.stem)


@functools.lru_cache(maxsize=8)
def cached_corpus(path: str) -> Corpus:
    """:func:`load_corpus` once per path per process (envs and forks share the result)."""
    return load_corpus(path)
