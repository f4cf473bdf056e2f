"""TRACE as a verl 0.9 V1 trainer, built on verl's extension points (no fork of verl).

* `TraceTrainer` (``@register_trainer("trace")``, a ``PPOTrainerSync``): each step plans Stage 1
  over the batch's prompts and sets each row's ``__rollout_n__`` (which ``AgentLoopWorkerTQ.
  _run_prompt`` reads) and its Stage 2 cap; its advantage step reads the episodes back from
  TransferQueue, grows the trees, charges the `Budget` and writes tree-aware advantages
  (``trace_agents.train.advantages``, the native trainer's function); ``step`` refits the
  predictor as it ends, before ``fit()`` writes the checkpoint. verl's checkpoints carry TRACE's state (the predictor,
  the allocator's RNG) in ``global_step_N/trace``, so a resumed run keeps what it learned.
* `TraceAgentLoopWorker` (an ``AgentLoopWorkerTQ``): runs a prompt's bare rollouts, plans **that
  prompt's** continuations at once (no wait for other prompts) and runs them as further sessions
  of the same ``uid``, resumed from the env snapshots and exact token prefixes.
* `TraceAgentLoopManager` (``actor_rollout_ref.rollout.agent.agent_loop_manager_class``): starts
  those workers and hands them the allocator (with the refit predictor) before each step.
* `TraceTaskRunner`: verl's ``TaskRunnerV1`` in a process that has imported this module, so the
  ``trace`` trainer is registered there; ``python -m trace_agents.verl.main`` launches it.

The actor update, reference and old log-probs are verl's own (FSDP/Megatron: GPUs).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.v1 import AgentLoopManagerTQ, AgentLoopWorkerTQ, PPOTrainerSync, register_trainer
from verl.trainer.ppo.v1.agent_loop_tq import apply_greedy_sampling_params
from verl.utils import tensordict_utils as tu

from trace_agents.train.checkpoint import dump_state, read_state
from trace_agents.train.config import BudgetConfig, OptimConfig, PredictorConfig, TrainConfig
from trace_agents.train.loop import make_allocator
from trace_agents.verl.episode import Episode
from trace_agents.verl.sampler import (
    BRANCH_KEY, CONTINUATIONS_KEY, EPISODE_KEY, TraceSampler, plan_prompt, pool_request, token_advantages,
)
from trace_allocation import Budget
from trace_allocation.allocators import Allocator
from trace_allocation.driver import ContinuationPool

logger = logging.getLogger(__name__)

TRAINER_NAME = "trace"
TRACE_STATE = "trace"
"""Folder in verl's ``global_step_N`` checkpoint holding TRACE's own state."""


def refuse_unsupported(config: DictConfig, allocator: str) -> None:
    """TRACE writes the advantages itself, so verl settings that act on rewards or advantages
    inside verl's own advantage step would be silently dropped: refuse them here, before Ray starts."""
    algo = config.get("algorithm") or {}
    problems = []
    if algo.get("adv_estimator", "grpo") != "grpo":
        problems.append(f"algorithm.adv_estimator={algo.get('adv_estimator')} (TRACE writes tree advantages; "
                        "use grpo, which starts no critic)")
    if algo.get("use_kl_in_reward", False):
        problems.append("algorithm.use_kl_in_reward=true "
                        "(use the actor's KL loss, actor_rollout_ref.actor.use_kl_loss)")
    if not algo.get("norm_adv_by_std_in_grpo", True):
        problems.append("algorithm.norm_adv_by_std_in_grpo=false (TRACE's advantages divide by the group std)")
    correction = algo.get("rollout_correction") or {}
    for key in ("rollout_is", "rollout_rs"):
        if correction.get(key) is not None:
            problems.append(f"algorithm.rollout_correction.{key}={correction.get(key)} "
                            "(not applied to tree advantages)")
    if allocator == "dapo":
        problems.append("trace.allocator=dapo (the verl workers run no refills; use the native trainer for DAPO)")
    if problems:
        raise ValueError("the TRACE trainer does not support: " + "; ".join(problems))


