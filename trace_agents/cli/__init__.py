"""The `trace-rl` command line.

Each sub-command lives in its own module of this package with two functions,
``add_parser(subparsers)`` (which must call ``set_defaults(run=run)``) and
``run(args) -> int``; `COMMANDS` lists them in help order.
Modules are imported lazily so `trace-rl --help` stays fast and a sub-command's heavy
dependencies (torch, bm25s, ...) are only imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "demo": "trace_agents.cli.demo",
    "train": "trace_agents.cli.train",
    "eval": "trace_agents.cli.eval",
    "simulate": "trace_agents.cli.simulate",
    "serve-retriever": "trace_agents.cli.serve_retriever",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trace-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
