"""`trace-rl train`: train a policy with TRACE (and baselines) at equal sampling budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an agent (TRACE vs baselines at equal budget)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML config (see examples/demo.yaml)")
    source.add_argument("--resume", type=Path, metavar="DIR", help="continue a stopped run")
    p.add_argument("--out", type=Path, help="run directory (metrics.jsonl, plots, checkpoint)")
    p.add_argument("--steps", type=int, help="override the config's number of steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="override any config field by its dotted path, e.g. optim.lr=1e-6 budget.roots=8")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trace_agents.train.config import CONFIG_NAME, ConfigError, load_config
    from trace_agents.train.loop import run as train

    console = Console()
    overrides = {"steps": args.steps} if args.steps else {}
    if args.resume is not None:
        out, config_path = args.resume, args.resume / CONFIG_NAME
    else:
        out, config_path = args.out, args.config
        if out is None:
            console.print("[red]--out DIR is required with --config[/]")
            return 2
    try:
        cfg = load_config(config_path, overrides, args.overrides)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        return 2
    records = train(cfg, out, resume=args.resume is not None, progress=not args.no_progress,
                    console=console)
    _summary(console, records)
    console.print(f"metrics: {out / 'metrics.jsonl'}; plots: {out}/*.png")
    return 0


def _summary(console: Console, records: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="mean over steps")
    for col in ("allocator", "steps", "mixed trees", "effective ratio", "informative", "reward",
                "traj-eq / step", "turns / step"):
        table.add_column(col, justify="right")
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["allocator"], []).append(r)
    for name, rows in by.items():
        mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        table.add_row(name, str(len(rows)), f"{mean('mixed_trees'):.1f}",
                      f"{mean('effective_ratio'):.3f}", f"{mean('informative_share'):.3f}",
                      f"{mean('reward_mean'):.3f}", f"{mean('cost_trajectory'):.1f}",
                      f"{mean('cost_turns'):.1f}")
    console.print(table)
