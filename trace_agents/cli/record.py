"""`trace-rl record`: a real policy's rollout trees, dense, for replaying allocators at any budget.

Per prompt of the config's env (its split, in a seeded order): --bare rollouts; then, for the
first --prefix-rollouts of them, --continuations episodes from every non-final turn; the
policy's last-layer hidden states at the prompt and at each prefix. Written in chunks to --out;
run the same command again to continue a stopped recording (or to extend it to more --prompts).

  trace-rl record --config examples/demo.yaml --warm-start --out rec/warm --prompts 64
  trace-rl record --config examples/demo.yaml --model runs/demo --arm grpo --out rec/grpo
  trace-rl record --from rec/warm --sample 20 --out tests/data/small.npz

--model takes what `trace-rl eval --model` takes (default: the config's model); --warm-start
applies the config's cached format warm-start to a base model first. The format and how to
read it back: docs/allocation.md, "Recording a real policy".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from trace_agents.cli import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("record", help="record a policy's rollout trees and outcomes",
                              description=__doc__)
    p.add_argument("--config", type=Path, help="training config whose env, sampling and seed to use")
    p.add_argument("--out", type=Path, required=True,
                   help="recording folder (a .npz file with --sample)")
    p.add_argument("--model", help="smollm2, tiny-qwen3, a Hugging Face folder or a trace-rl "
                                   "train run folder (default: the config's model)")
    p.add_argument("--arm", help="with a run folder holding several allocators: which one")
    p.add_argument("--warm-start", action="store_true",
                   help="apply the config's format warm-start to the base model first")
    p.add_argument("--prompts", type=int, default=512,
                   help="prompts to record (rounded up to whole chunks, at most the split)")
    p.add_argument("--bare", type=int, default=8, help="bare rollouts per prompt")
    p.add_argument("--prefix-rollouts", type=int, default=2,
                   help="bare rollouts per prompt whose every non-final turn is continued")
    p.add_argument("--continuations", type=int, default=2, help="continuations per prefix")
    p.add_argument("--chunk", type=int, default=32, help="prompts per chunk file")
    p.add_argument("--batch", type=int, default=64,
                   help="engine batch rows (and rows per hidden-state forward)")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="start no new chunk after S seconds (run again to continue)")
    p.add_argument("--seed", type=int, help="prompt order and sampling seed (default: the config's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: the config's `threads`)")
    p.add_argument("--from", dest="source", type=Path, metavar="REC",
                   help="with --sample: the recording to subsample")
    p.add_argument("--sample", type=int, metavar="N",
                   help="write N prompts of --from's recording, drawn at random, to one file")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="override config fields by dotted path, e.g. env.kwargs.suite_options.size=640")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.sample is not None or args.source is not None:
        return _subsample(args)
    if args.config is None:
        raise UserError("--config is required: the training config whose env and sampling to use")
    for name in ("prompts", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    from trace_agents.recording.recorder import Plan

    try:  # checked before the model loads; the seed is filled in from the config later
        Plan(args.bare, args.prefix_rollouts, args.continuations, args.chunk)
    except ValueError as exc:
        raise UserError(f"{exc} (--bare, --prefix-rollouts, --continuations, --chunk)") from None
    return _record(args)


def _subsample(args: argparse.Namespace) -> int:
    from trace_agents.recording.format import load_recording, subsample, write_chunk

    if args.sample is None or args.source is None:
        raise UserError("--sample N and --from REC go together (a subsample of a recording)")
    if args.sample < 1:
        raise UserError(f"--sample must be at least 1 (got {args.sample})")
    try:
        small = subsample(load_recording(args.source), args.sample, seed=args.seed or 0)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_chunk(args.out, small)
    Console().print(f"wrote {len(small.prompts)} prompts ({args.out.stat().st_size / 1e6:.2f} MB) "
                    f"to {args.out}", highlight=False)
    return 0


def _policy(args: argparse.Namespace, cfg: Any, console: Console) -> tuple[str, Any, Any]:
    """(label, model, tokenizer): the policy to record, in the config's compute dtype."""
    from trace_agents.cli.checks import model_loaders
    from trace_agents.models import compute_dtype, load_model

    name = args.model or cfg.model.name
    loaders = model_loaders(name, [args.arm] if args.arm else None)
    if len(loaders) > 1:
        raise UserError(f"{name} holds several trained allocators: name one with --arm "
                        f"({', '.join(label.rsplit(':', 1)[-1] for label, _ in loaders)})")
    label, load = loaders[0]
    if not args.warm_start:
        model, tokenizer = load()
        return label, model, tokenizer
    if not cfg.warmup.examples:
        raise UserError("--warm-start: the config has no warm-start (warmup.examples is 0)")
    if label != name or name != cfg.model.name:
        raise UserError("--warm-start applies the config's warm-start to the config's own base "
                        f"model ({cfg.model.name}), not to {name}")
    from trace_agents.train.loop import warm_started

    model, tokenizer = load_model(name, "float32")
    warm_started(cfg, model, tokenizer, console)
    return f"{label}+warm-start", model.to(compute_dtype(cfg.model.dtype)).eval(), tokenizer


