"""The `trace-rl` command line.

Each sub-command lives in its own module of this package with two functions,
``add_parser(subparsers)`` (which must call ``set_defaults(run=run)``) and
``run(args) -> int``; `COMMANDS` lists them in help order.
Modules are imported lazily so `trace-rl --help` stays fast and a sub-command's heavy
dependencies (torch, bm25s, ...) are only imported when it runs.

Errors: a sub-command raises `UserError` for anything the user can fix; `main` prints it in one
or two lines and exits 2. Any other exception prints one line and exits 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS: dict[str, str] = {
    "demo": "trace_agents.cli.demo",
    "train": "trace_agents.cli.train",
    "eval": "trace_agents.cli.eval",
    "simulate": "trace_agents.cli.simulate",
    "record": "trace_agents.cli.record",
    "serve-retriever": "trace_agents.cli.serve_retriever",
}


DESCRIPTION = """Train tool-using LLM agents with RL: forkable tool envs, rollout trees, TRACE.

first hour:
  trace-rl demo                                              # env.fork() in one second
  trace-rl train --config examples/tiny.yaml --out runs/tiny # the whole loop, ~1 min
  trace-rl eval --model runs/tiny --bench examples/tiny.yaml --limit 5
  trace-rl COMMAND --help                                    # options and defaults
"""


class UserError(Exception):
    """A problem the user can fix: the message says what and how, in one or two lines."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions' line breaks and appends each option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    try:
        return version("trace-rl")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trace-rl", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"trace-rl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback when something fails")
    return parser


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except UserError as exc:
        if args.debug:
            raise
        error(str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001  (anything else: one line, traceback on --debug)
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error(f"{type(exc).__name__}: {first}\n(run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
