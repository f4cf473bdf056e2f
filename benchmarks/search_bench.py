"""Search benchmark: BM25 over a generated corpus, in process and through the retrieval server.

    python benchmarks/search_bench.py [--passages 100000] [--batch 256] [--repeats 20] [--json]

Figures: world generation and BM25 index build time, index save / mmap load time, latency
(median, p99) of a batch of queries in process, through the server over loopback (``trace-rl
serve-retriever`` in its own process) as one Search-R1 request and as concurrent SkyRL
single-query requests (batched by the server),
queries per second, and the fork / snapshot latency of ``trace/Search-v0`` at turn 4.

Dense indexes beside BM25 (``--dense-passages N``, the first N passages of the same corpus, the
same query batches for every method): MiniLM encoding throughput, build time of BM25, an exact
numpy index, FAISS Flat and FAISS HNSW32, index save/load, and query throughput (queries
encoded included; FAISS search alone too), with HNSW's recall@3 against exact search.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402

import trace_envs  # noqa: E402,F401
from trace_envs.search.client import HttpRetriever  # noqa: E402
from trace_envs.search.qa import generated_world  # noqa: E402
from trace_envs.search.retrievers import (  # noqa: E402
    BM25Retriever, RetrievalError, shared_retriever,
)

ENTITIES_PER_PERSON = 1 + 1 / 2 + 1 / 4 + 1 / 10 + 1 / 15  # see world._sizes


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(seconds: list[float], queries: int) -> dict[str, float]:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_ms": median * 1e3, "p99_ms": p99 * 1e3, "queries_per_s": queries / median}


@contextlib.contextmanager
def serve_cli(world, tmp: Path, port: int) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``trace-rl serve-retriever`` in its own process (as users run it), on loopback."""
    corpus = tmp / "corpus.jsonl"
    world.corpus.write_jsonl(corpus)
    proc = subprocess.Popen([sys.executable, "-m", "trace_agents.cli", "serve-retriever",
                             "--corpus", str(corpus), "--port", str(port)],
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with HttpRetriever(url, timeout=1.0, retries=0) as probe:
            deadline = time.monotonic() + 120
            while True:
                try:
                    probe.health()
                    break
                except RetrievalError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("serve-retriever did not start") from None
                    time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--distractors", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16,
                        help="client connections for the concurrent single-query run")
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--dense-passages", type=int, default=2000,
                        help="passages for the dense/FAISS vs BM25 comparison (0: skip it)")
    parser.add_argument("--dense-batch", type=int, default=64, help="queries per batch there")
    parser.add_argument("--skip-server", action="store_true", help="skip the server figures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    knobs = {"people": round(args.passages / (1 + args.distractors) / ENTITIES_PER_PERSON),
             "distractors": args.distractors, "questions": 1000, "seed": 0}
    figures: dict[str, object] = {}
    start = time.perf_counter()
    world = generated_world(**knobs)
    figures["passages"] = len(world.corpus)
    figures["world_build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    bm25 = shared_retriever("bm25", world.corpus)
    figures["bm25_index_build_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        BM25Retriever(world.corpus, index_dir=tmp)
        figures["bm25_build_and_save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        BM25Retriever(world.corpus, index_dir=tmp)
        figures["bm25_fingerprint_and_mmap_load_s"] = time.perf_counter() - start

    rng = random.Random(0)
    names = list(world.entities)
    words = ["born", "founded", "capital", "studied", "headquartered", "mentor", "city"]
    batches = [[f"{rng.choice(names)} {rng.choice(words)}" for _ in range(args.batch)]
               for _ in range(args.repeats)]
    it = iter(batches * 3)
    figures["in_process_batch"] = summary(timed(lambda: bm25.search(next(it), 3), args.repeats),
                                          args.batch)

    async def concurrent(client: HttpRetriever, queries: list[str]) -> None:
        await asyncio.gather(*(client.asearch([q], 3) for q in queries))

    if args.dense_passages:
        figures["dense_vs_bm25"] = dense_comparison(world, args.dense_passages, batches, args.dense_batch,
                                                    args.repeats)
    if args.skip_server:
        print_figures(figures, args.json)
        return
    with tempfile.TemporaryDirectory() as tmp, serve_cli(world, Path(tmp), args.port) as url:
        with HttpRetriever(url, api="search-r1", timeout=60) as client:
            client.search(batches[0], 3)  # warm the connection
            it = iter(batches * 3)
            figures["server_batch_request"] = summary(
                timed(lambda: client.search(next(it), 3), args.repeats), args.batch)
        loop = asyncio.new_event_loop()
        client = HttpRetriever(url, api="skyrl", timeout=60, max_connections=args.connections)
        it = iter(batches * 3)
        figures["server_concurrent_single_query_requests"] = summary(
            timed(lambda: loop.run_until_complete(concurrent(client, next(it))), args.repeats),
            args.batch)
        figures["server_retriever_calls"] = client.health()["batches"]
        loop.run_until_complete(client.aclose())
        loop.close()
        client.close()

    env = gym.make("trace/Search-v0", suite_options=knobs)
    env.reset(seed=0)
    for q in batches[0][:4]:
        env.step('<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>' % q)
    assert env.turn == 4
    n = 2000
    fork_s = timed(env.fork, n)
    snap_s = timed(lambda: env.snapshot().to_bytes(), n)
    figures["fork_at_turn_4_us"] = {"median": statistics.median(fork_s) * 1e6,
                                    "p99": sorted(fork_s)[int(0.99 * n)] * 1e6}
    figures["snapshot_to_bytes_at_turn_4_us"] = {"median": statistics.median(snap_s) * 1e6,
                                                 "p99": sorted(snap_s)[int(0.99 * n)] * 1e6}
    figures["snapshot_bytes"] = len(env.snapshot().to_bytes())

    print_figures(figures, args.json)


def print_figures(figures: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:42s} {value}")


def dense_comparison(world, n: int, batches: list[list[str]], batch: int, repeats: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """BM25, exact dense, FAISS Flat and FAISS HNSW32 over the same passages and query batches."""
    import copy

    import faiss
    import numpy as np

    from trace_envs.search.corpus import Corpus
    from trace_envs.search.faiss_index import FaissRetriever
    from trace_envs.search.retrievers import DenseRetriever

    corpus = Corpus(list(world.corpus)[:n], name=f"first-{n}")
    queries = [b[:batch] for b in batches]
    out: dict[str, object] = {"passages": len(corpus), "batch": batch}
    start = time.perf_counter()
    bm25 = BM25Retriever(corpus)
    out["bm25_build_s"] = time.perf_counter() - start
    DenseRetriever(Corpus(list(corpus)[:8]))  # load MiniLM once, outside the timings
    start = time.perf_counter()
    dense = DenseRetriever(corpus)
    out["minilm_encode_passages_per_s"] = len(corpus) / (time.perf_counter() - start)
    out["exact_dense_build_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        flat = FaissRetriever(corpus, index_dir=tmp)
        out["faiss_flat_build_and_save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        FaissRetriever(corpus, index_dir=tmp)
        out["faiss_flat_fingerprint_and_load_s"] = time.perf_counter() - start
    embeddings = np.asarray(dense.embeddings)
    start = time.perf_counter()
    index = faiss.index_factory(embeddings.shape[1], "HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.add(embeddings)
    out["faiss_hnsw32_add_s"] = time.perf_counter() - start
    index.hnsw.efSearch = 128
    hnsw = copy.copy(flat)
    hnsw.index = index
    for name, retriever in (("bm25", bm25), ("exact_dense", dense), ("faiss_flat", flat), ("faiss_hnsw32", hnsw)):
        it = iter(queries * 3)
        out[f"{name}_query_batch"] = summary(timed(lambda r=retriever: r.search(next(it), 3), repeats), batch)
    encoded = flat.encode(queries[0])
    for name, idx in (("faiss_flat", flat.index), ("faiss_hnsw32", index)):
        out[f"{name}_search_only_queries_per_s"] = batch / statistics.median(
            timed(lambda i=idx: i.search(encoded, 3), repeats))
    exact = [{h.passage.id for h in hits} for q in queries for hits in dense.search(q, 3)]
    approx = [{h.passage.id for h in hits} for q in queries for hits in hnsw.search(q, 3)]
    out["faiss_hnsw32_recall_at_3"] = sum(len(a & e) for a, e in zip(approx, exact)) / sum(map(len, exact))
    return out


if __name__ == "__main__":
    main()
