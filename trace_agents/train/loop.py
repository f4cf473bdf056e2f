"""The training loop: each allocator trains its own copy of the policy at equal sampling budget.

One step of one run ("arm"): draw the candidate pool (the same pools for every arm), let the
TRACE sampler grow rollout trees (Stage 1 roots, bare rollouts, Stage 2 continuations; the
shared predictor is refit on the backup targets), update the policy on the trees' tree-aware
advantages, and sync the new weights to the inference engine. After every step all arms are
checkpointed together, so ``--resume`` continues exactly where a stopped run left off.

Asynchronous steps (``pipeline.staleness`` s > 0): step j+1's sampling starts once update j-s is
done (``pipeline.launch: tail``: not before step j's bare rollouts have all ended), so a TRACE
step's tail of continuations shares the engine with the next step's bare rollouts instead of
running at a small batch. Each step keeps its own budget (charged to the step that planned it);
every turn records the policy version it was sampled by, and the update corrects older tokens
(``trace_agents.train.update``). The update runs off the event loop, so the next step's
episodes keep planning and stepping their envs meanwhile; an in-process engine pauses (one
device: they take turns), a server keeps generating. The pipeline drains at each checkpoint,
so a checkpoint holds no work in flight and ``--resume`` restarts it exactly as the
uninterrupted run did (the same event order given, the same run: which tokens land before an
update depends on timing, and the docs say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from rich.console import Console

import trace_envs  # noqa: F401  (registers the envs)
from trace_agents.backends import make_backend
from trace_agents.backends.base import Backend, SamplingParams
from trace_agents.backends.hf import HFBackend
from trace_agents.models import compute_dtype, load_model, set_threads, threads_alone
from trace_agents.policy_states import PolicyStates
from trace_agents.rollout import RolloutRunner
from trace_agents.sampler import Candidate, StepResult, TraceSampler
from trace_agents.train import run_dir
from trace_agents.train.checkpoint import load_checkpoint, save_checkpoint
from trace_agents.train.config import CONFIG_NAME, TrainConfig
from trace_agents.train.metrics import MetricsLog, plot_metrics
from trace_agents.train.tracking import open_sinks
from trace_agents.train.update import PolicyUpdater
from trace_agents.train.weight_sync import sync_weights
from trace_allocation.allocators import (
    Allocator, DapoAllocator, GrpoAllocator, PclAllocator, TreeAllocator,
)
from trace_allocation.budget import Budget
from trace_allocation.predictors import (
    BetaBernoulliPredictor, BlendedPredictor, LexicalPredictor, PolicyStatePredictor, SkillShrunk,
    SuccessPredictor, reliability_curve,
)
from trace_allocation.tree import backup_targets
from trace_envs import ToolEnv

METRICS_NAME = "metrics.jsonl"


def make_predictor(cfg: TrainConfig, states: PolicyStates | None = None) -> SuccessPredictor:
    """The config's predictor; ``policy`` reads ``states`` (the lexical model without them)."""
    kind, options = cfg.predictor.kind, dict(cfg.predictor.options)
    if kind == "policy" and states is not None:
        return PolicyStatePredictor(states, **options)
    if kind in ("lexical", "policy"):
        return LexicalPredictor(seed=cfg.seed, **options)
    if kind == "beta":
        return BetaBernoulliPredictor(**options)
    if kind == "blend":
        return BlendedPredictor(LexicalPredictor(seed=cfg.seed), **options)
    from trace_allocation.predictors import EncoderPredictor

    return EncoderPredictor(**options)


