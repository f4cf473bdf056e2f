"""One turn through a dialect: the model's tokens in; the env's answer and the masked tokens out.

The native rollouts (:mod:`trace_agents.rollout`) and verl's agent loop
(:mod:`trace_agents.verl.episode`) both play a turn with :func:`play_turn`, so the two paths read a
reply, step the env and cut the token segment after it the same way, in every dialect, and their
transcripts (the predictor's H_t) hold the same action text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsFloat

from trace_envs import ToolEnv

if TYPE_CHECKING:
    from trace_agents.dialects import Dialect

StepResult = tuple[str, SupportsFloat, bool, bool, dict[str, Any]]


@dataclass(frozen=True)
class TurnOutcome:
    text: str
    """The reply as the dialect reads it (the model's tokens less the end of turn): the turn's
    action in transcripts."""
    action: Any
    """What ``env.step`` received: the text (``react``) or the parsed message."""
    observation: str | None
    """None when the episode ended at this turn."""
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    tail_ids: list[int]
    """The masked tokens after the action: end of turn, observation, next generation prompt (or
    what closes the last turn)."""

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated


async def play_turn(dialect: Dialect, env: ToolEnv, action_ids: Sequence[int],
                    step: Callable[[Any], Awaitable[StepResult]] | None = None) -> TurnOutcome:
    """Parse the model's ``action_ids`` in ``dialect``, step ``env`` with the result (``step``:
    how the caller runs a step, default ``env.astep``) and cut the tokens that follow."""
    text = dialect.action_text(action_ids)
    action = dialect.parse(text, env)
    observation, reward, terminated, truncated, info = await (step or env.astep)(action)
    shown = None if terminated or truncated else observation
    tail = dialect.after_action_ids(action_ids, action, shown, info)
    return TurnOutcome(text, action, shown, float(reward), terminated, truncated, info, list(tail))
