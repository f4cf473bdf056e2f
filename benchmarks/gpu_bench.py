"""What only a GPU shows: a full training step of the real loop at real model sizes.

    python benchmarks/gpu_bench.py --base DIR --shapes base,qwen3-1.7b --out gpu.json

``DIR`` holds a tokenizer and a ``config.json`` (SmolLM2-135M-Instruct's: the converted folder
under ``$TRACE_RL_CACHE`` has both); the weights are random (seeded), so the figures are speeds
and memory, never accuracy. ``base`` is that config; ``qwen3-1.7b`` is Qwen3-1.7B's body
(28 layers, hidden 2048, GQA 16/8) over the same vocabulary.

Per shape, the arms come from the training loop's own ``build_arms`` (float32 weights, forwards in
bfloat16, the in-process engine sampling from its bfloat16 copy) and each runs a warm-up step and
a timed step: TRACE and GRPO at the same budget (``--roots`` roots with one half-price
continuation each, or as many groups of 4) over the calculator suite's prompts and tools. A
random model never answers, so the episode's end is graded by a coin (the parity of the last
action's length): the update then trains on mixed trees as it would mid-training. Printed and
written to ``--out`` after each shape (a timeout keeps what finished):

- sampling: seconds, generated tokens/s, the engine's mean batch rows and ms per decode step;
- update: seconds, trained tokens/s, peak GPU memory;
- precision: the share of the layers' weights one update at ``--lr`` moves, float32 weights with
  bfloat16 forwards (the loop) against bfloat16 weights (what the loop did before);
- shared prefix: a micro-batch's forward + backward (per `--shared-rows`) in each layout (the rows'
  common prefix once, every row in full, the packed trie with its tree mask), and each one's largest
  log-probability difference from the per-row forward;
- pipeline (``--sections pipeline``): ``--pipeline-steps`` steps of each arm through the loop's
  `Pipeline`, synchronous and asynchronous (``pipeline.staleness`` 1), and the steady-state step
  period (mean time between steps' ends from step 1 on), decode steps, batch rows and stale share
  of each, with TRACE/GRPO ratios: where a decode step costs about the same at any batch size,
  the asynchronous mode's filled tail should show (docs/training.md, "Asynchronous steps").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trace_envs import register_env  # noqa: E402
from trace_envs.calculator.env import CalculatorEnv  # noqa: E402

QWEN3_1_7B = {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "rope_theta": 1_000_000.0, "max_position_embeddings": 40_960}


class CoinCalculatorEnv(CalculatorEnv):
    """The calculator's prompts, tools and turn limit; the episode's end graded by a coin."""

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated or truncated:
            reward = float(len(str(action)) % 2 == 0)
        return obs, float(reward), terminated, truncated, info


ENV_ID = register_env("BenchCoinCalculator", CoinCalculatorEnv)


def random_model(base: Path, shape: str, work: Path) -> Path:
    """A Hugging Face folder with ``base``'s tokenizer and random weights of ``shape``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    path = work / shape
    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = AutoConfig.from_pretrained(base)
    if shape == "qwen3-1.7b":
        config = Qwen3Config(vocab_size=config.vocab_size, tie_word_embeddings=True,
                             bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                             pad_token_id=config.pad_token_id, **QWEN3_1_7B)
    elif shape != "base":
        raise SystemExit(f"unknown shape {shape!r}: base or qwen3-1.7b")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bench_config(model: Path, args: argparse.Namespace, *, steps: int = 2, staleness: int = 0) -> Any:
    from trace_agents.train.config import TrainConfig

    return TrainConfig.model_validate({
        "seed": 0, "steps": steps, "allocators": ["trace", "grpo"],
        "pipeline": {"staleness": staleness}, "checkpoint_every": max(steps, 2),
        "model": {"name": str(model), "dtype": "auto"},
        "backend": {"kind": "hf", "max_concurrency": args.concurrency},
        "env": {"id": ENV_ID, "split": "train",
                "kwargs": {"max_turns": 3, "suite_options": {"steps": 2, "digits": 2, "size": 400}}},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_tokens},
        "budget": {"pool": 2 * args.roots, "roots": args.roots, "continuations_per_root": 1,
                   "continuation_cost": 0.5, "group_size": 4, "m_min": 2, "m_max": 4},
        "predictor": {"kind": "lexical"},
        "optim": {"lr": args.lr, "micro_batch": args.micro_batch, "grad_accum": 4},
    })


