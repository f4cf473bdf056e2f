"""One TRACE step through verl's real V1 machinery on CPU, with Ray on 2 CPUs.

Real verl: the ``trace`` trainer (``TraceTrainer``, its dataset and tokenizer loading, Stage 1 in
``prepare_step``), TransferQueue, ``TraceAgentLoopManager`` with Ray ``TraceAgentLoopWorker``
actors (verl's ``AgentLoopWorkerTQ``), ``LLMServerClient`` and verl's load balancer, the sync
``ReplayBuffer``, the trainer's advantage step and the predictor refit. The inference server is
the stand-in (tiny random Qwen3) behind a rollout-server actor (SGLang needs a GPU). What is not
run: the actor/reference log-probs and the actor update, which need verl's FSDP/Megatron workers
on GPUs (``PPOTrainer.init``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from trace_agents.verl import Episode
from trace_agents.verl.main import AGENT_LOOP_YAML
from trace_allocation.tree import backup_targets, prompt_of

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLE = Path(__file__).parents[2] / "examples" / "verl" / "make_dataset.py"
PROMPTS = 2


def write_dataset(out: Path) -> Path:
    """The example's dataset writer (examples/verl/make_dataset.py), on a small calculator suite."""
    spec = importlib.util.spec_from_file_location("make_dataset", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.dataset_rows("trace/Calculator-v0", {"suite_options": {"size": 8, "seed": 0}, "max_turns": 2},
                               "all")
    pq.write_table(pa.Table.from_pylist(rows), out / "train.parquet")
    return out / "train.parquet"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from trace_agents.models import tiny_qwen3
    from trace_agents.testing.standin_server import StandinServer

    root = tmp_path_factory.mktemp("verl")
    model, tokenizer = tiny_qwen3(seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = write_dataset(root)
    with StandinServer(model, tokenizer) as server:
        ray.init(num_cpus=2, include_dashboard=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        try:
            yield root, data, server
        finally:
            ray.shutdown()


def agent_loop_yaml(root: Path) -> Path:
    """The packaged entry with a per-turn cap: the random model rarely ends a turn by itself."""
    entries = yaml.safe_load(AGENT_LOOP_YAML.read_text())
    entries[0]["max_tokens_per_turn"] = 24
    (root / "agent_loop.yaml").write_text(yaml.safe_dump(entries))
    return root / "agent_loop.yaml"


def compose(root: Path, data: Path, *extra: str):
    overrides = [*extra,
        f"actor_rollout_ref.model.path={root / 'model'}",
        "actor_rollout_ref.rollout.name=sglang",
        "actor_rollout_ref.rollout.prompt_length=2048",
        "actor_rollout_ref.rollout.response_length=512",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_yaml(root)}",
        f"data.train_files={data}", f"data.val_files={data}",
        f"data.train_batch_size={PROMPTS}", "data.max_prompt_length=2048", "data.max_response_length=512",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "trace.budget.roots=4", "trace.budget.m_min=2", "trace.budget.m_max=2",
        "trace.budget.continuations_per_root=2", "trainer.total_epochs=1",
    ]
    with hydra.initialize_config_dir(config_dir=str(AGENT_LOOP_YAML.parent), version_base=None):
        config = hydra.compose("trace_trainer", overrides=overrides)
    config.transfer_queue.enable = True  # what TaskRunnerV1.run does
    return config


@contextlib.contextmanager
def trace_trainer(setup, data: Path | None = None, *overrides: str):
    """The real ``TraceTrainer`` as far as a CPU takes it (``PPOTrainer.init()`` would start FSDP
    workers on GPUs): its tokenizer and dataloader, TransferQueue, and ``TraceAgentLoopManager``'s
    Ray workers on the stand-in server behind a rollout replica. Yields (trainer, replica)."""
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import get_router_handle

    from tests.verl.standin_replica import StandinReplica
    from trace_agents.verl.trainer import TraceAgentLoopManager, TraceAsyncTrainer, TraceTrainer

    root, train, server = setup
    config = compose(root, data or train, *overrides)
    OmegaConf.resolve(config)
    tq.init(config.transfer_queue)
    try:
        replica = StandinReplica.remote(server.url, 1)
        client = LLMServerClient(config, load_balancer_handle=get_router_handle({"standin": replica}))
        asynchronous = config.trainer.v1.trainer_mode == "trace_async"
        trainer = (TraceAsyncTrainer if asynchronous else TraceTrainer)(config)
        trainer._init_tokenizer()
        trainer._init_dataloader()
        trainer.global_steps = 1
        trainer.agent_loop_manager = TraceAgentLoopManager.create(
            config=config, llm_client=client, teacher_client=None, reward_loop_worker_handles=None)
        yield trainer, replica
    finally:
        tq.close()


def test_one_trace_step_through_verls_v1_machinery(setup):
    import transfer_queue as tq

    with trace_trainer(setup) as (trainer, replica):
        predictor = trainer.sampler.allocator.predictor

        trainer.prepare_step()  # Stage 1, per-row __rollout_n__ and caps, allocator to the workers
        batch, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=PROMPTS)
        metrics: dict = {}
        trainer._compute_advantage(batch, metrics)
        probe = [ep.prefix_text(1) for ep in trainer.sampler.episodes.values()]
        before = predictor.predict(probe)
        refit = trainer.refit_predictor()

        # Stage 1 per prompt, Stage 2 per prompt: sessions of each uid = its roots + its continuations
        sampler, budget = trainer.sampler, trainer.budget
        assert metrics["trace/roots_planned"] == 4 and metrics["trace/prompts_opened"] == PROMPTS
        sessions = Counter(key.split("_")[0] for key in batch.keys)
        episodes = list(sampler.episodes.values())
        by_uid = Counter(ep.prompt_key for ep in episodes)
        assert sessions == by_uid and len(sessions) == PROMPTS
        roots = [ep for ep in episodes if ep.parent is None]
        conts = [ep for ep in episodes if ep.parent is not None]
        assert Counter(ep.prompt_key for ep in roots) == Counter(dict.fromkeys(sessions, 2))
        assert len(conts) == metrics["trace/continuations_cap"] == 8
        for ep in conts:  # branched from its own prompt's root, from the exact token prefix
            parent = sampler.episodes[ep.parent[0]]
            offset = parent.turns[ep.branch_turn - 1].offset
            assert parent.prompt_key == ep.prompt_key and parent.parent is None
            assert ep.response_ids[:offset] == parent.response_ids[:offset] and set(ep.response_mask[:offset]) == {0}
        # trees, the budget as the native sampler charges it
        for uid, tree in sampler.trees.items():
            leaves = list(tree.leaves())
            assert sum(leaf.bare for leaf in leaves) == 2 and len(leaves) == by_uid[uid]
        assert (budget.roots, budget.continuations, budget.spent) == (4, 8, 8.0) == (4, 8, metrics["trace/cost"])
        # the weights version and the engine's stop reason came through
        assert {tag["min_global_steps"] for tag in batch.tags} == {1}
        assert {ep.engine_stop_reason for ep in episodes} <= {"completed", "length"}
        # tree advantages and trained-token masks are in TransferQueue for verl's actor update
        stored = tq.kv_batch_get(keys=batch.keys, partition_id="train",
                                 select_fields=["advantages", "response_mask", "responses", "extra_fields"])
        for adv, mask, resp, extra in zip(stored["advantages"], stored["response_mask"], stored["responses"],
                                          stored["extra_fields"]):
            ep = Episode.from_dict(extra["trace_episode"])
            assert adv.shape == mask.shape == resp.shape and resp.tolist() == ep.response_ids
            assert np.isfinite(adv.numpy()).all()
            if ep.parent is not None:
                assert mask[: ep.turns[ep.branch_turn - 1].offset].sum() == 0  # trains only its own turns
        # the predictor was refit on this step's trees
        assert refit and not np.allclose(predictor.predict(probe), before)
        served = ray.get(replica.served.remote())
        assert served and {tuple(r["sampling_params"]["stop"]) for r in served} == {("</tool_call>", "</answer>")}
        assert max(r["sampling_params"]["max_tokens"] for r in served) == 24  # the YAML's option, every run
        json.dumps(metrics)  # loggable


def test_a_failed_prompts_stage2_share_is_re_spent_by_the_other(setup):
    """Prompt A's sessions all fail (its task does not exist), so its Stage 2 share goes to the
    step's shared pool and prompt B, planned after it on a Ray worker, draws it: the step spends
    its whole budget (2 + 2 roots, 8 continuations: 8 traj-eq), where B alone planned 4."""
    root, data, _ = setup
    rows = pq.read_table(data).to_pylist()[:PROMPTS]
    rows[0]["extra_info"]["task_id"] = "no-such-task"
    broken = root / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows), broken)
    with trace_trainer(setup, broken) as (trainer, _):
        trainer.prepare_step()
        batch, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=PROMPTS)
        metrics: dict = {}
        trainer._compute_advantage(batch, metrics)

        episodes = list(trainer.sampler.episodes.values())
        failed = {ep.prompt_key for ep in episodes if ep.failed}
        assert len(failed) == 1 and all(ep.parent is None for ep in episodes if ep.prompt_key in failed)
        conts = [ep for ep in episodes if ep.parent is not None]
        assert conts and {ep.prompt_key for ep in conts}.isdisjoint(failed)
        assert metrics["trace/continuations_cap"] == 8 and len(conts) == 8  # 4 its own + 4 re-spent
        budget = trainer.budget
        assert (budget.roots, budget.continuations, budget.spent) == (4, 8, 8.0) and budget.spent <= budget.total


