"""`trace-rl serve-retriever`: serve a local BM25 or dense index over the Search-R1 HTTP API."""

from __future__ import annotations

import argparse
import sys
import time

from trace_agents.cli import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve-retriever",
        help="serve a corpus over the Search-R1 retrieval API (also SkyRL-gym and GEM clients)",
        description=__doc__,
    )
    p.add_argument("--corpus", required=True,
                   help="JSONL corpus ({id,title,text} or {id,contents}), or 'generated' for the "
                        "generated multi-hop world's corpus")
    p.add_argument("--index", choices=("bm25", "dense"), default="bm25",
                   help="bm25 (bm25s) or dense (MiniLM embeddings, exact inner product)")
    p.add_argument("--index-dir", default=None,
                   help="save the index here after building it; reuse it when the corpus matches")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--topk", type=int, default=3, help="results per query when a request omits topk")
    p.add_argument("--max-batch", type=int, default=256, help="most queries per retriever call")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long to wait for more requests to batch with the first one")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trace_envs.search.corpus import load_corpus
    from trace_envs.search.qa import generated_world
    from trace_envs.search.retrievers import build_retriever
    from trace_envs.search.server import create_app, serve

    started = time.perf_counter()
    try:
        corpus = generated_world().corpus if args.corpus == "generated" else load_corpus(args.corpus)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load corpus: {exc}") from None
    if not corpus:
        raise UserError(f"{args.corpus} holds no passages: a corpus is JSONL of "
                        '{"id", "title", "text"} or {"id", "contents"} lines')
    retriever = build_retriever(args.index, corpus, index_dir=args.index_dir)
    print(f"{args.index} index over {len(corpus)} passages ready in "
          f"{time.perf_counter() - started:.1f}s; serving http://{args.host}:{args.port}/retrieve",
          file=sys.stderr, flush=True)
    app = create_app(retriever, default_topk=args.topk, max_batch=args.max_batch,
                     batch_wait_ms=args.batch_wait_ms,
                     description={"index": args.index, "passages": len(corpus),
                                  "corpus": args.corpus})
    serve(app, host=args.host, port=args.port)
    return 0
