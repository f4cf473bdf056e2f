"""TraceEnvAgentLoop against a stand-in of verl's agent-loop module (verl is not installed).

The stand-in mirrors verl's interface (verl/experimental/agent_loop/agent_loop.py, v0.6 to main):
``AgentLoopBase.__init__(trainer_config, server_manager, tokenizer, processor, **kwargs)``,
``AgentLoopOutput`` (pydantic) and ``register(name)``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tests.verl.conftest import ChatMLTokenizer, ScriptedServer, answer, calc, script, spec
from trace_agents.verl import BRANCH_KEY, EPISODE_KEY, Episode

EXAMPLE_YAML = Path(__file__).parents[2] / "examples" / "verl" / "agent_loop.yaml"


class AgentLoopMetrics(BaseModel):
    generate_sequences: float = 0.0
    tool_calls: float = 0.0
    num_preempted: int = -1


class AgentLoopOutput(BaseModel):
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None = None
    reward_score: float | None = None
    num_turns: int = 0
    metrics: AgentLoopMetrics
    extra_fields: dict[str, Any] = {}


@pytest.fixture
def verl_stub(monkeypatch):
    registry: dict[str, dict] = {}

    class AgentLoopBase:
        def __init__(self, trainer_config, server_manager, tokenizer, processor, **kwargs):
            self.config = trainer_config.config
            self.server_manager = server_manager
            self.tokenizer = tokenizer

    def register(name):
        def decorator(cls):
            registry[name] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
            return cls
        return decorator

    module = types.ModuleType("verl.experimental.agent_loop.agent_loop")
    module.AgentLoopBase, module.AgentLoopOutput, module.register = AgentLoopBase, AgentLoopOutput, register
    for name in ("verl", "verl.experimental", "verl.experimental.agent_loop"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delitem(sys.modules, "trace_agents.verl.agent_loop", raising=False)
    yield registry, importlib.import_module("trace_agents.verl.agent_loop")
    sys.modules.pop("trace_agents.verl.agent_loop", None)


def trainer_config(engine: str = "vllm", data: dict | None = None) -> types.SimpleNamespace:
    rollout = types.SimpleNamespace(name=engine, prompt_length=2048, response_length=1024)
    return types.SimpleNamespace(config=types.SimpleNamespace(
        actor_rollout_ref=types.SimpleNamespace(rollout=rollout), data=data or {}))


def build_from_yaml(policy, data: dict | None = None) -> tuple[Any, ScriptedServer]:
    """What AgentLoopWorker does: hydra-instantiate the YAML entry with verl's arguments."""
    entry = yaml.safe_load(EXAMPLE_YAML.read_text())[0]
    module_name, _, cls_name = entry["_target_"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    tok = ChatMLTokenizer()
    server = ScriptedServer(tok, policy)
    options = {k: v for k, v in entry.items() if k != "_target_"}  # hydra passes `name` too
    loop = cls(trainer_config=trainer_config(data=data), server_manager=server, tokenizer=tok, processor=None,
               dataset_cls=None, dataset_config=None, **options)
    return loop, server


def test_the_loop_registers_under_the_yaml_name_and_target(verl_stub):
    registry, module = verl_stub
    entry = yaml.safe_load(EXAMPLE_YAML.read_text())[0]
    assert entry["name"] == module.AGENT_NAME and registry[entry["name"]]["_target_"] == entry["_target_"]


def test_a_dataset_row_becomes_verls_agent_loop_output(verl_stub):
    loop, server = build_from_yaml(script(calc("2+3"), f"<answer>{answer()}</answer>"))
    s = spec()
    row = {"uid": "u1", "index": 0, "raw_prompt": [{"role": "user", "content": "..."}],
           "extra_info": {"env_id": s.env_id, "env_kwargs": dict(s.env_kwargs), "task_id": s.task_id}}
    out = asyncio.run(loop.run({"temperature": 1.0, "logprobs": False}, **row))
    assert isinstance(out, AgentLoopOutput)
    assert out.reward_score == 1.0 and out.num_turns == 4 and out.metrics.generate_sequences >= 0
    assert len(out.response_ids) == len(out.response_mask) and out.response_mask[0] == 1 and 0 in out.response_mask
    episode = out.extra_fields[EPISODE_KEY]
    assert isinstance(episode, Episode) and episode.prompt_key == "u1" and episode.turns[0].snapshot
    sent = server.calls[0]["sampling_params"]
    assert sent["stop"] == ["</tool_call>", "</answer>"] and sent["include_stop_str_in_output"] is True

    server.policy = script(f"<answer>{answer()}</answer>")
    cont = asyncio.run(loop.run({"temperature": 1.0}, **row, **{BRANCH_KEY: episode.branch(1)}))
    assert cont.prompt_ids == out.prompt_ids
    offset = episode.turns[0].offset
    assert cont.response_ids[:offset] == out.response_ids[:offset] and cont.response_mask[:offset] == [0] * offset
    assert cont.extra_fields[EPISODE_KEY].parent == (episode.id, 1)


def test_verls_chat_template_kwargs_reach_the_chat_format(verl_stub):
    loop, _ = build_from_yaml(script("x"), {"apply_chat_template_kwargs": {"enable_thinking": False}})
    assert loop.runner.format.template_kwargs == {"enable_thinking": False}


def test_a_row_without_env_id_is_a_clear_error(verl_stub):
    loop, _ = build_from_yaml(script("<answer>1</answer>"))
    with pytest.raises(ValueError, match="env_id"):
        asyncio.run(loop.run({}, uid="u", extra_info={"index": 3}))


def test_the_glue_imports_without_verl():
    assert "verl" not in sys.modules
    import trace_agents.verl  # noqa: F401
    assert "verl" not in sys.modules
