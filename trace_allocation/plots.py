"""Figure for the simulator experiments (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path

STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"),
          ("*", "-."), ("h", "-"), ("<", "--"), (">", ":")]
"""Marker and line style per method: ten methods stay distinguishable where lines coincide."""


def _cost_note(result: dict, name: str) -> str:
    """``" (cost 3.7x budget)"`` for a method that spent more than the common budget."""
    cost = result.get("compare", {}).get(name, {}).get("cost")
    budget = result.get("scenario", {}).get("budget")
    if cost is None or not budget or cost <= budget * 1.001:
        return ""
    return f" (spent {cost / budget:.1f}x budget)"


def plot_results(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [key for key in ("per_step", "ablation", "shapes") if key in result]
    widths = [2.2 if key == "per_step" else 1 for key in panels] or [1]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * sum(widths) + 2.5, 4.2),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, key in zip(axes[0], panels):
        if key == "per_step":
            for i, (name, steps) in enumerate(result["per_step"].items()):
                marker, linestyle = STYLES[i % len(STYLES)]
                ax.plot([s["step"] for s in steps],
                        [s["effective_ratio"] for s in steps], marker=marker, linestyle=linestyle,
                        markersize=4, alpha=0.85, label=name + _cost_note(result, name))
            ax.set(title="(a) effective ratio per step", xlabel="step", ylabel="effective ratio",
                   ylim=(0, 1.05))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            rows = result[key]
            labels = [f"{r['stage1']}/{r['stage2']}" if key == "ablation" else f"({r['roots']},{r['paper_shape'][1]})" for r in rows]
            bars = ax.bar(labels, [r["effective_ratio"] for r in rows], color="tab:blue")
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
            title = "(b) Stage 1 / Stage 2 ablation" if key == "ablation" else "(c) TRACE tree shapes (M, N)"
            xlabel = "Stage 1 / Stage 2 allocation" if key == "ablation" else "tree shape (M roots, N continuations)"
            ax.set(title=title, xlabel=xlabel, ylabel="effective ratio", ylim=(0, 1.05))
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
