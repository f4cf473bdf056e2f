"""`trace-rl train`: train a policy with TRACE and baselines at an equal sampling budget.

Each allocator in the config ("arm") trains its own copy of the model on the same prompts at the
same cost. The run folder (--out) gets config.yaml, metrics.jsonl, one plot per metric and a
checkpoint after every step; `--resume DIR` continues a stopped run exactly, and
`trace-rl eval --model DIR` evaluates what it trained.

  trace-rl train --config examples/demo.yaml --out runs/demo
  trace-rl train --resume runs/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from trace_agents.cli import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an agent (TRACE vs baselines at equal budget)",
                              description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML config (see examples/demo.yaml)")
    source.add_argument("--resume", type=Path, metavar="DIR", help="continue a stopped run")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="run folder for a new run (metrics.jsonl, plots, checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out and start again")
    p.add_argument("--steps", type=int, help="override the config's number of steps")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads, overriding the config's `threads` (0, its default: "
                        "one fewer than the CPUs)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the per-step lines are still printed)")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="override any config field by its dotted path, e.g. optim.lr=1e-6 "
                        "budget.roots=8")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from trace_agents.cli.checks import check_backend, check_model, make_env
    from trace_agents.train.config import CONFIG_NAME, ConfigError, load_config
    from trace_agents.train.run_dir import RunExists, holds_run, prepare

    console = Console()
    overrides = {k: v for k, v in (("steps", args.steps), ("threads", args.threads)) if v is not None}
    if args.resume is not None:
        if args.out is not None or args.overwrite:
            raise UserError("--resume continues the run in its own folder: drop --out/--overwrite")
        out, config_path = args.resume, args.resume / CONFIG_NAME
        if not holds_run(out) or not config_path.is_file():
            raise UserError(f"{out} is not a trace-rl run folder (no {CONFIG_NAME} in it)")
    else:
        out, config_path = args.out, args.config
        if out is None:
            raise UserError("--out DIR is required with --config (the folder for this run)")
    try:
        cfg = load_config(config_path, overrides, args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    check_model(cfg.model.name)
    check_backend(cfg.backend.kind, cfg.backend.url)
    make_env(cfg.env.id, {"split": cfg.env.split, **cfg.env.kwargs}, where="env.id").close()
    if args.resume is None:
        try:  # refused here, before the model loads; the loop checks again
            prepare(out, overwrite=False) if not args.overwrite else None
        except RunExists as exc:
            raise UserError(str(exc)) from None
    if args.no_progress:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    from trace_agents.train.loop import run as train

    what = "resuming" if args.resume is not None else "new run"
    console.print(f"{what} in {out}: {cfg.model.name}, {', '.join(cfg.allocators)} on {cfg.env.id}, "
                  f"{cfg.steps} step(s) of {cfg.budget.total:g} trajectories; loading the model",
                  highlight=False)

    records = train(cfg, out, resume=args.resume is not None, overwrite=args.overwrite,
                    progress=not args.no_progress, console=console)
    _summary(console, records)
    console.print(f"metrics: {out / 'metrics.jsonl'}; plots: {out}/*.png\n"
                  f"evaluate it: trace-rl eval --model {out} --bench {config_path} --limit 20 "
                  f"--max-tokens {cfg.sampling.max_tokens}",
                  highlight=False, soft_wrap=True)
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
