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
    """Mixed trees and effective ratio per step for every method (a), then the ablation (b) and
    the tree shapes (c) as bars of effective ratio labelled with their mixed trees per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    per_step = ["mixed_trees", "effective_ratio"] if "per_step" in result else []
    panels = per_step + [key for key in ("ablation", "shapes") if key in result]
    widths = [1.6 if key in per_step else 1 for key in panels] or [1]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * sum(widths) + 2.5, 4.2),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, key in zip(axes[0], panels):
        if key in per_step:
            for i, (name, steps) in enumerate(result["per_step"].items()):
                marker, linestyle = STYLES[i % len(STYLES)]
                ax.plot([s["step"] for s in steps], [s[key] for s in steps], marker=marker,
                        linestyle=linestyle, markersize=4, alpha=0.85,
                        label=name + _cost_note(result, name))
            if key == "mixed_trees":
                ax.set(title="(a) mixed trees per step", xlabel="step", ylabel="mixed trees")
            else:
                ax.set(title="(a) effective ratio (mixed / opened)", xlabel="step",
                       ylabel="effective ratio", ylim=(0, 1.05))
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        else:
            rows = result[key]
            labels = [f"{r['stage1']}/{r['stage2']}" if key == "ablation" else f"({r['roots']},{r['paper_shape'][1]})"
                      for r in rows]
            bars = ax.bar(labels, [r["effective_ratio"] for r in rows], color="tab:blue")
            ax.bar_label(bars, labels=[f"{r['effective_ratio']:.2f} ({r['mixed_trees']:.0f} mixed)"
                                       for r in rows], fontsize=7)
            title = "(b) Stage 1 / Stage 2 ablation" if key == "ablation" else "(c) TRACE tree shapes (M, N)"
            xlabel = "Stage 1 / Stage 2 allocation" if key == "ablation" else "tree shape (M roots, N continuations)"
            ax.set(title=title, xlabel=xlabel, ylabel="effective ratio", ylim=(0, 1.05))
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_sweep(rows: list[dict], path: Path, *, marks: dict[str, float] | None = None) -> Path:
    """(e): effective ratio and mixed trees per step of each method against `topic_share`;
    `marks` draws labelled vertical lines (the named worlds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["topic_share"], r["effective_ratio"], r["mixed_trees"])
                        for r in rows if r["method"] == method)
        shares, ratios, mixed = zip(*points)
        style = "--" if "oracle" in method else "-"
        axes[0].plot(shares, ratios, style, marker="o", label=method)
        axes[1].plot(shares, mixed, style, marker="o", label=method)
    for ax, label in zip(axes, ("effective ratio (mixed / opened)", "mixed trees per step")):
        for name, share in (marks or {}).items():
            ax.axvline(share, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate(name, (share, 0.02), xycoords=("data", "axes fraction"), fontsize=8, rotation=90)
        ax.set(xlabel="share of a prompt's difficulty its text reveals (topic_share)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
