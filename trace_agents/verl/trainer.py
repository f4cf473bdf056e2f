"""TRACE as a verl 0.9 V1 trainer, built on verl's extension points (no fork of verl).

* `TraceTrainer` (``@register_trainer("trace")``, a ``PPOTrainerSync``): each batch verl submits
  is planned (Stage 1 over its prompts, as a plan of `trace_agents.verl.plans`) and each row gets
  its ``__rollout_n__`` (which ``AgentLoopWorkerTQ._run_prompt`` reads), Stage 2 cap and plan id;
  its advantage step reads the episodes back from TransferQueue, grows the trees, charges each
  rollout to its plan's `Budget` and writes tree-aware advantages
  (``trace_agents.train.advantages``, the native trainer's function); ``step`` refits the
  predictor as it ends, before ``fit()`` writes the checkpoint. verl's checkpoints carry TRACE's state (the predictor,
  the allocator's RNG, the open plans) in ``global_step_N/trace``, so a resumed run keeps what it learned.
* `TraceAsyncTrainer` (``"trace_async"``, verl's ``colocate_async``): the same, with batches
  submitted ahead, groups trained as they finish and stale ones evicted, each charged to its plan.
* `TraceAgentLoopWorker` (an ``AgentLoopWorkerTQ``): runs a prompt's bare rollouts, plans **that
  prompt's** continuations at once (no wait for other prompts) and runs them as further sessions
  of the same ``uid``, resumed from the env snapshots and exact token prefixes.
* `TraceAgentLoopManager` (``actor_rollout_ref.rollout.agent.agent_loop_manager_class``): starts
  those workers and hands them the allocator (with the refit predictor) and the plans' pools.
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
from omegaconf import DictConfig, OmegaConf, open_dict
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.main_ppo import TaskRunnerV1
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1 import AgentLoopManagerTQ, AgentLoopWorkerTQ, PPOTrainerSync, register_trainer
from verl.trainer.ppo.v1.agent_loop_tq import apply_greedy_sampling_params
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from trace_agents.train.checkpoint import dump_state, read_state
from trace_agents.train.config import BudgetConfig, OptimConfig, PredictorConfig, TrainConfig
from trace_agents.train.loop import make_allocator
from trace_agents.verl.episode import Episode
from trace_agents.verl.plans import PLAN_KEY, ContinuationPools, PlanLedger
from trace_agents.verl.sampler import (
    BRANCH_KEY, CONTINUATIONS_KEY, EPISODE_KEY, TraceSampler, plan_prompt, pool_request, token_advantages,
)
from trace_allocation import Budget
from trace_allocation.allocators import Allocator

logger = logging.getLogger(__name__)

TRAINER_NAME = "trace"
ASYNC_TRAINER_NAME = "trace_async"
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
    sampler = OmegaConf.select(config, "trainer.v1.sampler") or {}
    if (sampler.get("custom_sampler") or {}).get("path"):
        problems.append("trainer.v1.sampler.custom_sampler (TRACE brings its own replay buffer, which tells it "
                        "what is trained and evicted)")
    if sampler.get("sync_refill_failed_groups", False):
        problems.append("trainer.v1.sampler.sync_refill_failed_groups=true (a refill gets rollout.n flat rollouts)")
    if (algo.get("filter_groups") or {}).get("enable", False):
        problems.append("algorithm.filter_groups.enable=true (DAPO's refills get no Stage 2; "
                        "use trace.allocator with the native trainer for DAPO)")
    if OmegaConf.select(config, "skip.rollout_tq.enable", default=False):
        problems.append("skip.rollout_tq.enable=true (cached rollouts bypass TRACE's planning)")
    if allocator == "dapo":
        problems.append("trace.allocator=dapo (the verl workers run no refills; use the native trainer for DAPO)")
    if problems:
        raise ValueError("the TRACE trainer does not support: " + "; ".join(problems))


def rollout_correction(config: DictConfig, trained: torch.Tensor, old: torch.Tensor,
                       rollout: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """verl's rollout correction (``algorithm.rollout_correction``: truncated importance weights
    ``rollout_is_weights``, rejection of tokens or sequences) on the tokens TRACE trains: a row's
    ``trained`` mask (nested) leaves out the prefix a continuation inherited, which its parent's
    row trains, so a sequence-level weight or rejection reads only the row's own tokens. Returns
    the nested fields for TransferQueue (the masks narrowed by the rejection) and verl's
    ``rollout_corr/`` metrics; verl's own function does the arithmetic."""
    padded = TensorDict({"old_log_probs": old, "rollout_log_probs": rollout, "response_mask": trained},
                        batch_size=trained.size(0)).to_padded_tensor()
    data, figures = compute_rollout_correction_and_add_to_batch(DataProto(batch=padded), config)
    kept = response_to_nested(data.batch["response_mask"].to(trained.dtype), trained)
    fields = {"response_mask": kept, "loss_mask": kept}
    if "rollout_is_weights" in data.batch.keys():
        fields["rollout_is_weights"] = response_to_nested(data.batch["rollout_is_weights"], trained)
    return fields, figures


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


