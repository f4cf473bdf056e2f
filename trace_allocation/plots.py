"""Figure for the simulator experiments (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path


def plot_results(result: dict, path: Path) -> Path:
    """Mixed trees and effective ratio per step for every method (a), then the ablation (b) and
    the tree shapes (c) as bars of effective ratio labelled with their mixed trees per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (["mixed_trees", "effective_ratio"] if "per_step" in result else []) + [k for k in ("ablation", "shapes") if k in result]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key in ("mixed_trees", "effective_ratio"):
            for i, (name, steps) in enumerate(result["per_step"].items()):
                ax.plot([s[key] for s in steps], label=name, color=f"C{i % 10}", linestyle="--" if i >= 10 else "-")
            title = "(a) mixed trees per step" if key == "mixed_trees" else "(a) effective ratio (mixed / opened)"
            ax.set(title=title, xlabel="step", ylabel=key.replace("_", " "))
            if key == "effective_ratio":
                ax.set_ylim(0, 1.05)
            else:
                ax.legend(fontsize=7)
        else:
            rows = result[key]
            labels = [f"{r['stage1']}/{r['stage2']}" if key == "ablation" else f"({r['roots']},{r['paper_shape'][1]})" for r in rows]
            bars = ax.bar(labels, [r["effective_ratio"] for r in rows], color="tab:blue")
            ax.bar_label(bars, labels=[f"{r['mixed_trees']:.0f} mixed" for r in rows], fontsize=7)
            title = "(b) Stage 1 / Stage 2 ablation" if key == "ablation" else "(c) TRACE tree shapes (M, N)"
            ax.set(title=title, ylabel="effective ratio", ylim=(0, 1.05))
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
        points = sorted((r["topic_share"], r["effective_ratio"], r["mixed_trees"]) for r in rows if r["method"] == method)
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
