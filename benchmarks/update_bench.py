"""The policy update's forward + backward with and without running the rows' shared prefix once.

    python benchmarks/update_bench.py                  # SmolLM2, 8 calculator episodes per micro-batch
    python benchmarks/update_bench.py --model tiny-qwen3 --rows 4 --json
    python benchmarks/update_bench.py --trees --scale 4 --json   # TRACE- vs GRPO-shaped steps, every layout

``--trees``: a TRACE-shaped step (per 3 prompts: 3+3+2 bare rows, one continuation per bare row,
branched at its parent's second turn: 12 traj-eq) against a GRPO-shaped one at the same cost (3
prompts x 4 rows), ``--scale`` times over, cut into the update's micro-batches (8 rows). Rows are
spliced from real calculator demonstrations: a bare row is its task's prompt followed by another
task's episode, a continuation its parent's tokens up to the branch point followed by another
episode's tail, so what rows share is what a real step's rows share. Per layout (padded,
prefix-once, packed): tokens computed, estimated FLOPs (`layout_flops`), forward + backward
seconds, and TRACE / GRPO.

Rows are real calculator episodes (the expert demonstrations the warm-start trains on, rendered
exactly as rollouts are), one per task, so a micro-batch shares what a real one shares: the
system prompt with the tools' schemas. Prints the shared prefix, the tokens computed per
micro-batch, seconds per forward + backward (median of ``--repeats``) both ways, the speed-up,
and the largest log-probability difference between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", type=int, default=8, help="episodes per micro-batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--trees", action="store_true", help="TRACE- vs GRPO-shaped steps in every layout")
    parser.add_argument("--scale", type=int, default=1, help="with --trees: 12 traj-eq x this")
    args = parser.parse_args()

    import gymnasium as gym
    import torch

    import trace_envs  # noqa: F401  (registers the envs)
    from trace_agents.dialects import make_dialect
    from trace_agents.models import load_model
    from trace_agents.train.forward import common_prefix_length, token_logprobs
    from trace_agents.train.update import collate
    from trace_agents.train.warmup import demonstration_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "float32")
    model.train()
    env = gym.make("trace/Calculator-v0", split="train", max_turns=3,
                   suite_options={"steps": 2, "digits": 2, "size": 64}).unwrapped
    dialect = make_dialect(tokenizer, "auto")
    if args.trees:
        demos = [demonstration_tokens(env, task.id, dialect) for task in env.tasks]
        report = tree_layouts(model, [d for d in demos if d], tokenizer.pad_token_id or 0, args)
        print(json.dumps(report) if args.json else "\n".join(
            f"{k}: {v}" for k, v in report.items()))
        return
    rows = [demonstration_tokens(env, task.id, dialect) for task in env.tasks[: args.rows]]
    batch = collate([(ids, mask, mask) for ids, mask in rows], tokenizer.pad_token_id or 0)
    shared = common_prefix_length(batch.tokens, batch.attention)

    def timed(layout: str) -> tuple[float, torch.Tensor]:
        seconds = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            logp = token_logprobs(model, batch.tokens, batch.attention, layout=layout)
            (logp * batch.mask).sum().backward()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds), logp.detach()

    plain_s, plain = timed("padded")
    shared_s, reused = timed("prefix_once")
    valid = batch.attention.bool()
    report = {
        "model": args.model, "rows": len(rows), "threads": args.threads or torch.get_num_threads(),
        "row_tokens": int(batch.attention.sum()), "shared_prefix": shared,
        "tokens_computed_plain": int(batch.attention.sum()),
        "tokens_computed_shared": int(batch.attention.sum()) - (len(rows) - 1) * shared,
        "plain_s": plain_s, "shared_s": shared_s, "speedup": plain_s / shared_s,
        "max_logprob_diff": float((plain - reused)[valid].abs().max()),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.model}: {report['rows']} rows, {report['row_tokens']} tokens, shared prefix "
          f"{shared}: tokens computed {report['tokens_computed_plain']} -> "
          f"{report['tokens_computed_shared']}; forward+backward {plain_s:.2f} s -> {shared_s:.2f} s "
          f"({report['speedup']:.2f}x); max |logprob diff| {report['max_logprob_diff']:.1e}")


def spliced_steps(demos: list[tuple[list[int], list[float]]], scale: int) -> dict[str, list[list[int]]]:
    """Token rows of a TRACE-shaped and a GRPO-shaped step at equal cost (see the module docstring)."""
    def prompt_end(mask: list[float]) -> int:
        return mask.index(1.0)

    def second_turn(mask: list[float]) -> int:  # where the second action starts (else the middle)
        starts = [t for t in range(1, len(mask)) if mask[t] == 1.0 and mask[t - 1] == 0.0]
        return starts[1] if len(starts) > 1 else (prompt_end(mask) + len(mask)) // 2

    donors = iter(range(1, 10**9))  # each splice takes the next episode as its tail

    def episode(i: int) -> tuple[list[int], list[float]]:
        return demos[i % len(demos)]

    def bare(task: int) -> list[int]:
        ids, mask = episode(task)
        donor_ids, donor_mask = episode(task + next(donors))
        return ids[: prompt_end(mask)] + donor_ids[prompt_end(donor_mask):]

    trace, grpo = [], []
    for block in range(scale):
        for j, roots in enumerate((3, 3, 2)):
            task = 3 * block + j
            bares = [bare(task) for _ in range(roots)]
            trace += bares
            for parent in bares:  # one continuation per bare row, from its second turn
                ids, mask = episode(task + next(donors))
                cut = second_turn(mask)
                trace.append(parent[: min(cut, len(parent) - 1)] + ids[cut:])
            grpo += [bare(task) for _ in range(4)]
    return {"trace": trace, "grpo": grpo}


def computed_tokens(tokens, attention, layout: str) -> int:
    """Tokens a layout runs through the model: every padded slot, the common prefix once, or each
    distinct prefix once (the trie's nodes)."""
    from trace_agents.train.forward import common_prefix_length
    from trace_agents.train.packing import pack

    if layout == "padded":
        return int(tokens.numel())
    if layout == "prefix_once":
        return int(attention.sum()) - (tokens.shape[0] - 1) * common_prefix_length(tokens, attention)
    return pack(tokens, attention).nodes


def tree_layouts(model, demos, pad_id: int, args) -> dict:
    """Every layout's tokens, estimated FLOPs and forward + backward seconds on both steps' micro-batches."""
    from trace_agents.train.forward import LAYOUTS, layout_flops, token_logprobs
    from trace_agents.train.update import collate

    report: dict = {"model": args.model, "scale": args.scale, "traj_eq": 12 * args.scale}
    for arm, rows in spliced_steps(demos, args.scale).items():
        micro = [collate([(r, [1.0] * len(r), [1.0] * len(r)) for r in rows[i: i + 8]], pad_id)
                 for i in range(0, len(rows), 8)]
        figures: dict = {"rows": len(rows), "row_tokens": sum(len(r) for r in rows)}
        for layout in LAYOUTS:
            seconds = []
            for _ in range(args.repeats):
                model.zero_grad(set_to_none=True)
                started = time.perf_counter()
                for b in micro:
                    (token_logprobs(model, b.tokens, b.attention, layout=layout) * b.mask).sum().backward()
                seconds.append(time.perf_counter() - started)
            figures[layout] = {
                "tokens": sum(computed_tokens(b.tokens, b.attention, layout) for b in micro),
                "est_flops": sum(layout_flops(model, b.tokens, b.attention)[layout] for b in micro),
                "seconds": statistics.median(seconds)}
        report[arm] = figures
    report["trace_over_grpo"] = {
        layout: {k: report["trace"][layout][k] / report["grpo"][layout][k] for k in ("tokens", "est_flops", "seconds")}
        for layout in LAYOUTS}
    trace, grpo = report["trace"], report["grpo"]
    report["trace_packed_over_grpo_padded_s"] = trace["packed"]["seconds"] / grpo["padded"]["seconds"]
    return report


if __name__ == "__main__":
    main()
