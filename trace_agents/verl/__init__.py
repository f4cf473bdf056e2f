"""Scale-out on verl: verl's rollout workers play trace-rl envs, and TRACE plans their samples.

* `TraceEnvAgentLoop` (``trace_agents.verl.agent_loop``): the agent loop to register in verl's
  agent-loop YAML;
* ``trace_agents.verl.trainer``: TRACE as a verl V1 trainer (``trainer.v1.trainer_mode=trace``),
  its agent-loop worker and manager, and the one-command launcher ``python -m trace_agents.verl.main``;
* `EpisodeRunner`: the native rollouts' episode loop (``trace_agents.episode.play``) by token ids
  through verl's ``generate``, recording each turn's env snapshot and token offset, and resuming a
  continuation from them;
* `TraceSampler`, `plan_prompt`: TRACE's Stage 1 counts, per-prompt Stage 2 branches, trees,
  tree advantages and the predictor refit, in verl's batch terms.

Prompts, parsing and token segments come from the model family's dialect
(`trace_agents.dialects`), as in the in-process rollouts.

Everything exported here imports without verl. See docs/verl.md.
"""

from trace_agents.verl.episode import Branch, EnvSpec, Episode, EpisodeRunner, Turn, stop_params
from trace_agents.verl.sampler import (
    BRANCH_KEY, CONTINUATIONS_KEY, EPISODE_KEY, TraceSampler, plan_prompt, token_advantages,
)

__all__ = [
    "BRANCH_KEY", "Branch", "CONTINUATIONS_KEY", "EPISODE_KEY", "EnvSpec", "Episode", "EpisodeRunner",
    "TraceSampler", "Turn", "plan_prompt", "stop_params", "token_advantages",
]
