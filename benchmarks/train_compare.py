"""A real learning curve: SmolLM2 trained on the calculator suite with TRACE, GRPO, PCL and DAPO.

    python benchmarks/train_compare.py --out runs/train_compare            # the full run (~6 h, 2 cores)
    python benchmarks/train_compare.py --steps 2 --eval 8 --seeds 0 --out /tmp/tc   # smoke test

Per seed: one format warm-start (cached), then every method trains its own copy of the policy
for `--steps` steps at equal cost (TRACE, GRPO and PCL spend the same trajectory-equivalents per
step; DAPO over-samples up to `--dapo-multiple` x that budget and its real cost is reported), on
the same candidate pools. Held-out accuracy (greedy, `--eval` test problems the policy never
trains on) is measured on the warm-started policy and on each method's final policy.

Prints a table per method (mean over seeds: mixed trees per step, effective ratio, informative
share, cost in trajectory-equivalents and in turns, start and end accuracy with 95% intervals
that resample problems, so the seeds' evaluations of one problem count once, and each method's
accuracy minus every other's paired by problem; wall time), writes `results.json`, and saves plots:
training reward, mixed trees and effective ratio per step (mean over seeds) and accuracy at start
and end. At this scale (a 135M model, a few hundred rollouts per method) the accuracy change of
any method is small next to its confidence interval; what the run can show reliably is the
allocation figures (mixed trees, ratios, costs) on a real, learning policy.

Sizing, measured (session 4, 2 cores, SmolLM2, the defaults): a method-step takes 70-85 s
(sampling 30-100 s at one torch thread, the update on both), so one seed is 80 method-steps plus
5 greedy evaluations, about 2 h, and the three seeds about 6 h: more than the hour the issue
asked for, which would take fewer than 20 steps or a third of the budget (one group a step). A process
holds about 13 GB (four policies with their AdamW states, the engine's caches), so two seeds in
parallel are killed for memory on a 24 GB machine: run one seed per process, one after the
other (`--seeds 0`, then `--seeds 1`, `--seeds 2`; each resumes from its last checkpoint, every
`--checkpoint-every` steps, and the final `--seeds 0 1 2` call reads the results back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trace_agents.backends import make_backend  # noqa: E402
from trace_agents.backends.base import SamplingParams  # noqa: E402
from trace_agents.evaluate import Benchmark, evaluate  # noqa: E402
from trace_agents.models import load_model, set_threads  # noqa: E402
from trace_agents.train.config import TrainConfig  # noqa: E402
from trace_agents.train.loop import run as train, warm_started  # noqa: E402

HEADLINE = ("mixed_trees", "effective_ratio", "informative_share", "prompts_opened",
            "cost_trajectory", "cost_turns", "reward_mean")


def make_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": seed, "steps": args.steps, "allocators": args.methods,
        "model": {"name": args.model},
        "backend": {"kind": "hf", "max_concurrency": 32},
        "env": {"id": "trace/Calculator-v0", "split": "train", "kwargs": env_kwargs(args)},
        "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens},
        "budget": {"pool": args.pool, "roots": args.roots, "continuations_per_root": 1,
                   "continuation_cost": 0.5, "group_size": 4, "m_min": 2, "m_max": 6,
                   "dapo_multiple": args.dapo_multiple},
        "predictor": {"kind": "lexical"},
        "warmup": {"examples": 32, "epochs": 1, "lr": 5e-5},
        "optim": {"lr": args.lr, "micro_batch": 8, "grad_accum": 1, "ppo_epochs": 1},
        "checkpoint_every": args.checkpoint_every, "threads": args.threads,
    })


def env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_turns": 3, "suite_options": {"steps": 2, "digits": 2, "size": args.suite_size}}


def accuracy(model, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    bench = Benchmark("calculator_test", "trace/Calculator-v0", {"split": "test", **env_kwargs(args)})
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    per_task: dict[str, float] = {}

    def seen(episode: Any) -> None:
        per_task[episode.tree.prompt_id] = float(episode.reward or 0.0)  # greedy: one per problem

    async def measure() -> dict[str, Any]:
        backend = make_backend("hf", model, tokenizer, max_concurrency=32)
        try:
            return await evaluate(bench, backend, tokenizer, limit=args.eval, sampling=sampling,
                                  max_concurrency=32, on_episode=seen)
        finally:
            await backend.aclose()

    report = {**asyncio.run(measure()), "per_task": per_task}
    if report["tasks"] < args.eval:
        raise SystemExit(f"only {report['tasks']} test problems; raise --suite-size")
    return report


def problem_means(reports: list[dict[str, Any]]) -> np.ndarray:
    """Each held-out problem's accuracy averaged over the seeds (the same problems every seed)."""
    ids = sorted(set.intersection(*(set(r["per_task"]) for r in reports)))
    return np.array([np.mean([r["per_task"][i] for r in reports]) for i in ids])


