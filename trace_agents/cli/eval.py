"""`trace-rl eval`: an agent on one or more benchmarks (accuracy, EM/F1, BFCL subsets).

--model takes a built-in model, a Hugging Face model folder, or what `trace-rl train` saved
(its run folder or the run's checkpoint folder: every trained allocator is evaluated, or the one
named by --arm). Before and after training, on the same tasks:

  trace-rl eval --model smollm2 --bench examples/demo.yaml --limit 20
  trace-rl eval --model runs/demo --bench examples/demo.yaml --limit 20

(a training config as --bench means its env on the test split: the tasks it trained for).
A model behind any OpenAI-compatible chat endpoint, through its native tool calling (the key, if
the server wants one, from $OPENAI_API_KEY or the variable --api-key-env names):

  trace-rl eval --backend openai --url https://api.example.com/v1 --model NAME --bench arithmetic
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from trace_agents.cli import UserError

KNOWN_ZERO = {
    "tiny-qwen3": "tiny-qwen3 is a random-init test model: it scores 0 on every benchmark",
}
CALCULATOR_ZERO = ("untrained SmolLM2-135M never writes a well-formed tool call: expect 0\n"
                   "(examples/demo.yaml teaches it the format first: a warm-start, then RL)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from trace_agents.evaluate import BENCHMARKS

    p = subparsers.add_parser("eval", help="evaluate a model (or a trained run) on benchmarks",
                              description=__doc__)
    p.add_argument("--bench", action="append", required=True, metavar="NAME",
                   help=f"{', '.join(sorted(BENCHMARKS))}, qa:<path>, a math file, or a training "
                        "config .yaml (its env, test split); repeatable")
    p.add_argument("--model",
                   help="smollm2, tiny-qwen3, a Hugging Face model folder, or a trace-rl train "
                        "run folder (or its checkpoint folder) (default: smollm2); with "
                        "--backend openai, required: the model name the server serves")
    p.add_argument("--arm", action="append", metavar="ALLOCATOR",
                   help="with a run folder: evaluate only this trained allocator (repeatable; "
                        "default: every one in the checkpoint)")
    p.add_argument("--backend", choices=["hf", "sglang", "vllm", "openai"], default="hf",
                   help="hf runs the model in this process; sglang/vllm call a server at --url; "
                        "openai calls any OpenAI-compatible /v1/chat/completions endpoint at --url "
                        "with native tool calling (tools=, tool_calls)")
    p.add_argument("--url", help="server address for --backend sglang, vllm or openai")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the server's API key (default with "
                        "--backend openai: OPENAI_API_KEY when set; otherwise no key)")
    p.add_argument("--limit", type=int, help="at most this many tasks per benchmark (default: all)")
    p.add_argument("--dialect", default="auto",
                   help="the model family's tool-call format (auto: from the chat template); "
                        "see docs/dialects.md")
    p.add_argument("--samples", type=int, default=1, help="episodes per task")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per model turn")
    p.add_argument("--max-turns", type=int,
                   help="turns per episode (default: the env's own limit)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads for an in-process model (0: one fewer than the CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(run=run)


def _check_served(args: argparse.Namespace) -> None:
    """--backend openai names a served model and takes neither trained arms nor a dialect."""
    if args.model is None:
        raise UserError("--backend openai needs --model NAME: the model the server serves")
    if args.arm or args.dialect != "auto":
        raise UserError("--backend openai evaluates a served model through its own tool "
                        "calling: drop --arm and --dialect")


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from the environment (never a flag: flags end up in shell history and logs);
    $OPENAI_API_KEY goes only where --backend openai asks for it, as the openai SDK sends it."""
    if args.api_key_env is None:
        return os.environ.get("OPENAI_API_KEY") or None if args.backend == "openai" else None
    if not os.environ.get(args.api_key_env):
        raise UserError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    return os.environ[args.api_key_env]


def _warnings(model: str, benchmarks: list[Any]) -> list[str]:
    if model in KNOWN_ZERO:
        return [KNOWN_ZERO[model]]
    if model == "smollm2" and any(b.env_id == "trace/Calculator-v0" for b in benchmarks):
        return [CALCULATOR_ZERO]
    return []


