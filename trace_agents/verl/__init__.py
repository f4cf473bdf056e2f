"""Scale-out on verl: verl's rollout workers play trace-rl envs, and TRACE plans their samples.

* `TraceEnvAgentLoop` (``trace_agents.verl.agent_loop``, the one module that imports verl): the
  agent loop to register in verl's agent-loop YAML;
* `EpisodeRunner`: the ReAct loop by token ids through verl's ``generate``, recording each turn's
  env snapshot and token offset, and resuming a continuation from them;
* `TraceSampler`: TRACE's Stage 1 counts and Stage 2 branch requests in verl's batch terms.

Prompts and token segments come from `trace_agents.react.ChatFormat`, the same format the
in-process rollouts and trainer use.

Everything here but ``agent_loop`` imports without verl. See docs/verl.md.
"""

from trace_agents.verl.episode import Branch, EnvSpec, Episode, EpisodeRunner, Turn, stop_params
from trace_agents.verl.sampler import BRANCH_KEY, EPISODE_KEY, TraceSampler

__all__ = [
    "BRANCH_KEY", "Branch", "EPISODE_KEY", "EnvSpec", "Episode", "EpisodeRunner",
    "TraceSampler", "Turn", "stop_params",
]
