"""The predictor gap: TRACE with a learned predictor against `trace_oracle_seen` (exact values,
except E[V_0 | text] for prompts the run has not rolled out), on several seeds and in both cost
units (run: python benchmarks/predictor_gap.py [--seeds 0 1 2] [--methods ...] [--world default]
[--set roots=8 ...]).

Prints, per cost unit and method, each headline figure (mixed trees per step, effective ratio,
informative share, prompts opened, cost in both units) and trees trained, prompts starved and pool
error, per seed, its mean and its standard deviation over seeds, and, for
each method, the share of the text-only model's (`trace`, lexical) gap to `trace_oracle_seen` it
closes, on the means and per seed. One JSON object.

`--world replay --data REC` replays a recording of a real policy (`trace-rl record`; a folder or
a subsample file) at the SmolLM2 run's sizes (`trace_allocation.replay.REAL_RUN`, changed by
`--set`), and adds each learned predictor's per-step Brier skill against the running base rate
and AUC (roots, prefixes) and the Spearman correlation of its Stage 2 values against the
recorded continuation rates (per step, and pooled over the measured steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_allocation.experiments import HEADLINE, WORLDS, allocators, policy_variants, stage1_variants  # noqa: E402
from trace_allocation.replay import (  # noqa: E402
    REAL_RUN,
    SUMMARY,
    Scorecard,
    replay_world,
    score_summary,
    scored,
)
from trace_allocation.simulate import Scenario, SyntheticTasks, simulate  # noqa: E402

FIGURES = (*HEADLINE, "trained_trees", "starved", "pool_error")


def scenario_overrides(pairs: list[str]) -> dict[str, int | float | str]:
    """``FIELD=VALUE`` strings as Scenario fields, each value of its field's type."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(Scenario)}
    out: dict[str, int | float | str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        try:
            out[name] = fields[name](value)
        except ValueError:
            raise SystemExit(f"--set {pair!r}: {name} takes a {fields[name].__name__}") from None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["trace", "trace_blend", "trace_oracle_seen"])
    parser.add_argument("--base", default="trace", help="the text-only method whose gap is measured")
    parser.add_argument("--units", nargs="+", default=["trajectory", "turns"])
    parser.add_argument("--world", choices=[*sorted(WORLDS), "replay"], default="default")
    parser.add_argument("--data", help="with --world replay: the recording (folder or subsample file)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override the world's Scenario fields, e.g. roots=8 steps=20")
    args = parser.parse_args()
    overrides = scenario_overrides(args.set)
    if (args.world == "replay") != (args.data is not None):
        raise SystemExit("--world replay and --data REC go together")
    world, make_world = WORLDS.get(args.world), SyntheticTasks
    if args.data is not None:
        from trace_agents.recording.replay import load_replay

        world, make_world = replay_world(load_replay(args.data), REAL_RUN.with_(**overrides))
    report: dict = {"scenario": dataclasses.asdict(world.with_(**overrides))}
    for unit in args.units:
        rows: dict[str, dict] = {}
        for method in args.methods:
            per_seed = []
            for seed in args.seeds:
                sc = world.with_(seed=seed, cost_unit=unit, **overrides)
                make = (allocators(sc) | stage1_variants(sc) | policy_variants(sc))[method]
                cards: list[Scorecard] = []
                run = simulate(sc, scored(make, cards) if args.data else make, name=method, make_world=make_world)
                per_seed.append({k: run.mean(k) for k in FIGURES} | score_summary(cards, sc.warmup))
            figures = FIGURES + (SUMMARY if args.data else ())
            rows[method] = {k: _mean([s[k] for s in per_seed]) for k in figures}
            for k in figures:
                rows[method][f"{k}_sd"] = _sd([s[k] for s in per_seed])
                rows[method][f"{k}_by_seed"] = [None if s[k] is None else round(s[k], 4) for s in per_seed]
            print(unit, method, json.dumps(rows[method]), file=sys.stderr)
        reference, base = rows.get("trace_oracle_seen"), rows.get(args.base)
        if reference and base:
            for key in ("effective_ratio", "mixed_trees"):
                gap = reference[key] - base[key]
                by_seed = zip(reference[f"{key}_by_seed"], base[f"{key}_by_seed"])
                gaps = [r - b for r, b in by_seed]
                for method, row in rows.items():
                    row[f"gap_closed_{key}"] = (row[key] - base[key]) / gap if gap else None
                    row[f"gap_closed_{key}_by_seed"] = [
                        (m - b) / g if g else None
                        for m, b, g in zip(row[f"{key}_by_seed"], base[f"{key}_by_seed"], gaps)]
        report[unit] = rows
    print(json.dumps(report, indent=1))


def _sd(values):
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


if __name__ == "__main__":
    main()