def trace_settings(config: DictConfig) -> tuple[str, TrainConfig]:
    """The allocator name and the native trainer's settings from the ``trace`` config block, so
    allocator, predictor, budget and advantages are built exactly as ``trace-rl train`` builds them.
    Settings the TRACE trainer would silently ignore are refused (`refuse_unsupported`)."""
    block = config.get("trace")
    if block is None:
        raise ValueError("the TRACE trainer needs a `trace` config block (trace_agents/verl/config/trace_trainer.yaml)")
    t = OmegaConf.to_container(block, resolve=True)
    unknown = set(t) - {"allocator", "seed", "budget", "predictor", "advantage", "shared_tokens"}
    if unknown:
        raise ValueError(f"unknown keys in the `trace` config block: {sorted(unknown)}")
    settings = TrainConfig(
        seed=t.get("seed", 0),
        budget=BudgetConfig(**t.get("budget", {})),
        predictor=PredictorConfig(**t.get("predictor", {})),
        optim=OptimConfig(**{k: t[k] for k in ("advantage", "shared_tokens") if k in t}),
    )
    name = str(t.get("allocator", "trace"))
    refuse_unsupported(config, name)
    return name, settings


def task_text(raw_prompt: Any) -> str:
    """The task as the allocator reads it: the last user message of verl's ``raw_prompt``."""
    messages = list(raw_prompt)
    user = [m for m in messages if m.get("role") == "user"]
    if not user:
        raise ValueError(f"raw_prompt has no user message: {messages!r}")
    return str(user[-1]["content"])


