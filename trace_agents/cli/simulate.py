"""`trace-rl simulate`: run the TRACE allocation experiments (a)-(d) on the simulator, or (a)-(c)
on a replay of a real policy's recorded outcomes (`--world replay --data REC`).

Thin wrapper: the experiments live in `trace_allocation.experiments`; this module parses flags,
shows progress and tables (rich), saves the JSON and the plot, and prints the JSON last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

QUICK = {"steps": 6, "warmup": 2}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("simulate", help="compare rollout allocators on synthetic rollout trees",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", default=None,
                        help="any of a (allocators), b (ablation), c (shapes), d (props), e (predictability "
                             "sweep, slow); default abcd, abc for a replay")
    parser.add_argument("--world", choices=["default", "paper", "replay"], default="default",
                        help="simulated world, or replay: a recording's outcomes (docs/allocation.md)")
    parser.add_argument("--data", type=Path, default=None,
                        help="with --world replay: a recording (trace-rl record) folder or subsample file")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scenario's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenario and every method")
    parser.add_argument("--cost-unit", choices=["trajectory", "turns"], default="trajectory",
                        help="charge a continuation half a trajectory, or charge exact turns")
    parser.add_argument("--shape-scale", type=float, default=0.25, help="scale of the paper's root counts M in (c)")
    parser.add_argument("--quick", action="store_true", help=f"short runs ({QUICK['steps']} steps) for smoke tests")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    parser.add_argument("--out", type=Path, default=None, help="directory for simulate.json and simulate.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trace_agents.cli import UserError
    from trace_agents.progress import Reporter
    from trace_allocation import experiments

    if args.experiments is None:
        args.experiments = "abc" if args.world == "replay" else "abcd"
    unknown = sorted(set(args.experiments) - set("abcde"))
    if unknown or not args.experiments:
        raise UserError(f"--experiments {args.experiments!r}: use letters from abcde (a allocators, "
                        "b ablation, c shapes, d propositions, e sweep), e.g. --experiments ab")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1 (got {args.steps})")

    scenario, make_world = _world(args)
    scenario = scenario.with_(seed=args.seed, cost_unit=args.cost_unit)
    if args.quick:
        scenario = scenario.with_(**QUICK)
    if args.steps is not None:
        scenario = scenario.with_(steps=args.steps, warmup=min(scenario.warmup, args.steps // 2))
    console = Console(stderr=args.json)
    total = experiments.total_steps(scenario, args.experiments)
    with Reporter("simulate", total=total, enabled=not args.no_progress) as bar:
        result = experiments.run(
            scenario,
            args.experiments,
            shape_scale=args.shape_scale,
            on_step=lambda name, step: bar.advance(info=f"{name} step {step.step}"),
            make_world=make_world,
        )
    _print_tables(console, result)
    if args.out is not None:
        from trace_allocation.plots import plot_results

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "simulate.json").write_text(json.dumps(result, indent=1))
        console.print(f"saved {args.out / 'simulate.json'} and {plot_results(result, args.out / 'simulate.png')}")
        if "sweep" in result:
            from trace_allocation.plots import plot_sweep

            marks = {name: world.topic_share for name, world in experiments.WORLDS.items()}
            console.print(f"saved {plot_sweep(result['sweep'], args.out / 'sweep.png', marks=marks)}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_step"}))
        sys.stdout.flush()
    return 0


def _world(args: argparse.Namespace):
    """The scenario and world factory the flags name; UserError for a bad combination or a
    recording that cannot be read."""
    from trace_agents.cli import UserError
    from trace_allocation import experiments
    from trace_allocation.simulate import SyntheticTasks

    if (args.world == "replay") != (args.data is not None):
        raise UserError("--world replay and --data REC go together (REC: a trace-rl record folder or subsample file)")
    if args.data is None:
        return experiments.WORLDS[args.world], SyntheticTasks
    if set(args.experiments) & set("de"):
        raise UserError("--world replay runs experiments a, b and c only "
                        "(d and e need a synthetic world's ground truth)")
    from trace_agents.recording.replay import load_replay
    from trace_allocation.replay import replay_world

    try:
        return replay_world(load_replay(args.data))
    except ValueError as exc:
        raise UserError(f"--data {args.data}: {exc}") from None


HEADERS = {
    "effective_ratio": "ratio", "cost": "cost", "active_prompts": "open",
    "expected_mixed": "E mix", "realized_mixed": "mixed", "brier": "brier",
    "brier_root": "b@root", "pool_error": "pool", "paper_shape": "paper",
}
LEGEND = ("paper: the paper's tree shape (M, N); ratio: effective ratio; open: prompts opened; "
          "E mix / mixed: expected / realized mixed trees; brier, b@root: predictor Brier on prefixes / roots; "
          "pool: its squared error against the true V0 on the candidate pool (per step means)")


COUNTS = {"cost", "active_prompts", "expected_mixed", "realized_mixed", "roots", "budget"}


def _fmt(value, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "(" + ",".join(map(str, value)) + ")"
    if isinstance(value, float):
        if column in COUNTS:
            return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"
        return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.1e}"
    return str(value)


def _print_tables(console, result: dict) -> None:
    """Tables that fit 80 columns: short headers (LEGEND explains them), no vertical rules."""
    from rich import box
    from rich.table import Table

    from trace_allocation.experiments import HEADLINE

    columns = [*HEADLINE, "trained_trees", "starved", "expected_mixed", "brier", "brier_root", "pool_error"]
    sections = [
        ("(a) allocators at equal budget",
         [{"method": n, **s} for n, s in result.get("compare", {}).items()], ["method"]),
        ("(b) ablation (Table 1)", result.get("ablation", []), ["stage1", "stage2"]),
        ("(c) tree shapes (Table 2)", result.get("shapes", []), ["paper_shape", "roots", "budget"]),
        ("(e) predictability sweep", result.get("sweep", []), ["topic_share", "method"]),
    ]
    printed = False
    for title, rows, keys in sections:
        if not rows:
            continue
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False, collapse_padding=True)
        for column in keys + columns:
            table.add_column(HEADERS.get(column, column), justify="left" if column in keys else "right",
                             no_wrap=True)
        for row in rows:
            table.add_row(*(_fmt(row.get(c), c) for c in keys + columns))
        console.print(table)
        console.print()
        printed = True
    if printed:
        console.print(LEGEND, style="dim", highlight=False)
    if "predictor_scores" in result:
        _print_scores(console, result["predictor_scores"])
    if "propositions" in result:
        table = Table(title="(d) Props 1-3", title_justify="left", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False)
        table.add_column("check")
        table.add_column("holds")
        table.add_column("figures")
        for name, check in result["propositions"].items():
            figures = ", ".join(f"{k}={_fmt(v) if not isinstance(v, list) else [round(x, 3) for x in v]}"
                                for k, v in check.items() if k != "holds")
            table.add_row(name, str(check["holds"]), figures)
        console.print(table)


def _print_scores(console, scores: dict) -> None:
    """The replay world's predictor scores, per method with a predictor."""
    from rich import box
    from rich.table import Table

    table = Table(title="predictors on the recorded outcomes (before each refit; per step means)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    columns = ["skill_root", "skill_positive", "auc_root", "skill_prefix", "auc_prefix", "spearman_prefix",
               "spearman_pooled"]
    table.add_column("method")
    for column in columns:
        table.add_column(column.replace("_prefix", "@pre").replace("_root", "@root"), justify="right", no_wrap=True)
    for name, row in scores.items():
        table.add_row(name, *(_fmt(row.get(c), c) for c in columns))
    console.print(table)
    console.print("skill: Brier skill against the run's base rate so far; spearman: Stage 2's candidate values against "
                  "the recorded continuation rates (per step, and pooled over the measured steps)",
                  style="dim", highlight=False)
