"""TraceEnvAgentLoop inside the real verl 0.9: built from the packaged YAML the way
``AgentLoopWorker._run_agent_loop`` builds agent loops (hydra, verl's own constructor arguments),
its output through V1's ``AgentLoopOutput.as_dict`` and TransferQueue's tensordict, and back."""

from __future__ import annotations

import asyncio
import os
import sys

import hydra
import pytest
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput, DictConfigWrap, ToolListWrap, _agent_loop_registry,
)
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from tests.verl.conftest import ScriptedServer, answer, calc, script, spec
from trace_agents.verl import BRANCH_KEY, EPISODE_KEY, Episode, TraceSampler
from trace_agents.verl.main import AGENT_LOOP_YAML
from trace_allocation import Budget
from trace_allocation.allocators import TreeAllocator
from trace_allocation.predictors import LexicalPredictor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG_DIR = str(AGENT_LOOP_YAML.parent)


def verl_config(*overrides: str):
    """verl's ppo_trainer config as the TRACE launcher composes it."""
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra.compose("trace_trainer", overrides=list(overrides))


@pytest.fixture(scope="module")
def tokenizer():
    from trace_agents.models import tiny_tokenizer

    return tiny_tokenizer()


def build(tokenizer, policy, *overrides: str, end_of_turn=(1,), **options):
    """What AgentLoopWorker does: load the agent-loop YAML into verl's registry, instantiate
    (``options`` stand in for the YAML entry's keys)."""
    config = verl_config("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.prompt_length=2048",
                         "actor_rollout_ref.rollout.response_length=1024", *overrides)
    import trace_agents.verl.agent_loop  # noqa: F401  (the @register decorator)

    for entry in OmegaConf.load(AGENT_LOOP_YAML):
        _agent_loop_registry[entry.name] = entry
    server = ScriptedServer(tokenizer, policy, end_of_turn=end_of_turn)
    loop = hydra.utils.instantiate(
        config=OmegaConf.merge(_agent_loop_registry["trace_env"], options),
        trainer_config=DictConfigWrap(config=config),
        server_manager=server, tokenizer=tokenizer, processor=None, hf_model_type="qwen3",
        dataset_cls=None, data_config=DictConfigWrap(config.data), tools=ToolListWrap([]),
    )
    return loop, server


def row(uid: str = "u1", task: int = 0) -> dict:
    s = spec(task)
    return {"uid": uid, "index": 0, "raw_prompt": [{"role": "user", "content": "..."}], "session_id": 0,
            "extra_info": {"env_id": s.env_id, "env_kwargs": dict(s.env_kwargs), "task_id": s.task_id}}


def test_the_packaged_trace_config_selects_the_trace_trainer_and_manager():
    config = verl_config()
    assert config.trainer.use_v1 and config.trainer.v1.trainer_mode == "trace"
    assert config.actor_rollout_ref.rollout.agent.agent_loop_manager_class == (
        "trace_agents.verl.trainer.TraceAgentLoopManager")
    assert config.trace.budget.roots > 0 and config.trace.advantage == "tree"


def test_a_bad_trace_block_is_a_clear_error_before_ray_starts():
    from pydantic import ValidationError

    from trace_agents.verl.trainer import trace_settings

    with pytest.raises(ValueError, match="unknown keys"):
        trace_settings(verl_config("+trace.budgets=3"))
    with pytest.raises(ValidationError):
        trace_settings(verl_config("trace.budget.m_min=9", "trace.budget.m_max=4"))
    name, settings = trace_settings(verl_config("trace.budget.roots=10"))
    assert name == "trace" and settings.budget.total == 20.0


def test_a_dataset_row_becomes_verls_agent_loop_output(tokenizer):
    loop, server = build(tokenizer, script(calc("2+3"), f"<answer>{answer()}</answer>"))
    server.global_steps = 7
    out = asyncio.run(loop.run({"temperature": 1.0, "logprobs": False}, **row()))
    assert isinstance(out, AgentLoopOutput)
    assert out.reward_score == 1.0 and out.num_turns == 4 and out.metrics.generate_sequences >= 0
    assert len(out.response_ids) == len(out.response_mask) and out.response_mask[0] == 1 and 0 in out.response_mask
    episode = out.extra_fields[EPISODE_KEY]
    assert isinstance(episode, Episode) and episode.prompt_key == "u1" and episode.turns[0].snapshot
    assert episode.engine_stop_reason == "completed"
    # V1 tags staleness from these (AgentLoopWorkerTQ._agent_loop_postprocess)
    assert out.extra_fields["min_global_steps"] == out.extra_fields["max_global_steps"] == 7
    sent = server.calls[0]["sampling_params"]
    assert sent["stop"] == ["</tool_call>", "</answer>"] and sent["include_stop_str_in_output"] is True

    server.policy = script(f"<answer>{answer()}</answer>")
    cont = asyncio.run(loop.run({"temperature": 1.0}, **row(), **{BRANCH_KEY: episode.branch(1)}))
    assert cont.prompt_ids == out.prompt_ids
    offset = episode.turns[0].offset
    assert cont.response_ids[:offset] == out.response_ids[:offset] and cont.response_mask[:offset] == [0] * offset
    assert cont.extra_fields[EPISODE_KEY].parent == (episode.id, 1)


