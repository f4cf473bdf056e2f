"""`TraceEnvAgentLoop`: verl's agent-loop extension point, driving trace-rl envs.

Imports verl 0.9 (``AgentLoopBase``, ``AgentLoopOutput`` and ``register`` from
``verl.experimental.agent_loop.agent_loop``); verl's rollout workers import it through the
agent-loop YAML (``_target_: trace_agents.verl.agent_loop.TraceEnvAgentLoop``). All logic lives in
`EpisodeRunner` (which plays with the native rollouts' loop, ``trace_agents.episode.play``).

A run with a `Branch` in keyword ``trace_branch`` (the TRACE worker's continuations) resumes that
branch; any other run plays ``extra_info``'s env and task from the start.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, _agent_loop_registry, register

from trace_agents.dialects import make_dialect
from trace_agents.verl.episode import EnvSpec, EpisodeRunner, stop_params
from trace_agents.verl.sampler import BRANCH_KEY, EPISODE_KEY

AGENT_NAME = "trace_env"


class TraceEnvAgentLoop(AgentLoopBase):
    """Options (keys next to ``_target_`` in the agent-loop YAML):

    * ``dialect`` (default ``auto``: read from the tokenizer's chat template): the model family's
      tool-call format, one of ``trace_agents.dialects.DIALECTS`` (docs/dialects.md);
    * ``stop_at_action_end`` (default true): stop generation where the dialect ends a turn
      (``react``: ``</tool_call>``/``</answer>``; the families' end-of-turn tokens) with the
      engine's own stop parameters (vLLM and SGLang);
    * ``train_prefix`` (default false): also train a continuation's inherited prefix tokens;
    * ``max_tokens_per_turn`` (default none): cap each generation (``rollout.response_length``
      caps the whole trajectory);
    * ``step_timeout_s`` (default 120): each env step's deadline (past it the episode fails);
    * ``episode_timeout_s`` (default 900): the whole episode's, generations included, so a hung
      server or tool fails one episode (charged, its turns kept) instead of stalling the step.
    """

    def __init__(self, *args: Any, dialect: str = "auto", stop_at_action_end: bool = True,
                 train_prefix: bool = False, max_tokens_per_turn: int | None = None,
                 step_timeout_s: float | None = 120.0, episode_timeout_s: float | None = 900.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rollout = self.config.actor_rollout_ref.rollout
        template_kwargs = self.config.data.get("apply_chat_template_kwargs", None) or {}
        spoken = make_dialect(self.tokenizer, dialect, dict(template_kwargs))
        self.runner = EpisodeRunner(
            self.server_manager.generate,
            spoken,
            response_length=rollout.response_length,
            prompt_length=rollout.prompt_length,
            stop=stop_params(rollout.name, spoken) if stop_at_action_end else None,
            train_prefix=train_prefix,
            max_tokens_per_turn=max_tokens_per_turn,
            step_timeout_s=step_timeout_s,
            episode_timeout_s=episode_timeout_s,
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        branch = kwargs.get(BRANCH_KEY)
        if branch is not None:
            episode = await self.runner.resume(branch, sampling_params)
        else:
            prompt_key = str(kwargs.get("uid", kwargs.get("index", "")))
            spec = EnvSpec.from_extra_info(kwargs.get("extra_info") or {})
            episode = await self.runner.run(spec, sampling_params, prompt_key=prompt_key)
        return AgentLoopOutput(**episode.verl_fields(),
                               extra_fields={EPISODE_KEY: episode, **episode.global_steps_fields()})


# verl loads the agent-loop YAML (with its options) into the registry before it first imports this
# module through ``_target_``; a plain ``@register`` would then replace that entry with a bare one,
# and every later run would lose the YAML's options. Register only where the YAML has not.
if AGENT_NAME not in _agent_loop_registry:
    register(AGENT_NAME)(TraceEnvAgentLoop)