def bootstrap_ci(values: np.ndarray, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean, resampling problems: a problem evaluated under
    several seeds is one draw, never counted as independent evidence per seed."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One seed, resumable: a finished seed is read back from ``seed<N>/result.json``, an
    interrupted one continues from its last checkpoint (every ``--checkpoint-every`` steps)."""
    from rich.console import Console
    from safetensors.torch import load_file

    from trace_agents.train.checkpoint import NAME as CHECKPOINT

    cfg = make_config(args, seed)
    out = args.out / f"seed{seed}"
    done, start_file = out / "result.json", args.out / f"seed{seed}-start.json"
    if done.is_file():
        return json.loads(done.read_text())
    console = Console(stderr=True)
    model, tokenizer = load_model(cfg.model.name, "float32")  # as train() does: see build_arms
    warm_started(cfg, model, tokenizer, console)  # cached: train() loads the same weights
    if start_file.is_file():
        start = json.loads(start_file.read_text())
    else:
        start = accuracy(model, tokenizer, args)
        start_file.write_text(json.dumps(start))
    console.print(f"seed {seed}: held-out accuracy after warm-start {start['accuracy']:.3f}")
    began = time.perf_counter()
    resume = (out / CHECKPOINT / "meta.json").is_file()
    records = train(cfg, out, resume=resume, overwrite=not resume,
                    progress=not args.no_progress, console=console)
    seconds = time.perf_counter() - began
    end = {}
    for name in args.methods:
        model.load_state_dict(load_file(str(out / CHECKPOINT / f"model-{name}.safetensors")))
        end[name] = accuracy(model, tokenizer, args)
        console.print(f"seed {seed} {name}: held-out accuracy {end[name]['accuracy']:.3f}")
    result = {"seed": seed, "start": start, "end": end, "records": records, "train_seconds": seconds}
    done.write_text(json.dumps(result))
    return result


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Allocation figures per step (mean over seeds and steps) and held-out accuracy with 95 %
    intervals over problems; ``acc_end_minus[other]``: this method's accuracy minus ``other``'s,
    paired by problem."""
    table = {}
    start = problem_means([r["start"] for r in runs])
    end = {name: problem_means([r["end"][name] for r in runs]) for name in args.methods}
    for name in args.methods:
        rows = [rec for r in runs for rec in r["records"] if rec["allocator"] == name]
        table[name] = {
            **{k: float(np.mean([rec[k] for rec in rows])) for k in HEADLINE},
            "acc_start": float(start.mean()), "acc_start_ci": bootstrap_ci(start),
            "acc_end": float(end[name].mean()), "acc_end_ci": bootstrap_ci(end[name]),
            "acc_end_minus": {other: (float((end[name] - end[other]).mean()),
                                      *bootstrap_ci(end[name] - end[other]))
                              for other in args.methods if other != name},
            "acc_end_by_seed": [r["end"][name]["accuracy"] for r in runs],
            "problems": len(end[name]),
            "skill_positive_share": _positive_share([rec.get("predictor_skill") for rec in rows]),
            "wall_s": float(sum(rec["seconds"] + rec["update_s"] for rec in rows)),
        }
    return table


def _positive_share(skills: list[float | None]) -> float | None:
    """The share of steps whose predictor beat the running base rate (Brier skill > 0), over the
    steps that report one (GRPO and DAPO read no predictor)."""
    known = [x for x in skills if x is not None]
    return sum(x > 0 for x in known) / len(known) if known else None


def print_table(table: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="per step, mean over seeds; accuracy ± 95% half-width (bootstrap over problems)")
    for col in ("method", "mixed", "ratio", "inform", "traj", "turns", "acc 0", "acc end", "wall s"):
        out.add_column(col, justify="right")
    for name, r in table.items():
        acc = lambda key: f"{r[key]:.2f}±{(r[key + '_ci'][1] - r[key + '_ci'][0]) / 2:.2f}"  # noqa: E731
        out.add_row(name, f"{r['mixed_trees']:.1f}", f"{r['effective_ratio']:.2f}",
                    f"{r['informative_share']:.2f}", f"{r['cost_trajectory']:.0f}",
                    f"{r['cost_turns']:.0f}", acc("acc_start"), acc("acc_end"), f"{r['wall_s']:.0f}")
    console = Console(width=120)  # wide enough that a log file keeps every column whole
    console.print(out)
    for name, r in table.items():
        pairs = ", ".join(f"{other} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                          for other, (d, lo, hi) in r["acc_end_minus"].items())
        console.print(f"{name} end accuracy minus (paired over {r['problems']} problems): {pairs}")
        if r["skill_positive_share"] is not None:
            console.print(f"{name} predictor skill > 0 on {r['skill_positive_share']:.0%} of steps")


def plot(runs: list[dict[str, Any]], table: dict[str, dict[str, Any]], args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for name in args.methods:
        for ax, key in zip(axes[:3], ("reward_mean", "mixed_trees", "effective_ratio")):
            per_step = [[rec[key] for rec in r["records"] if rec["allocator"] == name] for r in runs]
            ax.plot(np.mean(per_step, axis=0), marker="o", markersize=3, label=name)
            ax.set(xlabel="step", title=key.replace("_", " "))
    for i, (name, r) in enumerate(table.items()):
        for x, key in ((0, "acc_start"), (1, "acc_end")):
            lo, hi = r[f"{key}_ci"]
            axes[3].errorbar(x + 0.06 * i, r[key], yerr=[[r[key] - lo], [hi - r[key]]], marker="o",
                             capsize=3, color=f"C{i}", label=name if x else None)
    axes[3].set(xticks=[0, 1], xticklabels=["warm-start", f"after {args.steps} steps"],
                title="held-out accuracy (95% CI)", xlim=(-0.5, 1.7))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = args.out / "train_compare.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval", type=int, default=200, help="held-out test problems")
    parser.add_argument("--methods", nargs="+", default=["trace", "grpo", "pcl", "dapo"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pool", type=int, default=32, help="candidate prompts per step")
    parser.add_argument("--roots", type=int, default=8,
                        help="root rollouts M per step (N = 1): 12 trajectory-equivalents, 3 GRPO groups")
    parser.add_argument("--dapo-multiple", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-6)
    parser.add_argument("--max-tokens", type=int, default=48, help="per turn")
    parser.add_argument("--suite-size", type=int, default=1200,
                        help="problems generated; about 18 %% are the test split (1200: 222)")
    parser.add_argument("--out", type=Path, default=Path("runs/train_compare"))
    parser.add_argument("--checkpoint-every", type=int, default=5,
                        help="steps between checkpoints (an interrupted run resumes from the last)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: one fewer than the CPUs while sampling, all of them for "
                             "updates); one process holds ~13 GB, so seeds run one after the other")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(args, seed) for seed in args.seeds]
    table = summarize(runs, args)
    print_table(table)
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
         "table": table, "start": [r["start"] for r in runs],
         "end": [r["end"] for r in runs]}, indent=1))
    print(f"saved {args.out / 'results.json'} and {plot(runs, table, args)}")


if __name__ == "__main__":
    main()
