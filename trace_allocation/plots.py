"""Figure for the simulator experiments (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path


def plot_results(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("per_step", "ablation", "shapes") if key in result]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "per_step":
            for name, steps in result["per_step"].items():
                ax.plot([s["effective_ratio"] for s in steps], label=name)
            ax.set(title="(a) effective ratio per step", xlabel="step", ylabel="effective ratio", ylim=(0, 1.05))
            ax.legend(fontsize=7)
        else:
            rows = result[key]
            labels = [f"{r['stage1']}/{r['stage2']}" if key == "ablation" else f"({r['roots']},{r['paper_shape'][1]})" for r in rows]
            ax.bar(labels, [r["effective_ratio"] for r in rows], color="tab:blue")
            title = "(b) Stage 1 / Stage 2 ablation" if key == "ablation" else "(c) TRACE tree shapes (M, N)"
            ax.set(title=title, ylabel="effective ratio", ylim=(0, 1.05))
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
