"""Markdown tables and goal checks from `predictor_gap.py` JSON files (run: python
benchmarks/replay_tables.py runs/replay/warm-1x.json ... [--goal-ratio 1.2]).

Per file and cost unit: each method's mixed trees a step (mean ± sd over seeds), effective
ratio, prompts opened, cost in both units, and, where it has a predictor, its root Brier skill
and AUC and its Stage 2 Spearman (pooled over the measured steps); then the share of seeds on
which `trace` holds at least `--goal-ratio` x GRPO's mixed trees and at least PCL's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("mixed_trees", "effective_ratio", "prompts_opened", "cost_trajectory", "cost_turns",
           "skill_root", "auc_root", "spearman_pooled")


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "mixed_trees" and row.get("mixed_trees_sd") is not None:
        return f"{value:.2f} ± {row['mixed_trees_sd']:.2f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _goals(rows: dict, goal_ratio: float, method: str) -> str:
    if not {"grpo", "pcl", method} <= rows.keys():
        return ""
    ours, grpo, pcl = (rows[m]["mixed_trees_by_seed"] for m in (method, "grpo", "pcl"))
    above_grpo = sum(t >= goal_ratio * g for t, g in zip(ours, grpo))
    above_pcl = sum(t >= p for t, p in zip(ours, pcl))
    mean = rows[method]["mixed_trees"] / rows["grpo"]["mixed_trees"] if rows["grpo"]["mixed_trees"] else float("nan")
    return (f"{method}: {mean:.2f}x GRPO's mixed trees on the means; >= {goal_ratio}x GRPO on {above_grpo} of "
            f"{len(ours)} seeds, >= PCL on {above_pcl} of {len(ours)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--goal-ratio", type=float, default=1.2)
    parser.add_argument("--goal-methods", nargs="+", default=["trace"])
    args = parser.parse_args()
    for path in args.files:
        report = json.loads(path.read_text())
        for unit, rows in report.items():
            if unit == "scenario":
                continue
            print(f"\n{path.name}, {unit}\n")
            print("| method | " + " | ".join(COLUMNS) + " |")
            print("|---" * (len(COLUMNS) + 1) + "|")
            for method, row in rows.items():
                print(f"| {method} | " + " | ".join(_cell(row, k) for k in COLUMNS) + " |")
            for method in args.goal_methods:
                line = _goals(rows, args.goal_ratio, method)
                if line:
                    print(f"\n{line}")


if __name__ == "__main__":
    main()
