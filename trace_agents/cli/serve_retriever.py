"""`trace-rl serve-retriever`: serve a local BM25, dense or FAISS index over the Search-R1 HTTP API."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from trace_agents.cli import UserError

LIMIT_HELP = {
    "max_body_bytes": "largest request body (413 beyond)",
    "max_queries": "most queries in one request (400 beyond)",
    "max_query_chars": "most characters in one query (400 beyond)",
    "max_topk": "largest topk a request may ask for (400 beyond)",
    "max_pending_queries": "queries queued or being searched at once, all requests together "
                           "(503 with Retry-After beyond)",
    "max_connections": "open connections and requests in progress (503 beyond)",
    "header_timeout_s": "seconds for a request's headers to arrive (the connection is closed)",
    "body_timeout_s": "seconds for a request's body to arrive after its headers (408)",
    "keep_alive_s": "seconds an idle keep-alive connection stays open",
    "max_header_bytes": "largest request line plus headers (400 beyond)",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve-retriever",
        help="serve a corpus over the Search-R1 retrieval API (also SkyRL-gym and GEM clients)",
        description=__doc__,
    )
    p.add_argument("--corpus", required=True,
                   help="JSONL corpus ({id,title,text} or {id,contents}), or 'generated' for the "
                        "generated multi-hop world's corpus")
    p.add_argument("--index", choices=("bm25", "dense", "faiss"), default="bm25",
                   help="bm25 (bm25s), dense (MiniLM embeddings, exact inner product) or faiss "
                        "(a FAISS index: a Search-R1 one, or built here)")
    p.add_argument("--index-dir", default=None,
                   help="save the index here after building it; reuse it when the corpus matches")
    faiss = p.add_argument_group("faiss", "a FAISS index: a Search-R1 one (--faiss-index) or one "
                                          "built here")
    faiss.add_argument("--faiss-index", default=None, metavar="PATH",
                       help="an existing index file (e.g. Search-R1's e5_Flat.index); row i = "
                            "corpus line i")
    faiss.add_argument("--encoder", default="minilm",
                       help="'minilm' (packaged) or a local model directory (e.g. e5-base-v2 for "
                            "Search-R1)")
    faiss.add_argument("--query-prefix", default="", help="e.g. 'query: ' for e5")
    faiss.add_argument("--passage-prefix", default="",
                       help="e.g. 'passage: ' for e5, when building")
    faiss.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                       help="how token embeddings become one vector")
    faiss.add_argument("--faiss-factory", default="Flat",
                       help="index type when building: Flat, HNSW32, ...")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--topk", type=int, default=3, help="results per query when a request omits topk")
    p.add_argument("--max-batch", type=int, default=256, help="most queries per retriever call")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long to wait for more requests to batch with the first one")
    from trace_envs.search.limits import ServerLimits

    limits = p.add_argument_group("limits (safe defaults; see docs/search.md)")
    for f in dataclasses.fields(ServerLimits):
        limits.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                            default=f.default, help=f"{LIMIT_HELP[f.name]} (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trace_envs.search.corpus import load_corpus
    from trace_envs.search.qa import generated_world
    from trace_envs.search.retrievers import build_retriever
    from trace_envs.search.limits import ServerLimits
    from trace_envs.search.server import create_app, serve

    started = time.perf_counter()
    try:
        corpus = generated_world().corpus if args.corpus == "generated" else load_corpus(args.corpus)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load corpus: {exc}") from None
    if not corpus:
        raise UserError(f"{args.corpus} holds no passages: a corpus is JSONL of "
                        '{"id", "title", "text"} or {"id", "contents"} lines')
    try:
        limits = ServerLimits(**{f.name: getattr(args, f.name)
                                 for f in dataclasses.fields(ServerLimits)})
        if not 1 <= args.topk <= limits.max_topk:
            raise ValueError(f"--topk must be between 1 and --max-topk={limits.max_topk}")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    options = {"index_dir": args.index_dir}
    if args.index == "faiss":
        options.update(index_path=args.faiss_index, encoder=args.encoder,
                       query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
                       pooling=args.pooling, factory=args.faiss_factory)
    try:
        retriever = build_retriever(args.index, corpus, **options)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot build the {args.index} index: {exc}") from None
    print(f"{args.index} index over {len(corpus)} passages ready in "
          f"{time.perf_counter() - started:.1f}s; serving http://{args.host}:{args.port}/retrieve",
          file=sys.stderr, flush=True)
    app = create_app(retriever, default_topk=args.topk, max_batch=args.max_batch,
                     batch_wait_ms=args.batch_wait_ms, limits=limits,
                     description={"index": args.index, "passages": len(corpus),
                                  "corpus": args.corpus})
    serve(app, host=args.host, port=args.port)
    return 0