@register_trainer(TRAINER_NAME)
class TraceTrainer(PPOTrainerSync):
    """verl's synchronous V1 trainer with TRACE's allocation, trees and advantages."""

    def __init__(self, config: DictConfig) -> None:
        name, self.settings = trace_settings(config)
        self.alloc_rng = np.random.default_rng(self.settings.seed)
        self.sampler = TraceSampler(make_allocator(name, self.settings, self.alloc_rng))
        self.budget: Budget | None = None
        self.trace_metrics: dict[str, float] = {}
        super().__init__(config)

    def _build_replay_buffer(self):
        # A TRACE step is synchronous: verl's sync replay buffer and prompt registration apply.
        self.trainer_mode = "sync"
        return super()._build_replay_buffer()

    # ------------------------------------------------------------------ Stage 1
    def prepare_step(self) -> dict:
        batch = self.plan_batch(self._next_train_batch())
        self._submit_batch_to_rollout(batch)
        return {}

    def plan_batch(self, batch: TensorDict) -> TensorDict:
        """Stage 1 over the batch's prompts: per-row ``__rollout_n__`` and Stage 2 cap, and the
        workers get the allocator as refit at the last step's end."""
        if not hasattr(self.agent_loop_manager, "set_allocator"):
            raise TypeError(
                "the TRACE trainer needs actor_rollout_ref.rollout.agent.agent_loop_manager_class="
                "trace_agents.verl.trainer.TraceAgentLoopManager"
            )
        b = self.settings.budget
        self.budget = Budget.for_allocator(self.sampler.allocator, b.total, continuation_cost=b.continuation_cost)
        texts = [task_text(p) for p in batch["raw_prompt"]]
        counts = self.sampler.plan_roots(texts, self.budget)
        caps = self.sampler.driver.continuation_caps(counts, self.budget)
        tu.assign_non_tensor_stack(batch, "__rollout_n__", [int(c) for c in counts])
        tu.assign_non_tensor_stack(batch, CONTINUATIONS_KEY, [int(c) for c in caps])
        self.agent_loop_manager.set_allocator(self.sampler.allocator)
        self.trace_metrics = {"trace/prompts_opened": int((counts > 0).sum()),
                              "trace/roots_planned": int(counts.sum()),
                              "trace/continuations_cap": int(caps.sum())}
        return batch

    # ------------------------------------------------------------------ trees and advantages
    def _compute_advantage(self, batch, metrics: dict):
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["response_mask", "extra_fields"])
        lengths = data["response_mask"].offsets().diff().tolist()
        output = self.tree_advantages(batch.tags, list(data["extra_fields"]), lengths)
        metrics.update(self.trace_metrics)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

    def tree_advantages(self, tags: list[dict], extra_fields: list[Any], lengths: list[int]) -> TensorDict:
        """Grow the step's trees from the sampled rows (verl's padding rows excluded), charge the
        budget, and return nested ``advantages``/``returns`` and the trained-token masks. With
        ``trainer.v1.parameter_sync_step`` > 1 verl calls this once per mini-batch of whole prompt
        groups: the trees add up over the step (planning starts them afresh), so the refit and the
        step's figures see every prompt, not only the last mini-batch's."""
        assert self.budget is not None, "plan_batch must run before the advantage step"
        rows: dict[int, Episode] = {}
        for i, (tag, extra) in enumerate(zip(tags, extra_fields, strict=True)):
            if not tag.get("is_padding", False):
                rows[i] = Episode.from_dict(dict(getattr(extra, "data", extra))[EPISODE_KEY])
        self.sampler.observe(sorted(rows.values(), key=lambda e: e.parent is not None), self.budget)
        opt = self.settings.optim
        turn_adv = self.sampler.advantages(mode=opt.advantage, shared=opt.shared_tokens)
        values, masks = [], []
        for i, n in enumerate(lengths):
            if i in rows:
                v, m = token_advantages(rows[i], turn_adv[rows[i].id])
            else:
                v, m = [0.0] * n, [0] * n
            values.append(torch.tensor(v, dtype=torch.float32))
            masks.append(torch.tensor(m, dtype=torch.int64))
        trees = list(self.sampler.trees.values())
        self.trace_metrics.update({
            "trace/cost": self.budget.spent, "trace/budget": self.budget.total,
            "trace/roots": self.budget.roots, "trace/continuations": self.budget.continuations,
            "trace/unpaid": self.sampler.driver.unpaid,
            "trace/effective_ratio": float(np.mean([t.is_mixed for t in trees])) if trees else 0.0,
        })
        nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
        return TensorDict({"advantages": nested(values), "returns": nested(values),
                           "response_mask": nested(masks), "loss_mask": nested(masks)}, batch_size=len(lengths))

    # ------------------------------------------------------------------ predictor refit
    def refit_predictor(self) -> dict[str, float]:
        brier = self.sampler.update_predictor()
        return {} if brier is None else {"trace/predictor_brier": brier}

    def step(self, metrics: dict, timing_raw: dict):
        """verl's step, then the refit: ``fit()`` saves the checkpoint right after ``step`` and
        before ``on_step_end``, so the saved predictor is the one the next step plans with."""
        batch = super().step(metrics, timing_raw)
        metrics.update(self.refit_predictor())
        return batch

    # ------------------------------------------------------------------ checkpoints
    def trace_state(self) -> dict[str, Any]:
        predictor = self.sampler.allocator.predictor
        return {"alloc_rng": self.alloc_rng.bit_generator.state, "unpaid": self.sampler.driver.unpaid,
                "predictor": None if predictor is None else predictor.state_dict()}

    def load_trace_state(self, state: dict[str, Any]) -> None:
        predictor = self.sampler.allocator.predictor
        if (state["predictor"] is None) != (predictor is None):
            raise ValueError("the checkpoint's TRACE state was saved with a different predictor setting")
        self.alloc_rng.bit_generator.state = state["alloc_rng"]
        self.sampler.driver.unpaid = float(state["unpaid"])
        if predictor is not None:
            predictor.load_state_dict(state["predictor"])

    def _save_checkpoint(self) -> None:
        """TRACE's state first: verl marks the step saved (``latest_checkpointed_iteration.txt``)
        last, so a resumed run never finds the step's weights without it."""
        folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}" / TRACE_STATE
        folder.mkdir(parents=True, exist_ok=True)
        dump_state(self.trace_state(), folder / "state.json", folder / "arrays.safetensors")
        super()._save_checkpoint()

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if not self.global_steps:
            return  # training from scratch
        trainer = self.config.trainer
        step_dir = (Path(trainer.resume_from_path) if trainer.resume_mode == "resume_path"
                    else Path(trainer.default_local_dir) / f"global_step_{self.global_steps}")
        folder = step_dir / TRACE_STATE
        if not folder.is_dir():
            logger.warning("no TRACE state in %s (saved before trace-rl kept it): the predictor starts afresh",
                           step_dir)
            return
        try:
            self.load_trace_state(read_state(folder / "state.json", folder / "arrays.safetensors"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot resume TRACE's state from {folder}: {type(exc).__name__}: {exc}") from None


@ray.remote(num_cpus=0)
class SharedPool(ContinuationPool):
    """The step's `ContinuationPool`, one actor every worker draws from: a prompt whose sessions
    failed, or whose tree has too few prefixes, leaves its Stage 2 share to prompts planned later
    on any worker (the native driver's `plan_pooled`)."""


class TraceAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """Per prompt: bare rollouts, then at once that prompt's Stage 2 continuations (same ``uid``,
    sessions ``n, n+1, ...``), all written to TransferQueue as verl's own worker writes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allocator: Allocator | None = None
        self.pool: Any = None

    def set_allocator(self, allocator: Allocator, pool: Any) -> None:
        self.allocator, self.pool = allocator, pool

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        kwargs.pop(BRANCH_KEY, None)  # a Branch is the agent loop's input, not a batch field
        await super()._agent_loop_postprocess(output, validate, **kwargs)
        return output  # _run_agent_loop hands it back to _run_prompt, Episode object intact

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        cap = int(prompt.pop(CONTINUATIONS_KEY, 0) or 0)
        if trajectory["validate"] or cap <= 0 or self.allocator is None:
            return await super()._run_prompt(prompt, sampling_params, trajectory, trace)
        uid = prompt["uid"]
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": "running"})
        status, unplanned = "finished", cap
        try:
            n = int(prompt.pop("__rollout_n__", self.config.actor_rollout_ref.rollout.n))
            params = dict(sampling_params)
            if not prompt.pop("__do_sample__", True):
                apply_greedy_sampling_params(params)
            roots = await self._sessions(params, trajectory, trace, prompt, [None] * n, first=0)
            episodes = [o.extra_fields[EPISODE_KEY] for o in roots if o is not None]
            if len(episodes) < n:
                status = "failure"
            request = pool_request(self.allocator, episodes)
            extra = int(await self.pool.take.remote(request)) if request else 0
            unplanned += extra
            branches = plan_prompt(self.allocator, episodes, cap, extra=extra) if episodes else []
            unplanned -= len(branches)
            await self.pool.give.remote(unplanned)  # at once, so that prompts planned later may draw it
            unplanned = 0
            conts = await self._sessions(params, trajectory, trace, prompt, branches, first=n)
            if any(o is None for o in conts):
                status = "failure"
        except Exception:
            logger.exception("TRACE prompt %s failed", uid)
            status = "failure"
            if unplanned:
                await self.pool.give.remote(unplanned)
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": status})

    async def _sessions(self, params, trajectory, trace, prompt, branches, *, first: int) -> list[Any]:
        """Run one agent loop per entry (None: a bare rollout; a Branch: its continuation); a
        failed session is logged and returned as None so its siblings still count."""
        tasks = [
            self._run_agent_loop(params, trajectory=trajectory, trace=trace, session_id=first + j,
                                 **prompt, **({} if b is None else {BRANCH_KEY: b}))
            for j, b in enumerate(branches)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                logger.error("TRACE session of %s failed", prompt["uid"], exc_info=(type(r), r, r.__traceback__))
        return [None if isinstance(r, BaseException) else r for r in results]


class TraceAgentLoopManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager with `TraceAgentLoopWorker` workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ray.remote(TraceAgentLoopWorker)

    def set_allocator(self, allocator: Allocator) -> None:
        """Ship the allocator (its refit predictor) once per step: one object every worker reads,
        with the step's fresh `SharedPool`."""
        shipped, pool = ray.put(allocator), SharedPool.remote()
        ray.get([w.set_allocator.remote(shipped, pool) for w in self.agent_loop_workers])


@ray.remote
class TraceTaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's V1 task runner; importing this module registered the ``trace`` trainer in its process."""


__all__ = ["TRAINER_NAME", "SharedPool", "TraceAgentLoopManager", "TraceAgentLoopWorker", "TraceTaskRunner",
           "TraceTrainer", "refuse_unsupported", "task_text", "trace_settings"]