def test_episodes_survive_v1_serialisation_and_grow_the_same_tree(tokenizer):
    """V1 stores ``as_dict()`` (pydantic turns the Episode into dicts) in TransferQueue's
    tensordict; the trainer must rebuild the same episodes and the same tree from them."""
    loop, server = build(tokenizer, script(calc("6*7"), calc("ans+1"), "<answer>0</answer>"))
    root = asyncio.run(loop.run({}, **row())).extra_fields[EPISODE_KEY]
    server.policy = script(f"<answer>{answer()}</answer>")
    cont_out = asyncio.run(loop.run({}, **row(), **{BRANCH_KEY: root.branch(2)}))
    root_out = AgentLoopOutput(**root.verl_fields(), extra_fields={EPISODE_KEY: root})
    stored = list_of_dict_to_tensordict([root_out.as_dict(), cont_out.as_dict()])
    dicts = [extra[EPISODE_KEY] for extra in stored["extra_fields"]]
    assert all(isinstance(d, dict) for d in dicts)
    rebuilt = [Episode.from_dict(d) for d in dicts]
    assert rebuilt[0] == root and rebuilt[1] == cont_out.extra_fields[EPISODE_KEY]

    def tree_shape(episodes):
        sampler = TraceSampler(TreeAllocator(LexicalPredictor(2**10), rng=None))
        budget = Budget(4)
        sampler.observe(episodes, budget)
        tree = sampler.trees["u1"]
        return [(n.depth, n.reward, n.bare, n.prefix_text) for n in tree.nodes()], budget.spent

    assert tree_shape(dicts) == tree_shape([root, cont_out.extra_fields[EPISODE_KEY]])
    assert tree_shape(dicts)[1] == 1.5


def test_an_aborted_request_ends_the_episode_as_failed(tokenizer):
    loop, server = build(tokenizer, script(calc("2+3")))
    server.stop_reason = "aborted"
    ep = asyncio.run(loop.run({}, **row())).extra_fields[EPISODE_KEY]
    assert ep.failed and ep.stop_reason == "aborted" and ep.reward == 0.0
    assert ep.turns == [] and ep.response_mask == [0]  # the partial action was never played: one masked token
    AgentLoopOutput(**ep.verl_fields(), extra_fields={}).as_dict()  # verl scores the last response token
    sampler = TraceSampler(TreeAllocator(LexicalPredictor(2**10), rng=None))
    budget = Budget(2)
    sampler.observe([ep], budget)
    root = sampler.trees["u1"].root
    assert budget.spent == 1.0 and root.children == [] and root.reward is None  # charged, not scored


def test_verls_chat_template_kwargs_reach_the_dialect(tokenizer):
    loop, _ = build(tokenizer, script("x"), "+data.apply_chat_template_kwargs.enable_thinking=False")
    assert loop.runner.dialect.template_kwargs == {"enable_thinking": False}
    assert loop.runner.dialect.name == "react"  # auto: the tiny model's ChatML template renders no tools


def test_a_row_without_env_id_is_a_clear_error(tokenizer):
    loop, _ = build(tokenizer, script("<answer>1</answer>"))
    with pytest.raises(ValueError, match="env_id"):
        asyncio.run(loop.run({}, uid="u", extra_info={"index": 3}))


def test_the_glue_without_the_trainer_imports_no_ray():
    """`trace_agents.verl` (runner, sampler) stays importable where verl's Ray stack is absent."""
    import subprocess

    code = "import sys, trace_agents.verl; assert 'ray' not in sys.modules and 'verl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