def test_mini_batches_of_one_step_add_up_to_the_steps_trees(setup):
    """``trainer.v1.parameter_sync_step=2``: verl samples the step's prompts in two mini-batches and
    runs the advantage step on each; the refit and the step's figures must see both prompts' trees
    (they once saw only the last mini-batch's)."""
    with trace_trainer(setup) as (trainer, _):
        trainer.prepare_step()
        for _ in range(2):  # what PPOTrainer.step does with parameter_sync_step=2: _step_once per half
            half, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=PROMPTS // 2)
            trainer._compute_advantage(half, {})
        assert len(trainer.sampler.trees) == PROMPTS
        assert (trainer.budget.roots, trainer.budget.continuations) == (4, 8)
        texts, _, _ = backup_targets(list(trainer.sampler.trees.values()))
        assert {prompt_of(t) for t in texts} == {tree.root.prefix_text for tree in trainer.sampler.trees.values()}
        assert "trace/predictor_brier" in trainer.refit_predictor()


def test_trace_under_verls_colocate_async_trainer_charges_each_group_to_its_own_plan(setup, monkeypatch):
    """``trainer.v1.trainer_mode=trace_async``: verl's own ``step``/``_step_once``, its async replay
    buffer and its refills, in ``fit()``'s order (warm-up batch, then steps). What needs GPUs is
    passed through: the actor's log-probs and update, batch balancing, the weight sync around
    sampling. With ``max_off_policy_threshold=1`` the warm-up's leftover groups are stale at step
    2: verl evicts and refills them, and each rollout is charged to the plan that decided it."""
    import time

    import transfer_queue as tq

    from trace_agents.verl.trainer import TraceAsyncTrainer

    for name in ("_balance_batch", "_compute_old_log_prob", "_update_actor"):
        monkeypatch.setattr(TraceAsyncTrainer, name, lambda self, batch, *a, **k: batch)
    monkeypatch.setattr(TraceAsyncTrainer, "on_sample_end", lambda self: None)
    overrides = ("trainer.v1.trainer_mode=trace_async", "trainer.v1.colocate_async.num_warmup_batches=1",
                 "trainer.v1.sampler.max_off_policy_threshold=1")
    with trace_trainer(setup, None, *overrides) as (trainer, _):
        trainer.reward_loop_manager = type("Rewards", (), {"reward_loop_worker_handles": ["in the agent loop"]})
        trainer.on_train_begin()  # the warm-up batch: plan 0
        assert trainer.replay_buffer.trainer is trainer and type(trainer.replay_buffer).__name__ == \
            "TraceReplayBufferAsync"

        def settle_in_flight():  # let every submitted group end, so the eviction below is certain
            deadline = time.time() + 300
            while time.time() < deadline:
                tags = tq.kv_list("train").get("train", {})
                if all(t.get("status") in ("finished", "failure") for t in tags.values() if t.get("is_prompt")):
                    return
                time.sleep(1)
            raise TimeoutError("groups still in flight")

        figures = []
        for step in (1, 2):
            trainer.global_steps = step
            settle_in_flight()
            metrics: dict = {}
            trainer.step(metrics, {})
            figures.append(metrics)
            trained = {ep.prompt_key for ep in trainer.sampler.episodes.values()}
            assert len(trained) == PROMPTS and metrics["trace/cost"] > 0

        first, second = figures
        # step 1 trained 2 of the 4 groups of plans 0 (warm-up) and 1 (its batch), whichever ended first
        assert first["trace/plans"] == 1
        # step 2: the other 2 are stale (span 2 > 1): evicted, charged to their plans, refilled
        assert second["trace/evicted_groups"] == PROMPTS and second["trace/plans"] == 2
        closed = [f for f in figures if f["trace/plans_closed"]]
        assert sum(f["trace/plans_closed"] for f in figures) >= 2
        assert sum(f["trace/plans_closed_trained"] + f["trace/plans_closed_evicted"] for f in closed) >= 2 * PROMPTS
        assert sum(f["trace/plans_closed_evicted"] for f in closed) == PROMPTS
        assert all(0 < f["trace/plans_closed_cost"] <= f["trace/plans_closed_budget"] for f in closed)
        # step 2 submitted 4 prompts (its batch and the refill) and trained 2 of them: the other 2
        # stay open in the plans of step 2 that decided them
        assert sum(len(p.open) for p in trainer.plans.plans.values()) == PROMPTS
        assert {p.step for p in trainer.plans.plans.values()} == {2}
        json.dumps(figures)
        # the open plans' Stage 2 pools, as a checkpoint saves them, read from and restored into
        # the run's real `PlanPools` actor
        pools = trainer.trace_state()["pools"]
        assert {p["id"] for p in pools["plans"]} <= set(trainer.plans.plans)
        json.dumps(pools)
        trainer.agent_loop_manager.load_pools(pools, list(trainer.plans.plans))
        assert trainer.agent_loop_manager.pools_state() == pools