class _TraceSteps:
    """TRACE's planning, trees, advantages, refit and checkpointed state, shared by the synchronous
    (`TraceTrainer`) and asynchronous (`TraceAsyncTrainer`) trainers: every batch verl submits for
    rollout is planned (`plan_batch`) as its own plan in a `PlanLedger`, and each rollout is charged
    to its plan's budget when verl hands its group over to train or evicts it."""

    VERL_MODE: str
    """verl's trainer mode this trainer runs as (its replay buffer, and its config block)."""
    REPLAY: str
    """The replay-buffer class in this module that tells the trainer what it samples and evicts."""

    def __init__(self, config: DictConfig) -> None:
        name, self.settings = trace_settings(config)
        self.alloc_rng = np.random.default_rng(self.settings.seed)
        self.sampler = TraceSampler(make_allocator(name, self.settings, self.alloc_rng))
        self.plans = PlanLedger()
        self.budget: Budget | None = None
        """The budget of the latest plan (in the synchronous trainer: this step's)."""
        self.refits = 0
        self._shipped: int | None = None
        self.restored_pools: dict[str, Any] | None = None
        """The open plans' Stage 2 pools read from a checkpoint, for the run's `PlanPools` once
        ``fit()`` has its agent-loop manager (`_reissue_inflight_prompts`)."""
        self._begin_step()
        super().__init__(config)

    def _begin_step(self) -> None:
        self.sampler.reset()
        self.trace_metrics: dict[str, float] = {}
        self.sampled: list[str] = []
        b = self.settings.budget
        self.charged = Budget(float("inf"), continuation_cost=b.continuation_cost)
        """Everything charged during this step, whichever plan paid (``trace/cost``)."""

    def _build_replay_buffer(self):
        """verl's replay buffer for `VERL_MODE`, through verl's custom-sampler hook: a subclass
        that reports the groups it hands over and evicts (`_Settling`)."""
        self.trainer_mode = self.VERL_MODE
        self.parameter_sync_step = self.config.trainer.v1.get(self.trainer_mode, {}).get("parameter_sync_step", 1)
        with open_dict(self.config):
            self.config.trainer.v1.sampler.custom_sampler = {"path": f"pkg://{__name__}", "name": self.REPLAY}
        buffer = super()._build_replay_buffer()
        buffer.trainer = self
        return buffer

    # ------------------------------------------------------------------ Stage 1, per submitted batch
    def _submit_batch_to_rollout(self, batch: TensorDict) -> int:
        return super()._submit_batch_to_rollout(self.plan_batch(batch))

    def plan_share(self, prompts: int) -> float:
        """The share of a step's budget a batch of ``prompts`` gets."""
        return 1.0

    def plan_batch(self, batch: TensorDict) -> TensorDict:
        """Stage 1 over the batch's prompts as one plan with its own budget: per-row
        ``__rollout_n__``, Stage 2 cap and plan id; the workers get the allocator as last refit."""
        if not hasattr(self.agent_loop_manager, "set_allocator"):
            raise TypeError(
                "the TRACE trainer needs actor_rollout_ref.rollout.agent.agent_loop_manager_class="
                "trace_agents.verl.trainer.TraceAgentLoopManager"
            )
        b = self.settings.budget
        budget = Budget.for_allocator(self.sampler.allocator, b.total * self.plan_share(len(batch)),
                                      continuation_cost=b.continuation_cost)
        texts = [task_text(p) for p in batch["raw_prompt"]]
        counts = self.sampler.plan_roots(texts, budget)
        caps = self.sampler.driver.continuation_caps(counts, budget)
        plan = self.plans.open([str(u) for u in batch["uid"]], budget, step=getattr(self, "global_steps", 0),
                               counts=counts)
        self.budget = budget
        tu.assign_non_tensor_stack(batch, "__rollout_n__", [int(c) for c in counts])
        tu.assign_non_tensor_stack(batch, CONTINUATIONS_KEY, [int(c) for c in caps])
        tu.assign_non_tensor_stack(batch, PLAN_KEY, [plan.id] * len(batch))
        if self._shipped != self.refits:
            self.agent_loop_manager.set_allocator(self.sampler.allocator)
            self._shipped = self.refits
        for key, value in (("prompts_opened", int((counts > 0).sum())), ("roots_planned", int(counts.sum())),
                           ("continuations_cap", int(caps.sum())), ("plans", 1)):
            self.trace_metrics[f"trace/{key}"] = self.trace_metrics.get(f"trace/{key}", 0) + value
        return batch

    # ------------------------------------------------------------------ what verl samples and evicts
    def groups_sampled(self, uids: list[str]) -> None:
        """The replay buffer hands these prompt groups over to train in this step."""
        self.sampled += uids

    def groups_evicted(self, uids: set[str], keys: list[str]) -> None:
        """The replay buffer evicts these groups (stale or failed): what their trajectories
        (``keys``) generated is charged to their plans; they are neither trained nor refit on."""
        if keys:
            data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["extra_fields"])
            for extra in data["extra_fields"]:
                self._charge(Episode.from_dict(dict(getattr(extra, "data", extra))[EPISODE_KEY]))
        self.plans.settle(uids, trained=False, step=self.global_steps)
        self.trace_metrics["trace/evicted_groups"] = self.trace_metrics.get("trace/evicted_groups", 0) + len(uids)

    def _charge(self, episode: Episode) -> Budget | None:
        """Charge a rollout to its plan's budget (and to this step's tally); returns the budget."""
        try:
            budget = self.plans.budget_of(episode.prompt_key)
        except KeyError:
            logger.warning("episode %s belongs to no open TRACE plan: not charged", episode.id)
            return None
        self.sampler.charge(episode, budget)
        self.sampler.charge(episode, self.charged)
        return budget

    # ------------------------------------------------------------------ trees and advantages
    def _compute_advantage(self, batch, metrics: dict):
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["response_mask", "extra_fields"])
        lengths = data["response_mask"].offsets().diff().tolist()
        output = self.tree_advantages(batch.tags, list(data["extra_fields"]), lengths)
        config = self.config.algorithm.get("rollout_correction")
        if config is not None and not config.get("bypass_mode", False):  # verl's decoupled mode
            logprobs = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                       select_fields=["old_log_probs", "rollout_log_probs"])
            present = set(logprobs.keys())
            if {"rollout_log_probs", "old_log_probs"} <= present:  # as verl: where the engine returned them
                fields, figures = rollout_correction(config, output["response_mask"], logprobs["old_log_probs"],
                                                     logprobs["rollout_log_probs"])
                output.update(fields)
                metrics.update(figures)
            elif "rollout_log_probs" in present and (config.get("rollout_is") or config.get("rollout_rs")):
                raise ValueError("algorithm.rollout_correction needs the actor's old_log_probs in TransferQueue "
                                 "before the advantage step (verl's decoupled mode computes them)")
        metrics.update(self.trace_metrics)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

    def tree_advantages(self, tags: list[dict], extra_fields: list[Any], lengths: list[int]) -> TensorDict:
        """Grow the step's trees from the sampled rows (verl's padding rows excluded), charge each
        rollout to its plan, and return nested ``advantages``/``returns`` and the trained-token
        masks. With ``parameter_sync_step`` > 1 verl calls this once per mini-batch of whole prompt
        groups: the trees add up over the step, so the refit and the step's figures see every
        prompt, not only the last mini-batch's."""
        rows: dict[int, Episode] = {}
        for i, (tag, extra) in enumerate(zip(tags, extra_fields, strict=True)):
            if not tag.get("is_padding", False):
                rows[i] = Episode.from_dict(dict(getattr(extra, "data", extra))[EPISODE_KEY])
        for ep in sorted(rows.values(), key=lambda e: e.parent is not None):
            self.sampler.observe([ep], budget=None)
            self._charge(ep)
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
            "trace/cost": self.charged.spent, "trace/budget": self.settings.budget.total,
            "trace/roots": self.charged.roots, "trace/continuations": self.charged.continuations,
            "trace/unpaid": self.sampler.driver.unpaid,
            "trace/effective_ratio": float(np.mean([t.is_mixed for t in trees])) if trees else 0.0,
        })
        nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
        return TensorDict({"advantages": nested(values), "returns": nested(values),
                           "response_mask": nested(masks), "loss_mask": nested(masks)}, batch_size=len(lengths))

    # ------------------------------------------------------------------ the step's end: plans, refit
    def refit_predictor(self) -> dict[str, float]:
        brier = self.sampler.update_predictor()
        self.refits += 1
        return {} if brier is None else {"trace/predictor_brier": brier}

    def step(self, metrics: dict, timing_raw: dict):
        """verl's step; then the groups it trained settle their plans, and the predictor is refit:
        ``fit()`` saves the checkpoint right after ``step`` and before ``on_step_end``, so the saved
        ledger and predictor are the ones the next step plans with."""
        self._begin_step()
        batch = super().step(metrics, timing_raw)
        self.plans.settle(self.sampled, trained=True, step=self.global_steps)
        metrics.update(self.plan_metrics())
        metrics.update(self.refit_predictor())
        return batch

    def plan_metrics(self) -> dict[str, float]:
        """The plans that closed in this step (each prompt trained or evicted) and what they spent."""
        closed = self.plans.drain()
        unspent = self.agent_loop_manager.close_plans(closed.ids) if closed.ids else 0.0
        out = {"trace/plans_open": len(self.plans.plans), "trace/plans_closed": len(closed.ids)}
        if closed.ids:
            out.update({"trace/plans_closed_cost": closed.spent, "trace/plans_closed_budget": closed.total,
                        "trace/plans_closed_trained": closed.trained, "trace/plans_closed_evicted": closed.evicted,
                        "trace/plans_closed_pool_unspent": unspent,
                        "trace/plan_staleness_max": max(closed.staleness)})
        return out

    # ------------------------------------------------------------------ checkpoints
    def trace_state(self) -> dict[str, Any]:
        predictor = self.sampler.allocator.predictor
        manager = getattr(self, "agent_loop_manager", None)  # verl sets it in fit()
        return {"alloc_rng": self.alloc_rng.bit_generator.state, "unpaid": self.sampler.driver.unpaid,
                "predictor": None if predictor is None else predictor.state_dict(),
                "plans": self.plans.state_dict(),
                "pools": manager.pools_state() if hasattr(manager, "pools_state") else None}

    def load_trace_state(self, state: dict[str, Any]) -> None:
        predictor = self.sampler.allocator.predictor
        if (state["predictor"] is None) != (predictor is None):
            raise ValueError("the checkpoint's TRACE state was saved with a different predictor setting")
        self.alloc_rng.bit_generator.state = state["alloc_rng"]
        self.sampler.driver.unpaid = float(state["unpaid"])
        if predictor is not None:
            predictor.load_state_dict(state["predictor"])
        if state.get("plans") is not None:  # saved before plans were kept: a synchronous run has none open
            self.plans.load_state_dict(state["plans"])
        if state.get("pools") is not None:  # saved before the pools were kept: the open plans' pools start empty
            ContinuationPools().load_state_dict(state["pools"], self.plans.plans)  # refused now, not in fit()
            self.restored_pools = state["pools"]

    def _reissue_inflight_prompts(self, partition_id: str = "train") -> int:
        """The checkpoint's Stage 2 pools go to the run's `PlanPools` before verl re-issues the
        prompts that were in flight; each of those withdraws its earlier attempt's share as it
        begins again (`ContinuationPools.begin`)."""
        if self.restored_pools is not None:
            self.agent_loop_manager.load_pools(self.restored_pools, list(self.plans.plans))
            self.restored_pools = None
        return super()._reissue_inflight_prompts(partition_id)

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


