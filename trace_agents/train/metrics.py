"""Per-step metrics as JSON lines, and the plots a person wants to see after a run."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trace_envs.jsonl import read_jsonl

PLOTTED = {  # metric: (title, y-axis label)
    "mixed_trees": ("mixed trees per step", "mixed trees"),
    "effective_ratio": ("mixed trees / prompts opened", "effective ratio"),
    "informative_share": ("trajectories with a non-zero advantage", "share of trajectories"),
    "reward_mean": ("mean reward of the step's rollouts", "mean reward"),
    "cost_trajectory": ("cost per step", "trajectory-equivalents"),
    "cost_turns": ("cost per step", "generated turns"),
    "predictor_brier": ("predictor on the step's backup targets", "Brier score"),
}
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1, 1, 1)))]
"""Marker and line style per allocator, so lines that coincide stay distinguishable."""


class MetricsLog:
    """Append-only JSONL; a resumed run truncates records past its checkpoint before appending."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [record for _, record in read_jsonl(self.path)]

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (written after the checkpoint being resumed)."""
        kept = [r for r in self.read() if r.get("step", -1) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plot_metrics(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per plotted metric (a line per allocator) plus the predictor's reliability curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    by_allocator: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_allocator[r.get("allocator", "run")].append(r)
    written = []
    from matplotlib.ticker import MaxNLocator

    for key, (title, ylabel) in PLOTTED.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
        drawn = False
        for i, (name, rows) in enumerate(sorted(by_allocator.items())):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                marker, linestyle = STYLES[i % len(STYLES)]
                ax.plot(*zip(*points), marker=marker, linestyle=linestyle, label=name,
                        markersize=7 - 1.5 * (i % 3), alpha=0.85)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    curves = [(n, rows[-1]["calibration"]) for n, rows in by_allocator.items()
              if rows and rows[-1].get("calibration")]
    if curves:
        fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        for i, (name, cal) in enumerate(curves):
            marker, linestyle = STYLES[i % len(STYLES)]
            ax.plot(cal["predicted"], cal["observed"], marker=marker, linestyle=linestyle,
                    label=name, alpha=0.85)
        ax.set(xlabel="predicted success", ylabel="observed success", xlim=(0, 1), ylim=(0, 1),
               title="predictor calibration (last step)")
        ax.legend()
        fig.tight_layout()
        path = out / "calibration.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