def make_allocator(name: str, cfg: TrainConfig, rng: np.random.Generator,
                   states: PolicyStates | None = None) -> Allocator:
    b = cfg.budget
    if name == "trace":
        predictor = make_predictor(cfg, states)
        return TreeAllocator(SkillShrunk(predictor) if cfg.predictor.shrink else predictor,
                             continuations_per_root=b.continuations_per_root, m_min=b.m_min, m_max=b.m_max,
                             group_size=b.group_size, min_prompts=b.min_prompts, rng=rng, name="trace")
    if name == "random_branch":
        return TreeAllocator(None, continuations_per_root=b.continuations_per_root,
                             roots="uniform", prefixes="uniform", group_size=b.group_size,
                             rng=rng, name="random_branch")
    if name == "grpo":
        return GrpoAllocator(b.group_size, rng=rng)
    if name == "pcl":
        return PclAllocator(make_predictor(cfg, states), b.group_size)
    if name == "dapo":
        batch = max(1, int(b.total) // b.group_size)
        return DapoAllocator(b.group_size, batch_prompts=batch, rng=rng, budget_multiple=b.dapo_multiple)
    raise ValueError(f"unknown allocator {name!r}")


PREDICTOR_READERS = ("trace", "pcl")
"""The allocators whose plans read the success predictor."""

STATE_BACKENDS = ("hf", "sglang")
"""The engines that return the policy's hidden states (``predictor.kind: policy``)."""


@dataclass
class Arm:
    """One allocator's run: its own policy copy, optimiser, predictor and RNG streams."""

    name: str
    env: ToolEnv
    model: torch.nn.Module
    updater: PolicyUpdater
    backend: Backend
    runner: RolloutRunner
    sampler: TraceSampler
    data_rng: np.random.Generator
    alloc_rng: np.random.Generator

    def state(self) -> dict[str, Any]:
        predictor = self.sampler.allocator.predictor
        return {
            "data_rng": self.data_rng.bit_generator.state,
            "alloc_rng": self.alloc_rng.bit_generator.state,
            "runner_rng": self.runner.rng.bit_generator.state,
            "sampler_steps": self.sampler.steps,
            "outcomes_seen": self.sampler.seen,
            "predictor": None if predictor is None else predictor.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.data_rng.bit_generator.state = state["data_rng"]
        self.alloc_rng.bit_generator.state = state["alloc_rng"]
        self.runner.rng.bit_generator.state = state["runner_rng"]
        self.sampler.steps = int(state["sampler_steps"])
        self.sampler.seen = [float(x) for x in state.get("outcomes_seen", (0.0, 0.0))]
        predictor = self.sampler.allocator.predictor
        if predictor is not None:
            predictor.load_state_dict(state["predictor"])


def warm_started(cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any, console: Console) -> None:
    """Apply the config's format warm-start, cached on disk by everything that determines it."""
    from safetensors.torch import load_file, save_file

    from trace_agents.models import cache_dir
    from trace_agents.train.warmup import warm_start

    w = cfg.warmup
    key = json.dumps([cfg.model.model_dump(), cfg.env.model_dump(), w.model_dump(), cfg.seed],
                     sort_keys=True)
    path = cache_dir() / "warmup" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        console.print(f"format warm-start: loaded from cache {path}")
        return
    with gym.make(cfg.env.id, split=cfg.env.split, **cfg.env.kwargs) as env, threads_alone(cfg.threads):
        stats = warm_start(model, tokenizer, env, examples=w.examples, epochs=w.epochs, lr=w.lr,
                           seed=cfg.seed, dialect=cfg.model.dialect,
                           compute_dtype=compute_dtype(cfg.model.dtype))
    console.print(f"format warm-start: {stats['examples']} demonstrations, loss "
                  f"{stats['loss_first']:.3f} → {stats['loss_last']:.3f}, {stats['seconds']:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))


def build_arms(cfg: TrainConfig, *, progress: bool, warm: bool,
               console: Console) -> list[Arm]:
    """One arm per allocator. Each trains float32 weights with its forwards in the config's dtype
    (mixed precision, :func:`~trace_agents.models.autocast`); the in-process engine samples from
    its own copy in that dtype when it is not float32, refreshed after every update."""
    base, tokenizer = load_model(cfg.model.name, "float32")
    precision = compute_dtype(cfg.model.dtype)
    if warm and cfg.warmup.examples:
        warm_started(cfg, base, tokenizer, console)
    if cfg.predictor.kind == "policy" and cfg.backend.kind not in STATE_BACKENDS:
        console.print(f"[yellow]predictor.kind policy: {cfg.backend.kind} returns no hidden states; "
                      "the lexical model stands in[/]")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = SamplingParams(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                              max_tokens=cfg.sampling.max_tokens)
    arms: list[Arm] = []
    try:
        for i, name in enumerate(cfg.allocators):
            model = base if i == len(cfg.allocators) - 1 else copy.deepcopy(base)
            arms.append(_arm(name, cfg, model, tokenizer, precision, sampling, pad_id, progress))
    except BaseException:  # the envs made so far may own tool servers: stop them
        close_envs(arms)
        raise
    return arms


def close_envs(arms: list[Arm]) -> None:
    for arm in arms:
        arm.env.close()


def _arm(name: str, cfg: TrainConfig, model: torch.nn.Module, tokenizer: Any, precision: torch.dtype,
         sampling: SamplingParams, pad_id: int, progress: bool) -> Arm:
    alloc_rng = np.random.default_rng(cfg.seed)
    engine_model = model
    if cfg.backend.kind == "hf" and precision != torch.float32:
        engine_model = copy.deepcopy(model).to(precision).eval()
    backend = make_backend(cfg.backend.kind, engine_model, tokenizer, url=cfg.backend.url,
                           model_name=cfg.model.name, timeout_s=cfg.backend.timeout_s,
                           max_concurrency=cfg.backend.max_concurrency)
    states = None
    if cfg.predictor.kind == "policy" and name in PREDICTOR_READERS and cfg.backend.kind in STATE_BACKENDS:
        states = PolicyStates(backend)
        # the in-process engine returns each turn's prompt state from its prefill: prefixes come free
        sampling = replace(sampling, return_hidden_states=cfg.backend.kind == "hf")
    runner = RolloutRunner(backend, tokenizer=tokenizer, sampling=sampling,
                           max_concurrency=cfg.backend.max_concurrency, seed=cfg.seed,
                           dialect=cfg.model.dialect)
    # overlapping steps would draw their progress bars over each other: their lines suffice
    sampler = TraceSampler(runner, make_allocator(name, cfg, alloc_rng, states),
                           progress=progress and not cfg.pipeline.staleness, states=states)
    updater = PolicyUpdater(model, pad_id=pad_id, config=cfg.optim, compute_dtype=precision)
    env = gym.make(cfg.env.id, split=cfg.env.split, **cfg.env.kwargs)  # last: nothing after it can fail
    return Arm(name, env, model, updater, backend, runner, sampler, np.random.default_rng(cfg.seed),
               alloc_rng)


def _calibration(trees: list[Any], predictor: SuccessPredictor | None) -> dict[str, Any] | None:
    """Reliability of the predictor (already refit on this step) over the step's prefixes."""
    if predictor is None:
        return None
    texts, targets, _ = backup_targets(trees)
    if not texts:
        return None
    curve = reliability_curve(predictor.predict(texts), targets, n_bins=5)
    keep = curve.counts > 0
    return {"predicted": curve.predicted[keep].tolist(), "observed": curve.observed[keep].tolist()}


def step_inputs(arm: Arm, cfg: TrainConfig) -> tuple[list[Candidate], Budget]:
    """The step's candidate pool (drawn from the arm's data stream) and its sampling budget."""
    pool = min(cfg.budget.pool, len(arm.env.tasks))
    picks = arm.data_rng.choice(len(arm.env.tasks), pool, replace=False)
    candidates = [Candidate(arm.env, arm.env.tasks[int(i)].id) for i in picks]
    budget = Budget.for_allocator(arm.sampler.allocator, cfg.budget.total,
                                  continuation_cost=cfg.budget.continuation_cost)
    return candidates, budget


def launch(arm: Arm, step: int, cfg: TrainConfig,
           on_tail: Callable[[], None] | None = None) -> asyncio.Task[StepResult]:
    """Start the step's sampling (its pool and budget drawn now, in step order)."""
    candidates, budget = step_inputs(arm, cfg)
    return asyncio.create_task(arm.sampler.step(candidates, budget, label=f"step {step} {arm.name}",
                                                on_tail=on_tail))


def engine_paused(backend: Backend) -> contextlib.AbstractContextManager[Any]:
    """An in-process engine decodes nothing while the update runs (it samples from the very
    weights being changed, on the same device); a server's engine keeps generating."""
    return backend.paused() if isinstance(backend, HFBackend) else contextlib.nullcontext()


async def run_step(arm: Arm, step: int, cfg: TrainConfig, out_dir: Path,
                   sampling: asyncio.Task[StepResult] | None = None) -> dict[str, Any]:
    """Sample (or await the sampling ``launch`` started ahead), update, sync the weights."""
    result = await (sampling or launch(arm, step, cfg))

    def update() -> dict[str, Any]:
        with engine_paused(arm.backend), threads_alone(cfg.threads):  # every core to the update
            return arm.updater.update(result.training_trees, version=step)

    started = time.perf_counter()
    # off the event loop: the next step's episodes keep planning and stepping their envs (and a
    # server keeps generating for them) while the policy updates
    stats = await asyncio.to_thread(update)
    update_s = time.perf_counter() - started
    sync = await sync_weights(arm.backend, arm.model, out_dir / "weights" / arm.name)
    arm.runner.policy_version = step + 1
    record = {**result.metrics, "step": step, "allocator": arm.name, **stats,
              "update_s": update_s, "weight_sync": sync,
              "calibration": _calibration(result.trees, arm.sampler.allocator.predictor)}
    return record


class Pipeline:
    """One arm's steps in flight. Step j+1 starts once update j-``staleness`` is done and no drain
    (a checkpoint, the run's stop) lies between them, and (``launch: tail``) once step j's bare
    rollouts have all ended, only its continuations left; with staleness 0 each step starts when
    it is due, after the previous update."""

    def __init__(self, arm: Arm, cfg: TrainConfig, drains: set[int]) -> None:
        self.arm, self.cfg, self.drains = arm, cfg, drains
        self.sampling: dict[int, asyncio.Task[StepResult]] = {}
        self.tails: set[int] = set()
        """Steps whose bare rollouts have all ended (or whose sampling has)."""
        self.updated = 0
        """Updates done: step j may start once ``j <= updated + staleness``."""
        self.finished: float | None = None

    def _tail(self, step: int) -> None:
        self.tails.add(step)
        self._launch_ahead()

    def _launch_ahead(self) -> None:
        """Start the next step while the newest one running is in its tail, as far as allowed."""
        while self.sampling:
            last = max(self.sampling)
            nxt = last + 1
            waits = self.cfg.pipeline.launch == "tail" and last not in self.tails
            if (waits or nxt >= self.cfg.steps or last in self.drains
                    or nxt > self.updated + self.cfg.pipeline.staleness):
                return
            self.sampling[nxt] = launch(self.arm, nxt, self.cfg, functools.partial(self._tail, nxt))

    async def step(self, step: int, out_dir: Path) -> dict[str, Any]:
        self.updated = step
        if step not in self.sampling:
            self.sampling[step] = launch(self.arm, step, self.cfg, functools.partial(self._tail, step))
        self._launch_ahead()  # the update just done may allow the next step
        try:  # kept in ``sampling`` while it runs: its tail starts the next step
            record = await run_step(self.arm, step, self.cfg, out_dir, self.sampling[step])
        finally:
            self.sampling.pop(step, None)
        now = time.perf_counter()
        record["period_s"] = None if self.finished is None else now - self.finished
        record["in_flight"] = len(self.sampling)
        self.finished = now
        return record

    async def cancel(self) -> None:
        """Stop the sampling still in flight (a failed or stopped run)."""
        for task in self.sampling.values():
            task.cancel()
        await asyncio.gather(*self.sampling.values(), return_exceptions=True)
        self.sampling.clear()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


async def train(
    cfg: TrainConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
    stop_after: int | None = None, progress: bool = True, console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) training; returns every metrics record of the run so far.

    A new run refuses an ``out_dir`` that holds one unless ``overwrite``; if it fails before its
    first checkpoint, it leaves nothing behind."""
    console = console or Console()
    if resume:
        return await _train(cfg, out_dir, resume=True, stop_after=stop_after,
                            progress=progress, console=console)
    run_dir.prepare(out_dir, overwrite=overwrite)
    with run_dir.cleaned_on_failed_start(out_dir):
        return await _train(cfg, out_dir, resume=False, stop_after=stop_after,
                            progress=progress, console=console)


async def _train(cfg: TrainConfig, out_dir: Path, *, resume: bool, stop_after: int | None,
                 progress: bool, console: Console) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir / METRICS_NAME)
    _seed_everything(cfg.seed)
    set_threads(cfg.threads)
    arms = build_arms(cfg, progress=progress, warm=not resume, console=console)
    sinks: list[Any] = []
    pipes: list[Pipeline] = []
    try:
        start = 0
        if resume:
            loaded = load_checkpoint(out_dir, models={a.name: a.model for a in arms},
                                     optimizers={a.name: a.updater.optimizer for a in arms})
            for arm in arms:
                arm.load_state(loaded.states[arm.name])
                await sync_weights(arm.backend, arm.model, out_dir / "weights" / arm.name)
                arm.runner.policy_version = loaded.step + 1
            start = loaded.step + 1
            log.truncate_after(loaded.step)
            console.print(f"resumed {out_dir} after step {loaded.step}")
        else:
            (out_dir / CONFIG_NAME).write_text(yaml.safe_dump(cfg.model_dump()), encoding="utf-8")
        sinks = open_sinks(cfg.tracking, out_dir, config=cfg.model_dump(), first_step=start,
                           resume=resume)
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        checkpoints = {s for s in range(start, last)
                       if (s + 1) % cfg.checkpoint_every == 0 or s + 1 == cfg.steps}
        pipes = [Pipeline(arm, cfg, drains=checkpoints | {last - 1}) for arm in arms]
        for step in range(start, last):
            for pipe in pipes:
                record = await pipe.step(step, out_dir)
                log.append(record)
                for sink in sinks:
                    sink.log(record)
                console.print(
                    f"step {step} [bold]{pipe.arm.name:>6}[/]: {record['mixed_trees']} mixed trees, "
                    f"effective ratio {record['effective_ratio']:.2f}, reward {record['reward_mean']:.2f}, "
                    f"cost {record['cost_trajectory']:.1f}/{cfg.budget.total:g} traj-eq "
                    f"({record['cost_turns']:g} turns), "
                    f"{record['seconds'] + record['update_s']:.0f} s"
                )
            if step in checkpoints:
                save_checkpoint(out_dir, step=step, models={a.name: a.model for a in arms},
                                optimizers={a.name: a.updater.optimizer for a in arms},
                                states={a.name: a.state() for a in arms})
    finally:  # on every path, Ctrl-C included: no tool server outlives the run
        for pipe in pipes:
            await pipe.cancel()
        close_envs(arms)
        for sink in sinks:
            sink.close()
        for arm in arms:
            await arm.backend.aclose()
    records = log.read()
    plot_metrics(records, out_dir)
    return records


def run(cfg: TrainConfig, out_dir: Path, **options: Any) -> list[dict[str, Any]]:
    return asyncio.run(train(cfg, out_dir, **options))