@register_trainer(TRAINER_NAME)
class TraceTrainer(_TraceSteps, PPOTrainerSync):
    """verl's synchronous V1 trainer with TRACE's allocation, trees and advantages: one plan a
    step, trained (and closed) by that step."""

    VERL_MODE = "sync"
    REPLAY = "TraceReplayBuffer"


@register_trainer(ASYNC_TRAINER_NAME)
class TraceAsyncTrainer(_TraceSteps, PPOTrainerColocateAsync):
    """verl's ``colocate_async`` V1 trainer with TRACE: verl submits batches ahead
    (``trainer.v1.colocate_async.num_warmup_batches``), trains whichever prompt groups finished
    first, evicts groups staler than ``trainer.v1.sampler.max_off_policy_threshold`` and refills
    them. Each submitted batch (a step's, a warm-up's, a refill's) is a plan with its share of
    the step budget; a group is charged to its plan when trained or evicted."""

    VERL_MODE = "colocate_async"
    REPLAY = "TraceReplayBufferAsync"

    def plan_share(self, prompts: int) -> float:
        return prompts / self.config.data.train_batch_size


class _Settling:
    """verl's replay buffer telling the TRACE trainer which prompt groups it hands over to train
    (`_materialize_batch`) and which it evicts (`_evict_terminal_groups`: stale, failed), so each
    group's rollouts are charged to the plan that decided them."""

    trainer: _TraceSteps

    def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
        if partition_id == "train":
            self.trainer.groups_sampled(list(selected_prompt_uids))
        return super()._materialize_batch(partition_id, selected_prompt_uids, partition_snapshot)

    def _evict_terminal_groups(self, global_steps, partition_id, eviction_reasons):
        stale, dapo, failed, _ = eviction_reasons
        uids = stale | dapo | failed
        if uids and partition_id == "train":
            keys = [k for k in self.partitions[partition_id] if k.split("_")[0] in uids]
            self.trainer.groups_evicted(uids, keys)
        return super()._evict_terminal_groups(global_steps, partition_id, eviction_reasons)