def test_the_trace_launch_config_passes_verls_own_validation(tmp_path):
    """What ``python -m trace_agents.verl.main`` checks before starting Ray, with recipe-like sizes."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from trace_agents.models import tiny_qwen3

    model, tok = tiny_qwen3()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = verl_config(f"actor_rollout_ref.model.path={tmp_path}", "data.train_batch_size=128",
                         "actor_rollout_ref.actor.ppo_mini_batch_size=128", "actor_rollout_ref.rollout.n=3",
                         "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=8",
                         "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4")
    assert not need_critic(config)  # TRACE's advantages need no value model
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=False)


def test_the_yaml_entry_keeps_its_options_once_the_module_is_imported():
    """A worker loads the YAML into verl's registry, then hydra imports the module on the first
    run: the import must not replace the YAML entry (and its options) with a bare one."""
    import importlib

    import trace_agents.verl.agent_loop as module

    for entry in OmegaConf.load(AGENT_LOOP_YAML):
        _agent_loop_registry[entry.name] = entry
    importlib.reload(module)
    assert _agent_loop_registry["trace_env"]["max_tokens_per_turn"] is None
    assert _agent_loop_registry["trace_env"]["stop_at_action_end"] is True


# ------------------------------------------------------------------------------------ dialects
XML_MALFORMED = "<tool_call>\n<function=calculator>\n<parameter=expression>\n2+3\n</function>\n</tool_call>"


@pytest.fixture(scope="module")
def qwen_xml():
    """Qwen3.5's chat template from the trl wheel on the offline tokenizer (its XML tool calls)."""
    from tests.agents.family_tokenizers import family_tokenizer
    from trace_agents.dialects import make_dialect

    tok = family_tokenizer("qwen3_xml")
    return tok, make_dialect(tok)


def xml_script(dialect, *messages):
    """The replies written as Qwen3.5 writes them; which one follows from the turns in the context."""
    texts = [m if isinstance(m, str) else dialect.render_action(m) for m in messages]
    return lambda context, _n=0: texts[min(context.count("<|im_start|>assistant") - 1, len(texts) - 1)]


def test_a_family_dialect_plays_through_the_agent_loop_with_its_own_tokens(qwen_xml):
    """Qwen3.5 XML through TraceEnvAgentLoop (dialect auto-detected): a malformed call becomes an
    error observation, the token record is the native rollout's to the token, the predictor reads
    the same H_t on both paths, and a continuation resends its parent's exact prefix."""
    from trace_agents.backends import SamplingParams, ScriptedBackend
    from trace_agents.rollout import RolloutRunner, token_path
    from trace_envs.actions import ToolCall
    from trace_envs.structured import AssistantMessage

    tok, dialect = qwen_xml
    policy = xml_script(dialect, XML_MALFORMED,
                        AssistantMessage(tool_calls=(ToolCall("calculator", {"expression": "2+3"}),)),
                        AssistantMessage(f"<answer>{answer()}</answer>"))
    loop, server = build(tok, policy, end_of_turn=[tok.eos_token_id])
    assert loop.runner.dialect.name == "qwen3_xml"
    out = asyncio.run(loop.run({}, **row()))
    ep = out.extra_fields[EPISODE_KEY]
    assert (ep.reward, len(ep.turns), ep.stop_reason) == (1.0, 3, "answer")
    error, result = ep.turns[0].observation, ep.turns[1].observation
    assert error.startswith("Error: ") and "malformed tool call" in error and result == "5"
    sent = server.calls[0]["sampling_params"]
    assert sent["stop_token_ids"] == sorted(dialect.stop_ids) and "stop" not in sent

    native = RolloutRunner(ScriptedBackend(lambda ctx, _p: policy(ctx) + "<|im_end|>", tok), tokenizer=tok,
                           sampling=SamplingParams(max_tokens=1024))
    tree = native.new_tree(spec().make(), spec().task_id)
    (episode,) = asyncio.run(native.rollouts(tree, tree.root, 1))
    path = token_path(episode.leaf)
    closer = len(episode.leaf.handle.env_ids)  # native closes the last turn; verl's response ends at the model
    assert out.prompt_ids + out.response_ids == path.ids[: len(path.ids) - closer]
    assert out.response_mask == path.loss_mask[len(out.prompt_ids): len(path.ids) - closer]
    nodes = episode.leaf.path()
    assert [ep.prefix_text(k) for k in range(4)] == [n.prefix_text for n in nodes]

    server.calls.clear()
    cont = asyncio.run(loop.run({}, **row(), **{BRANCH_KEY: ep.branch(2)})).extra_fields[EPISODE_KEY]
    assert server.calls[0]["prompt_ids"] == ep.prompt_ids + ep.response_ids[: ep.turns[1].offset]
    assert cont.reward == 1.0 and cont.parent == (ep.id, 2) and len(cont.turns) == 3


def test_the_dialect_is_named_in_the_agent_loop_yaml(qwen_xml):
    tok, _ = qwen_xml
    loop, _ = build(tok, script("x"), dialect="react")
    assert loop.runner.dialect.name == "react"
    with pytest.raises(Exception, match="unknown dialect 'klingon'"):  # hydra wraps the ValueError
        build(tok, script("x"), dialect="klingon")