def run(args: argparse.Namespace) -> int:
    from trace_agents.cli.checks import check_backend, make_env
    from trace_agents.evaluate import resolve

    for name, value in (("--limit", args.limit), ("--samples", args.samples),
                        ("--max-tokens", args.max_tokens), ("--max-turns", args.max_turns)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (automatic) or more (got {args.threads})")
    check_backend(args.backend, args.url)
    if args.backend == "openai":
        _check_served(args)
    args.model = args.model or "smollm2"
    api_key = _api_key(args)
    try:
        benchmarks = [resolve(b) for b in args.bench]
    except ValueError as exc:  # ConfigError included
        raise UserError(str(exc)) from None
    overrides = {"max_turns": args.max_turns} if args.max_turns else {}
    with contextlib.ExitStack() as envs_open:  # closed on every path: no tool server outlives us
        envs = [envs_open.enter_context(make_env(b.env_id, {**b.kwargs, **overrides},
                                                 where=f"benchmark {b.name}"))
                for b in benchmarks]
        return _run(args, benchmarks, envs, api_key)


def _run(args: argparse.Namespace, benchmarks: list[Any], envs: list[Any], api_key: str | None) -> int:
    from trace_agents.backends import make_backend
    from trace_agents.backends.base import SamplingParams
    from trace_agents.cli.checks import model_loaders
    from trace_agents.evaluate import evaluate
    from trace_agents.progress import Reporter

    console, status = Console(), Console(stderr=True)
    if args.backend == "hf":
        from trace_agents.models import set_threads

        set_threads(args.threads)
    served = args.backend == "openai"  # nothing to load: the server holds the model
    models = [(args.model, lambda: (None, None))] if served else model_loaders(args.model, args.arm)
    if args.no_progress and not served:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    for b, env in zip(benchmarks, envs):
        tasks = min(len(env.tasks), args.limit or len(env.tasks))
        status.print(f"{b.name}: {tasks} of {len(env.tasks)} tasks, {args.samples} episode(s) "
                     f"each, <= {env.max_turns} turns of <= {args.max_tokens} tokens, "
                     f"temperature {args.temperature:g}", highlight=False, soft_wrap=True)
    for label, _ in [] if served else models:
        for warning in _warnings(label, benchmarks):
            status.print(f"[yellow]warning:[/] {warning}", highlight=False)
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)

    async def one_model(label: str, model: Any, tokenizer: Any) -> list[dict]:
        backend = make_backend(args.backend, model, tokenizer, url=args.url,
                               model_name=args.model, max_concurrency=16, api_key=api_key)
        reports = []
        try:
            for b, env in zip(benchmarks, envs):
                tasks = min(len(env.tasks), args.limit or len(env.tasks))
                with Reporter(f"{label} {b.name}", total=tasks * args.samples, console=status,
                              enabled=not args.no_progress) as bar:
                    score = {"right": 0.0, "done": 0}

                    def seen(episode: Any, bar: Reporter = bar, score: dict = score) -> None:
                        score["done"] += 1
                        score["right"] += episode.reward or 0.0
                        bar.advance(info=f"accuracy {score['right'] / score['done']:.3f}")

                    report = await evaluate(b, backend, tokenizer, limit=args.limit,
                                            samples=args.samples, sampling=sampling, env=env,
                                            on_episode=seen, dialect=args.dialect)
                reports.append({"model": label, **report})
        finally:
            await backend.aclose()
        return reports

    reports = []
    for label, load in models:
        model, tokenizer = load()
        reports += asyncio.run(one_model(label, model, tokenizer))
    console.print(_table(reports, args))
    if args.json:
        print(json.dumps({"benchmarks": reports}), flush=True)
    return 0


def _table(reports: list[dict], args: argparse.Namespace) -> Table:
    """At most 80 columns: the model goes in the title unless several were evaluated."""
    several = len({r["model"] for r in reports}) > 1
    qa = any("em" in r for r in reports)
    table = Table(title=f"{args.model} ({args.backend})", title_justify="left")
    columns = (["arm"] if several else []) + ["benchmark", "tasks", "accuracy", "score"]
    columns += (["EM", "F1"] if qa else []) + ["turns", "failed"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "benchmark") else "right")
    for r in reports:
        row = ([r["model"].rsplit(":", 1)[-1]] if several else [])
        row += [r["benchmark"], str(r["tasks"]), f"{r['accuracy']:.3f}", f"{r['score']:.3f}"]
        if qa:
            row += [f"{r['em']:.3f}" if "em" in r else "-", f"{r['f1']:.3f}" if "f1" in r else "-"]
        table.add_row(*row, f"{r['turns']:.1f}", str(r["failed"]))
    return table
