"""The policy update's forward + backward with and without running the rows' shared prefix once.

    python benchmarks/update_bench.py                  # SmolLM2, 8 calculator episodes per micro-batch
    python benchmarks/update_bench.py --model tiny-qwen3 --rows 4 --json

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
    rows = [demonstration_tokens(env, task.id, dialect) for task in env.tasks[: args.rows]]
    batch = collate([(ids, mask, mask) for ids, mask in rows], tokenizer.pad_token_id or 0)
    shared = common_prefix_length(batch.tokens, batch.attention)

    def timed(min_shared: int) -> tuple[float, torch.Tensor]:
        seconds = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            logp = token_logprobs(model, batch.tokens, batch.attention, min_shared=min_shared)
            (logp * batch.mask).sum().backward()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds), logp.detach()

    plain_s, plain = timed(10**9)
    shared_s, reused = timed(1)
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


if __name__ == "__main__":
    main()
