"""What the episode loop (:func:`trace_agents.episode.play`) asks of a dialect that speaks token ids.

The loop keeps the running prompt in the dialect's form; for the model families and the ``react``
text format it is token ids, read and extended here the same way for all of them, so a
continuation's prefix is the plain concatenation of its path's segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trace_agents.backends.base import Completion


class PlayedTurn(Protocol):
    """What a dialect reads of a turn the loop played (``trace_agents.episode.Turn`` is one): the
    dialects sit below the loop and never import it."""

    observation: str | None
    action_ids: tuple[int, ...]
    env_ids: tuple[int, ...]
    info: dict[str, Any]
    env_action: Any


class TokenPrompt:
    """Mixed into every dialect whose prompts are token ids (each has its own ``action_text``)."""

    def prompt(self, ids: Sequence[int], messages: Sequence[Any], tools: Sequence[Any]) -> list[int]:
        """The prompt a generation gets, of the renderings of the opening: the ids (tools included)."""
        return list(ids)

    def read(self, completion: Completion) -> str:
        """The reply as the dialect reads it, from the model's tokens."""
        return self.action_text(completion.token_ids)  # type: ignore[attr-defined]

    def extend(self, prompt: Sequence[int], turn: PlayedTurn) -> list[int]:
        """The prompt after ``turn``: the model's tokens, then the env's."""
        return [*prompt, *turn.action_ids, *turn.env_ids]