def layer_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()
            if ".layers." in k and k.endswith("weight")}


def moved_share(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    after = layer_weights(model)
    moved = sum(int((after[k] != before[k]).sum()) for k in before)
    return moved / sum(v.numel() for v in before.values())


class EngineSplit:
    """Within the block, the engine's busy seconds split into model forwards (prefill and
    decode), per-row token sampling, and the rest (batch bookkeeping), the GPU drained at each
    boundary so the seconds land where they are spent."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.seconds = engine, {"forward": 0.0, "sampling": 0.0}

    def _timed(self, key: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = synced()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[key] += synced() - started
        return wrapper

    def __enter__(self) -> EngineSplit:
        engine, model = self.engine, self.engine.model
        self.busy = engine.stats["busy_s"]
        model.forward, engine._advance = self._timed("forward", model.forward), \
            self._timed("sampling", engine._advance)
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.engine.model.forward, self.engine._advance  # back to the class's methods
        self.seconds["other"] = (self.engine.stats["busy_s"] - self.busy
                                 - self.seconds["forward"] - self.seconds["sampling"])


def synced() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


async def timed_step(arm: Any, cfg: Any, step: int, work: Path,
                     profile: bool = False) -> tuple[dict[str, Any], Any]:
    """The loop's step (sample, update, sync), timed with the GPU drained; the trees come back."""
    from trace_agents.train.loop import step_inputs
    from trace_agents.train.weight_sync import sync_weights

    candidates, budget = step_inputs(arm, cfg)
    engine = arm.backend.engine
    before = dict(engine.stats)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    split = EngineSplit(engine) if profile else contextlib.nullcontext()
    started = synced()
    with split:
        result = await arm.sampler.step(candidates, budget, label=f"step {step} {arm.name}")
    sampled = synced()
    update = arm.updater.update(result.training_trees)
    updated = synced()
    await sync_weights(arm.backend, arm.model, work / "weights" / arm.name)
    steps = engine.stats["decode_steps"] - before["decode_steps"]
    m = result.metrics
    return ({"engine_split_s": split.seconds} if profile else {}) | {
        "sample_s": sampled - started, "episodes": m["episodes"], "turns": m["turns"],
        "mixed_trees": m["mixed_trees"], "generated_tokens": m["generated_tokens"],
        "generated_tokens_per_s": m["generated_tokens"] / (sampled - started),
        "mean_batch_rows": (engine.stats["row_steps"] - before["row_steps"]) / max(steps, 1),
        "ms_per_decode_step": 1e3 * (engine.stats["busy_s"] - before["busy_s"]) / max(steps, 1),
        "update_s": updated - sampled, "samples": update["samples"],
        "trained_tokens": update["trained_tokens"],
        "trained_tokens_per_s": update["trained_tokens"] / (updated - sampled),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }, result


def precision(start: torch.nn.Module, pad_id: int, trees: Any, cfg: Any) -> dict[str, float]:
    """One update on the same trees from the weights that sampled them: float32 weights with
    bfloat16 forwards (the loop) against bfloat16 weights; the share of layer weights each moves."""
    from trace_agents.train.update import PolicyUpdater

    out = {}
    for label, dtype in (("float32_weights", torch.float32), ("bfloat16_weights", torch.bfloat16)):
        model = copy.deepcopy(start).to(dtype)
        before = layer_weights(model)
        PolicyUpdater(model, pad_id=pad_id, config=cfg.optim,
                      compute_dtype=torch.bfloat16).update(trees)
        out[label] = moved_share(before, model)
        del model
    return out


def both_ways(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor,
              repeats: int = 3) -> dict[str, Any]:
    """Forward + backward in bfloat16 in each layout (the rows' common prefix once, every row in
    full, the packed trie with its tree mask): the median seconds of each (after a warm-up round;
    the order alternates), the speed-ups over per-row, and the largest log-probability difference
    from per-row."""
    from trace_agents.models import autocast
    from trace_agents.train.forward import token_logprobs

    ways = {"prefix_once_s": "prefix_once", "per_row_s": "padded", "packed_s": "packed"}
    seconds: dict[str, list[float]] = {label: [] for label in ways}
    values: dict[str, torch.Tensor] = {}
    for i in range(repeats + 1):
        for label in (list(ways) if i % 2 else list(ways)[::-1]):
            model.zero_grad(set_to_none=True)
            started = synced()
            with autocast(model, torch.bfloat16):
                logp = token_logprobs(model, tokens, attention, layout=ways[label])
            (logp * attention.to(logp.device)).sum().backward()
            if i:
                seconds[label].append(synced() - started)
            values[label] = logp.detach().float()
    model.zero_grad(set_to_none=True)
    out: dict[str, Any] = {label: sorted(t)[len(t) // 2] for label, t in seconds.items()}
    out["speedup"] = out["per_row_s"] / out["prefix_once_s"]
    out["packed_speedup"] = out["per_row_s"] / out["packed_s"]
    mask = attention.to(values["per_row_s"].device).bool()
    mask[:, 0] = False
    for label, key in (("prefix_once_s", "max_logprob_diff"), ("packed_s", "packed_max_logprob_diff")):
        out[key] = float((values[label] - values["per_row_s"])[mask].abs().max())
    return out


def shared_prefix(arm: Any, trees: Any, rows: int) -> dict[str, Any]:
    """:func:`both_ways` on the first ``rows`` training samples of a real step's trees."""
    from trace_agents.train.advantages import training_samples
    from trace_agents.train.forward import common_prefix_length
    from trace_agents.train.update import collate, sample_tensors

    samples = training_samples(trees, mode="tree", shared="average")[:rows]
    batch = collate([sample_tensors(s) for s in samples], arm.updater.pad_id)
    return {"rows": len(samples), "tokens": int(batch.attention.sum()),
            "shared_prefix": common_prefix_length(batch.tokens, batch.attention),
            **both_ways(arm.model, batch.tokens, batch.attention)}


def prefix_sweep(shape: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`both_ways` on 8 rows sharing a prefix of each ``--prefix-sweep`` length (random
    tokens, then 256 of each row's own)."""
    from transformers import AutoModelForCausalLM

    path = random_model(args.base, shape, args.work)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).train()
    generator = torch.Generator().manual_seed(0)
    out = []
    for length in args.prefix_sweep:
        prefix = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
        own = torch.randint(0, model.config.vocab_size, (8, 256), generator=generator)
        tokens = torch.cat([prefix.expand(8, -1), own], dim=1)
        row = {"shared": length, "rows": 8, "own": 256,
               **both_ways(model, tokens, torch.ones_like(tokens))}
        print(f"{shape} sweep {row}", flush=True)
        out.append(row)
    return out


def bench_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from trace_agents.train.loop import build_arms

    path = random_model(args.base, shape, args.work)
    cfg = bench_config(path, args)
    started = synced()
    arms = build_arms(cfg, progress=False, warm=False, console=Console(stderr=True))
    report: dict[str, Any] = {"shape": shape, "build_s": synced() - started,
                              "parameters": sum(p.numel() for p in arms[0].model.parameters()),
                              "budget_traj_eq": cfg.budget.total}

    async def steps() -> None:
        for arm in arms:
            await timed_step(arm, cfg, 0, args.work)  # CUDA kernels, allocator pools, lazy imports
            start = copy.deepcopy(arm.model)
            report[arm.name], result = await timed_step(
                arm, cfg, 1, args.work, profile=args.profile and arm.name == "trace")
            print(f"{shape} {arm.name}: {json.dumps(report[arm.name])}", flush=True)
            if arm.name == "trace":
                report["precision"] = precision(start, arm.updater.pad_id, result.training_trees, cfg)
                report["shared_prefix"] = [shared_prefix(arm, result.training_trees, rows)
                                           for rows in args.shared_rows]
                print(f"{shape} precision {report['precision']}, shared prefix "
                      f"{report['shared_prefix']}", flush=True)
            del start
        for arm in arms:
            await arm.backend.aclose()

    asyncio.run(steps())
    return report


def pipeline_periods(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """Each arm's steady-state period, synchronous and with staleness 1, through the loop's own
    `Pipeline` (sampling, update, weight sync per step)."""
    from rich.console import Console

    from trace_agents.train.loop import Pipeline, build_arms

    path = random_model(args.base, shape, args.work)
    report: dict[str, Any] = {}
    for staleness in (0, 1):
        cfg = bench_config(path, args, steps=args.pipeline_steps, staleness=staleness)
        arms = build_arms(cfg, progress=False, warm=False, console=Console(stderr=True))

        async def run(arm: Any) -> dict[str, Any]:
            pipe, stats = Pipeline(arm, cfg, drains={cfg.steps - 1}), arm.backend.engine.stats
            periods, decode, rows, stale, trained = [], [], [], 0, 0
            try:
                for step in range(cfg.steps):
                    before = dict(stats)
                    record = await pipe.step(step, args.work)
                    stale, trained = stale + record["stale_tokens"], trained + record["trained_tokens"]
                    if record["period_s"] is not None:
                        steps = stats["decode_steps"] - before["decode_steps"]
                        periods.append(record["period_s"])
                        decode.append(steps)
                        rows.append((stats["row_steps"] - before["row_steps"]) / max(steps, 1))
            finally:
                await pipe.cancel()
                await arm.backend.aclose()
            return {"period_s": float(np.mean(periods)), "decode_steps": float(np.mean(decode)),
                    "mean_batch_rows": float(np.mean(rows)), "stale_share": stale / max(trained, 1)}

        for arm in arms:
            report[f"{arm.name} s={staleness}"] = asyncio.run(run(arm))
            print(f"{shape} pipeline {arm.name} s={staleness}: {report[f'{arm.name} s={staleness}']}", flush=True)
        for arm in arms:
            arm.env.close()
        del arms
    grpo = report["grpo s=0"]["period_s"]
    report["ratios"] = {k: v["period_s"] / grpo for k, v in report.items() if k != "ratios"}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="tokenizer + config.json folder")
    parser.add_argument("--shapes", default="base,qwen3-1.7b")
    parser.add_argument("--roots", type=int, default=32, help="TRACE roots (budget 1.5x that)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=64, help="engine batch rows")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-6)
    parser.add_argument("--shared-rows", type=int, nargs="+", default=[8, 32],
                        help="micro-batch rows for the shared-prefix comparison")
    parser.add_argument("--prefix-sweep", type=int, nargs="*", default=[],
                        help="only time the shared-prefix forward at these prefix lengths")
    parser.add_argument("--profile", action="store_true",
                        help="split TRACE's timed sampling step into forwards, sampling, the rest")
    parser.add_argument("--sections", default="steps,pipeline",
                        help="steps (timed steps, precision, shared prefix) and/or pipeline")
    parser.add_argument("--pipeline-steps", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    np.random.seed(0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    reports: dict[str, Any] = {"device": device, "torch": torch.__version__, "shapes": {}}
    for shape in args.shapes.split(","):
        sections = args.sections.split(",")
        if args.prefix_sweep:
            reports["shapes"][shape] = {"prefix_sweep": prefix_sweep(shape, args)}
        elif "steps" in sections:
            reports["shapes"][shape] = bench_shape(shape, args)
        if "pipeline" in sections and not args.prefix_sweep:
            reports["shapes"].setdefault(shape, {})["pipeline"] = pipeline_periods(shape, args)
        if args.out:
            args.out.write_text(json.dumps(reports, indent=1))
    print(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
