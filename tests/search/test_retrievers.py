"""In-process retrievers: BM25 (built, saved, reloaded) and dense MiniLM, one interface."""

import os

import pytest

from trace_envs.search.corpus import Corpus, Hit, Passage
from trace_envs.search.retrievers import (
    BM25Retriever, Retriever, build_retriever, shared_retriever,
)

SMALL = Corpus([
    Passage("0", "Paris", "Paris is the capital of France, on the Seine."),
    Passage("1", "Rome", "Rome is the capital of Italy, on the Tiber."),
    Passage("2", "Nile", "The Nile is a river in Africa flowing to the Mediterranean."),
    Passage("3", "Python", "Python is a programming language created by Guido van Rossum."),
])


def test_bm25_ranks_the_matching_passage_first(world, bm25):
    assert isinstance(bm25, Retriever)
    q = world.questions[0]
    hits = bm25.search([q.path[0], "completely unrelated zzzqx"], topk=3)
    assert hits[0][0].passage.id == q.supporting[0]
    assert [h.score for h in hits[0]] == sorted((h.score for h in hits[0]), reverse=True)
    assert hits[1] == []  # no shared term: no noise hits
    assert bm25.search([], topk=3) == []


def test_bm25_topk_larger_than_corpus():
    hits = BM25Retriever(SMALL).search(["capital"], topk=50)[0]
    assert {h.passage.title for h in hits} == {"Paris", "Rome"}


def test_bm25_index_saved_and_reused(tmp_path):
    index_dir = tmp_path / "idx"
    first = BM25Retriever(SMALL, index_dir=index_dir)
    assert (index_dir / "trace_index.json").exists()
    mtime = (index_dir / "params.index.json").stat().st_mtime_ns
    loaded = BM25Retriever(SMALL, index_dir=index_dir)
    assert (index_dir / "params.index.json").stat().st_mtime_ns == mtime  # loaded, not rebuilt
    assert loaded.search(["river Africa"], 1) == first.search(["river Africa"], 1)
    changed = Corpus([*SMALL, Passage("4", "Tokyo", "Tokyo is the capital of Japan.")])
    rebuilt = BM25Retriever(changed, index_dir=index_dir)  # stale index is not reused
    assert rebuilt.search(["Japan"], 1)[0][0].passage.title == "Tokyo"


def test_shared_retriever_is_built_once(world):
    assert shared_retriever("bm25", world.corpus) is shared_retriever("bm25", world.corpus)
    with pytest.raises(ValueError, match="unknown retriever"):
        build_retriever("annoy", SMALL)


def test_dense_minilm_retrieves_by_meaning(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dense = build_retriever("dense", SMALL, index_dir=str(tmp_path / "dense"))
    hits = dense.search(["Which city is the seat of the French government?",
                         "a language for writing software"], topk=2)
    assert hits[0][0].passage.title == "Paris" and hits[1][0].passage.title == "Python"
    assert all(isinstance(h, Hit) and -1.0 <= h.score <= 1.0 + 1e-5 for h in hits[0])
    assert hits[0][0].score >= hits[0][1].score
    again = build_retriever("dense", SMALL, index_dir=str(tmp_path / "dense"))  # from disk
    assert [h.passage.id for h in again.search(["French capital"], 4)[0]] == \
           [h.passage.id for h in dense.search(["French capital"], 4)[0]]
    assert os.path.exists(tmp_path / "dense" / "embeddings.npy")