def test_verls_rollout_correction_weighs_each_row_by_the_tokens_it_trains(setup):
    """``algorithm.rollout_correction`` with the engine's log-probs (``calculate_log_probs``), in
    verl's order: the actor writes ``old_log_probs`` for every token, then the advantage step. A
    continuation's inherited prefix carries placeholder engine log-probs (0) far from the actor's
    (-4 here): were they read, every continuation's sequence weight would be exp(-4 x the prefix)
    and ``seq_max_k2`` (k2 = 8 > 1) would reject it."""
    import torch
    import transfer_queue as tq
    from tensordict import TensorDict

    overrides = ("actor_rollout_ref.rollout.calculate_log_probs=true",
                 "algorithm.rollout_correction.rollout_is=sequence",
                 "algorithm.rollout_correction.rollout_rs=seq_max_k2",
                 "algorithm.rollout_correction.rollout_rs_threshold=1.0")
    with trace_trainer(setup, None, *overrides) as (trainer, _):
        trainer.prepare_step()
        batch, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=PROMPTS)
        stored = tq.kv_batch_get(keys=batch.keys, partition_id="train",
                                 select_fields=["response_mask", "rollout_log_probs"])
        old = [torch.where(mask.bool(), engine + 0.01, torch.full_like(engine, -4.0))
               for mask, engine in zip(stored["response_mask"], stored["rollout_log_probs"])]
        tq.kv_batch_put(keys=batch.keys, partition_id="train", fields=TensorDict(
            {"old_log_probs": torch.nested.as_nested_tensor(old, layout=torch.jagged)}, batch_size=len(old)))
        metrics: dict = {}
        trainer._compute_advantage(batch, metrics)

        after = tq.kv_batch_get(keys=batch.keys, partition_id="train",
                                select_fields=["response_mask", "rollout_is_weights", "extra_fields"])
        conts = 0
        for mask, weights, extra in zip(after["response_mask"], after["rollout_is_weights"], after["extra_fields"]):
            ep = Episode.from_dict(extra["trace_episode"])
            assert mask.tolist() == ep.response_mask  # nothing rejected, inherited tokens still untrained
            trained = int(mask.sum())
            assert weights.shape == mask.shape
            assert weights[mask.bool()] == pytest.approx(min(np.exp(0.01 * trained), 2.0), rel=1e-4)
            conts += ep.parent is not None
        assert conts == 8 and any(key.startswith("rollout_corr/") for key in metrics)
