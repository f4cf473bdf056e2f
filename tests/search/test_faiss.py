"""FAISS dense retrieval: built offline with the packaged MiniLM, or loaded Search-R1 style."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from trace_envs.search.client import HttpRetriever
from trace_envs.search.corpus import Corpus, load_corpus
from trace_envs.search.retrievers import DenseRetriever, RetrievalError, build_retriever
from trace_envs.search.server import background_server, create_app

faiss = pytest.importorskip("faiss")
from trace_envs.search.faiss_index import INDEX_FILE, FaissRetriever  # noqa: E402


@pytest.fixture(scope="module")
def corpus(world):
    return Corpus(list(world.corpus)[:40], name="small")


@pytest.fixture(scope="module")
def dense(corpus):
    return DenseRetriever(corpus)


@pytest.fixture(scope="module")
def flat(corpus):
    return build_retriever("faiss", corpus)


@pytest.fixture(scope="module")
def queries(world, corpus):
    names = {p.title for p in corpus}
    return [f"{q.path[0]} born" for q in world.questions if q.path[0] in names][:8] + [corpus[5].text]


def _ranking(results):
    return [[h.passage.id for h in hits] for hits in results]


def test_flat_index_matches_exact_search(flat, dense, queries):
    got, want = flat.search(queries, 5), dense.search(queries, 5)
    assert _ranking(got) == _ranking(want)
    assert [h.score for r in got for h in r] == pytest.approx([h.score for r in want for h in r], abs=1e-5)
    assert flat.search([], 3) == [] and len(flat.search(["x"], 500)[0]) == len(flat.corpus)


def test_a_search_r1_style_index_and_corpus_load(tmp_path, corpus, flat, dense, queries):
    """Search-R1 ships ``e5_Flat.index`` + ``wiki-18.jsonl`` ({id, contents}), row i = line i."""
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps({"id": p.id, "contents": f'"{p.title}"\n{p.text}'}) + "\n"
                            for p in corpus))
    index = faiss.IndexFlatIP(dense.embeddings.shape[1])
    index.add(np.asarray(dense.embeddings))
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    loaded = FaissRetriever(load_corpus(path), index_path=tmp_path / "e5_Flat.index")
    assert _ranking(loaded.search(queries, 3)) == _ranking(flat.search(queries, 3))
    with pytest.raises(ValueError, match="row i of the index must be passage i"):
        FaissRetriever(Corpus(list(corpus)[:10]), index_path=tmp_path / "e5_Flat.index")
    faiss.write_index(faiss.IndexFlatIP(768), str(tmp_path / "e5_768.index"))
    with pytest.raises(ValueError, match="768-d vectors but the encoder makes 384-d"):
        FaissRetriever(Corpus([]), index_path=tmp_path / "e5_768.index")
    with pytest.raises(FileNotFoundError, match="no FAISS index"):
        FaissRetriever(corpus, index_path=tmp_path / "missing.index")
    with pytest.raises(FileNotFoundError, match="not 'minilm' or a local model directory"):
        FaissRetriever(corpus, index_path=tmp_path / "e5_Flat.index", encoder="intfloat/e5-base-v2")


def test_saved_index_is_reused_and_rebuilt_when_the_corpus_changes(tmp_path, corpus, flat, queries):
    first = FaissRetriever(corpus, index_dir=tmp_path)
    assert (tmp_path / INDEX_FILE).exists()
    start = time.perf_counter()
    again = FaissRetriever(corpus, index_dir=tmp_path)
    assert time.perf_counter() - start < 5
    assert _ranking(again.search(queries, 3)) == _ranking(first.search(queries, 3)) == \
        _ranking(flat.search(queries, 3))
    smaller = Corpus(list(corpus)[:15])
    assert FaissRetriever(smaller, index_dir=tmp_path).index.ntotal == 15


def test_hnsw_finds_each_passage_from_its_own_text(corpus):
    hnsw = FaissRetriever(corpus, factory="HNSW32")
    sample = list(corpus)[::5]
    top = hnsw.search([p.contents for p in sample], 1)
    assert [hits[0].passage.id for hits in top] == [p.id for p in sample]


def test_served_over_the_search_r1_api(flat, queries):
    with background_server(create_app(flat, description={"index": "faiss"})) as url:
        with HttpRetriever(url) as client:
            assert _ranking(client.search(queries, 3)) == _ranking(flat.search(queries, 3))


@pytest.mark.slow
def test_serve_retriever_cli_serves_a_search_r1_index(tmp_path, corpus, dense, queries):
    path = tmp_path / "wiki.jsonl"
    corpus.write_jsonl(path)
    index = faiss.IndexFlatIP(dense.embeddings.shape[1])
    index.add(np.asarray(dense.embeddings))
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "trace_agents.cli", "serve-retriever", "--corpus", str(path),
                             "--index", "faiss", "--faiss-index", str(tmp_path / "e5_Flat.index"),
                             "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        with HttpRetriever(f"http://127.0.0.1:{port}", timeout=60.0, retries=0) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    got = client.search(queries, 3)
                    break
                except RetrievalError:
                    assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                    time.sleep(0.5)
        assert _ranking(got) == _ranking(dense.search(queries, 3))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