def _record(args: argparse.Namespace) -> int:
    import asyncio

    from trace_agents.backends.base import SamplingParams
    from trace_agents.cli.checks import make_env
    from trace_agents.models import set_threads
    from trace_agents.progress import Reporter
    from trace_agents.recording.recorder import Plan, make_meta, record
    from trace_agents.train.config import ConfigError, load_config

    console, status = Console(), Console(stderr=True)
    try:
        cfg = load_config(args.config, {}, args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    spec = {"id": cfg.env.id, "split": cfg.env.split, "kwargs": cfg.env.kwargs}
    env = make_env(cfg.env.id, {"split": cfg.env.split, **cfg.env.kwargs}, where="env.id")
    try:  # closed on every path: no tool server outlives the command
        set_threads(cfg.threads if args.threads is None else args.threads)
        if args.no_progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        label, model, tokenizer = _policy(args, cfg, status)
        plan = Plan(args.bare, args.prefix_rollouts, args.continuations, args.chunk,
                    cfg.seed if args.seed is None else args.seed)
        sampling = SamplingParams(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  max_tokens=cfg.sampling.max_tokens)
        meta = make_meta(label, model, env, spec, sampling, cfg.model.dialect, plan)
        target = min(-(-args.prompts // args.chunk) * args.chunk, len(env.tasks))
        console.print(f"recording {label} ({meta.weights}) on {cfg.env.id} {cfg.env.split}: {target} of "
                      f"{len(env.tasks)} prompts, {plan.bare} bare rollouts each, {plan.continuations} "
                      f"continuations from every non-final turn of {plan.prefix_rollouts}, device "
                      f"{next(model.parameters()).device}, batch {args.batch}", highlight=False,
                      soft_wrap=True)
        tally = {"episodes": 0, "reward": 0.0, "prompts": 0}

        with Reporter(f"record {args.out.name}", total=target, console=status,
                      enabled=not args.no_progress) as bar:
            def seen(episode: Any) -> None:
                tally["episodes"] += 1
                tally["reward"] += episode.reward or 0.0

            def written(k: int, records: list[Any], seconds: float) -> None:
                n = sum(len(p.bare) + sum(len(x.continuations) for x in p.prefixes) for p in records)
                tally["prompts"] = records[-1].index + 1
                bar.advance(len(records), info=f"{tally['reward'] / max(tally['episodes'], 1):.2f} "
                                               "mean reward")
                console.print(f"chunk {k}: prompts {records[0].index}-{records[-1].index} written "
                              f"({tally['prompts']}/{target}), {n} episodes in {seconds:.1f} s "
                              f"({n / seconds:.1f} episodes/s)", highlight=False,
                              soft_wrap=True)

            try:
                held = asyncio.run(record(args.out, model, tokenizer, env, meta, prompts=target,
                                          batch=args.batch, max_seconds=args.max_seconds,
                                          on_episode=seen, on_chunk=written))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        console.print(f"{args.out} holds {held} prompts; read it with "
                      "trace_agents.recording.load_recording", highlight=False, soft_wrap=True)
        return 0
    finally:
        env.close()