class TraceReplayBuffer(_Settling, ReplayBuffer):
    """verl's synchronous replay buffer, reporting to `TraceTrainer`."""


class TraceReplayBufferAsync(_Settling, ReplayBufferAsync):
    """verl's asynchronous replay buffer, reporting to `TraceAsyncTrainer`."""


@ray.remote(num_cpus=0)
class PlanPools(ContinuationPools):
    """Every open plan's Stage 2 pool, one actor all workers draw from: a prompt whose sessions
    failed, or whose tree has too few prefixes, leaves its Stage 2 share to the prompts of its
    own plan planned later, on any worker (the native driver's `plan_pooled`)."""


class TraceAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):
    """Per prompt: bare rollouts, then at once that prompt's Stage 2 continuations (same ``uid``,
    sessions ``n, n+1, ...``), all written to TransferQueue as verl's own worker writes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allocator: Allocator | None = None
        self.pools: Any = None

    def set_allocator(self, allocator: Allocator, pools: Any) -> None:
        self.allocator, self.pools = allocator, pools

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        kwargs.pop(BRANCH_KEY, None)  # a Branch is the agent loop's input, not a batch field
        await super()._agent_loop_postprocess(output, validate, **kwargs)
        return output  # _run_agent_loop hands it back to _run_prompt, Episode object intact

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        cap = int(prompt.pop(CONTINUATIONS_KEY, 0) or 0)
        plan = prompt.pop(PLAN_KEY, None)
        if trajectory["validate"] or cap <= 0 or self.allocator is None or plan is None:
            return await super()._run_prompt(prompt, sampling_params, trajectory, trace)
        uid, plan = prompt["uid"], int(plan)
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": "running"})
        status, unplanned = "finished", cap
        try:
            await self.pools.begin.remote(plan, uid)  # a re-issued prompt withdraws its earlier attempt's share
            n = int(prompt.pop("__rollout_n__", self.config.actor_rollout_ref.rollout.n))
            params = dict(sampling_params)
            if not prompt.pop("__do_sample__", True):
                apply_greedy_sampling_params(params)
            roots = await self._sessions(params, trajectory, trace, prompt, [None] * n, first=0)
            episodes = [o.extra_fields[EPISODE_KEY] for o in roots if o is not None]
            if len(episodes) < n:
                status = "failure"
            request = pool_request(self.allocator, episodes)
            extra = int(await self.pools.take.remote(plan, uid, request)) if request else 0
            unplanned += extra
            branches = plan_prompt(self.allocator, episodes, cap, extra=extra) if episodes else []
            unplanned -= len(branches)
            await self.pools.give.remote(plan, uid, unplanned)  # at once, so that prompts planned later may draw it
            unplanned = 0
            conts = await self._sessions(params, trajectory, trace, prompt, branches, first=n)
            if any(o is None for o in conts):
                status = "failure"
        except Exception:
            logger.exception("TRACE prompt %s failed", uid)
            status = "failure"
            if unplanned:
                await self.pools.give.remote(plan, uid, unplanned)
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
    """verl's TransferQueue agent-loop manager with `TraceAgentLoopWorker` workers and the run's
    `PlanPools`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ray.remote(TraceAgentLoopWorker)
        self.pools = PlanPools.remote()

    def set_allocator(self, allocator: Allocator) -> None:
        """Ship the allocator (its refit predictor) to every worker: one object they all read."""
        shipped = ray.put(allocator)
        ray.get([w.set_allocator.remote(shipped, self.pools) for w in self.agent_loop_workers])

    def close_plans(self, plans: list[int]) -> float:
        """Drop the closed plans' pools; returns what they left unspent."""
        return float(ray.get(self.pools.close.remote(plans)))

    def pools_state(self) -> dict[str, Any]:
        return ray.get(self.pools.state_dict.remote())

    def load_pools(self, state: dict[str, Any], open_plans: list[int]) -> None:
        ray.get(self.pools.load_state_dict.remote(state, open_plans))


@ray.remote
class TraceTaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's V1 task runner; importing this module registered the ``trace`` trainer in its process."""


__all__ = ["ASYNC_TRAINER_NAME", "TRAINER_NAME", "PlanPools", "TraceAgentLoopManager", "TraceAgentLoopWorker",
           "TraceAsyncTrainer", "TraceReplayBuffer", "TraceReplayBufferAsync", "TraceTaskRunner", "TraceTrainer",
           "refuse_unsupported", "task_text", "trace_settings"]
