"""`trace-rl eval`: an agent on one or more benchmarks (accuracy, EM/F1, BFCL subsets)."""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console
from rich.table import Table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from trace_agents.evaluate import BENCHMARKS

    p = subparsers.add_parser("eval", help="evaluate an agent on benchmarks")
    p.add_argument("--bench", action="append", required=True,
                   help=f"{', '.join(sorted(BENCHMARKS))}, qa:<path> or a math file (repeatable)")
    p.add_argument("--model", default="smollm2", help="smollm2, tiny-qwen3 or a local HF model dir")
    p.add_argument("--dialect", default="auto",
                   help="the model family's tool-call format (auto: from the chat template); "
                        "see docs/dialects.md")
    p.add_argument("--backend", choices=["hf", "sglang", "vllm"], default="hf")
    p.add_argument("--url", help="server address for sglang/vllm")
    p.add_argument("--limit", type=int, help="at most this many tasks per benchmark")
    p.add_argument("--samples", type=int, default=1, help="episodes per task")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-turns", type=int, help="override the env's turn limit")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trace_agents.backends.base import SamplingParams
    from trace_agents.evaluate import evaluate, resolve
    from trace_agents.backends import make_backend
    from trace_agents.models import load_model

    console = Console()
    try:
        benchmarks = [resolve(b) for b in args.bench]
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    model, tokenizer = load_model(args.model)
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    overrides = {"max_turns": args.max_turns} if args.max_turns else {}

    async def all_reports() -> list[dict]:
        backend = make_backend(args.backend, model, tokenizer, url=args.url,
                               model_name=args.model, max_concurrency=16)
        try:
            return [await evaluate(b, backend, tokenizer, limit=args.limit, samples=args.samples,
                                   sampling=sampling, env_overrides=overrides,
                                   dialect=args.dialect)
                    for b in benchmarks]
        finally:
            await backend.aclose()

    reports = asyncio.run(all_reports())
    table = Table(title=f"{args.model} ({args.backend})")
    for col in ("benchmark", "tasks", "accuracy", "score", "EM", "F1", "turns", "failed"):
        table.add_column(col, justify="right")
    for r in reports:
        table.add_row(r["benchmark"], str(r["tasks"]), f"{r['accuracy']:.3f}", f"{r['score']:.3f}",
                      f"{r['em']:.3f}" if "em" in r else "-", f"{r['f1']:.3f}" if "f1" in r else "-",
                      f"{r['turns']:.1f}", str(r["failed"]))
    console.print(table)
    if args.json:
        print(json.dumps({"benchmarks": reports}))
    return 0
