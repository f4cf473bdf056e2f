"""The one episode loop: generate, parse, step the env, cut the tokens after the action; repeat.

:func:`play` drives the native rollouts (:mod:`trace_agents.rollout`, which grows trees from the
:class:`Turn` records) and verl's agent loop (:mod:`trace_agents.verl.episode`, which flattens them
into verl's prompt/response ids), each with its own ``generate``. So limits, the env-step
deadline, the engine abort and failure handling are the same on both paths: any exception in
generation, parsing or the env step ends the episode as ``failed`` with the error kept, its
completed turns recorded; it never escapes into the caller's batch.

What a prompt is belongs to the dialect: token ids for the model families and the ``react`` text
format, chat messages for servers that take no token ids (``MessagesDialect``; with the tools,
for servers that parse tool calls themselves: ``NativeToolsDialect``); the loop only
asks the dialect to read a reply, parse it, cut the tokens after it and extend the prompt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from trace_agents.backends.base import BackendError, Completion, Prompt
from trace_agents.dialects import Dialect
from trace_agents.react import ObservationRole, observation_role
from trace_envs import Snapshot, ToolEnv

Status = Literal["terminated", "truncated", "failed"]


Generate = Callable[[Prompt, int, int], Awaitable[Completion]]
"""``generate(prompt, max_tokens, turn)``: the prompt in the dialect's form, at most ``max_tokens``
new tokens; ``turn`` (the env's turn count) lets a caller derive a per-turn sampling seed."""


@dataclass(frozen=True)
class Limits:
    turn_tokens: int
    """Cap on each generation."""
    response_tokens: int | None = None
    """Cap on the tokens this episode adds, model and env alike (verl's ``response_length`` less
    a continuation's inherited response); a turn whose observation would not fit ends it."""
    context_tokens: int | None = None
    """Cap on prompt plus response: a turn that might not fit is not started."""
    step_timeout_s: float | None = None
    """Deadline of one env step (its thread is abandoned; the episode fails)."""
    episode_timeout_s: float | None = None
    """Deadline of the whole episode, generations and env steps alike (a hung server or tool):
    past it the episode fails, the turns it completed kept."""


@dataclass(frozen=True)
class Turn:
    """What the model did, what the env answered, and the state after."""

    action: str
    """The reply text: the model's tokens as the dialect reads them (chat messages: the server's
    text; native tool calling: its assistant message as JSON); the turn's action in transcripts."""
    observation: str | None
    """None when the episode ended at this turn."""
    action_ids: tuple[int, ...]
    """The model's tokens: trainable."""
    action_logprobs: tuple[float, ...] | None
    env_ids: tuple[int, ...]
    """Template and observation tokens after the action, up to the next generation prompt (or
    what closes the last turn): masked."""
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int | None
    snapshot: Snapshot
    env_action: Any = None
    """What ``env.step`` received: the text, or the dialect's parsed message."""
    policy_version: int = 0
    """The policy's version (updates applied) when the turn's generation started: its oldest
    tokens' version, which bounds their staleness in an asynchronous run."""
    prompt_state: tuple[float, ...] | None = field(default=None, compare=False, repr=False)
    """The policy's last-layer state at the end of the turn's prompt, when the engine returned
    it (``trace_agents.policy_states``)."""

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated

    @property
    def observation_role(self) -> ObservationRole:
        return observation_role(self.info)


@dataclass(kw_only=True)
class Episode:
    """One play of the loop: the turns it added and how it ended (failed ones are kept)."""

    turns: list[Turn] = field(default_factory=list)
    status: Status | None = None
    stop_reason: str = ""
    """"answer", "max_turns" (the env's turn limit), "response_length", "context" (the token
    limits), "aborted" (the engine aborted a generation) or "error" (an exception; see ``error``)."""
    reward: float | None = None
    """The last turn's reward; 0 for a token limit; None when there is no outcome (failed, or
    no turn played)."""
    error: str | None = None
    generate_seconds: float = 0.0
    env_seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(len(t.action_ids) for t in self.turns)

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def cached_tokens(self) -> int:
        return sum(t.cached_tokens or 0 for t in self.turns)


async def play(generate: Generate, dialect: Dialect, env: ToolEnv, prompt: Prompt, *, limits: Limits,
               context: int = 0, pool: Executor | None = None) -> Episode:
    """Play ``env`` from its current state, ``prompt`` being the exact prefix that led there
    (``context`` tokens long); ``pool`` runs synchronous env steps."""
    episode = Episode()
    try:
        await _turns(episode, generate, dialect, env, prompt, limits, context, pool)
    except Exception as exc:  # one broken episode must not sink the others of the step
        error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
        episode.status, episode.stop_reason, episode.error, episode.reward = "failed", "error", error, None
    return episode


async def _turns(episode: Episode, generate: Generate, dialect: Dialect, env: ToolEnv, prompt: Prompt,
                 limits: Limits, context: int, pool: Executor | None) -> None:
    used = 0  # tokens this episode added
    loop = asyncio.get_running_loop()
    deadline = None if limits.episode_timeout_s is None else loop.time() + limits.episode_timeout_s
    while True:
        left = None if limits.response_tokens is None else limits.response_tokens - used
        max_tokens = limits.turn_tokens if left is None else min(limits.turn_tokens, left)
        if left is not None and left <= 0:
            return _stop(episode, "response_length")
        if limits.context_tokens and context + used + max_tokens > limits.context_tokens:
            return _stop(episode, "context")  # the context is full: like running out of turns
        started = time.perf_counter()
        out = await _bounded(generate(prompt, max_tokens, env.turn), None, deadline, limits)
        episode.generate_seconds += time.perf_counter() - started
        if out.finish_reason == "abort":  # a partial action: no outcome to learn from
            episode.status, episode.stop_reason, episode.error = "failed", "aborted", "the engine aborted generation"
            return
        ids = tuple(out.token_ids[:max_tokens])
        logprobs = None if out.logprobs is None else tuple(out.logprobs[: len(ids)])
        started = time.perf_counter()
        text = dialect.read(replace(out, token_ids=list(ids)))
        action = dialect.parse(text, env)
        observation, reward, terminated, truncated, info = await _bounded(
            env.astep(action, pool), limits.step_timeout_s, deadline, limits)
        shown = None if terminated or truncated else observation
        tail = tuple(dialect.after_action_ids(ids, action, shown, info))
        episode.env_seconds += time.perf_counter() - started
        turn = Turn(text, shown, ids, logprobs, tail, float(reward),
                    terminated, truncated, info, out.finish_reason, out.prompt_tokens, out.cached_tokens,
                    env.snapshot(), action, int(out.meta.get("policy_version", 0)), out.prompt_state)
        if not turn.ended and left is not None and len(ids) + len(tail) >= left:
            episode.turns.append(replace(turn, observation=None, env_ids=(), reward=0.0, truncated=True))
            return _stop(episode, "response_length")  # the observation does not fit
        episode.turns.append(turn)
        if turn.ended:
            episode.status = "terminated" if terminated else "truncated"
            episode.stop_reason, episode.reward = "answer" if terminated else "max_turns", turn.reward
            return
        prompt = dialect.extend(prompt, turn)
        used += len(ids) + len(tail)


async def _bounded(work: Awaitable[Any], step_s: float | None, deadline: float | None, limits: Limits) -> Any:
    """``work`` within the env step's own deadline (``step_s``) and what is left of the episode's."""
    left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
    episode_first = left is not None and (step_s is None or left < step_s)
    try:
        return await asyncio.wait_for(work, left if episode_first else step_s)
    except TimeoutError:
        what = (f"the episode exceeded its {limits.episode_timeout_s:g} s deadline" if episode_first
                else f"env step exceeded its {step_s:g} s deadline")
        raise TimeoutError(what) from None


def _stop(episode: Episode, reason: str) -> None:
    """A token limit hit before an answer: truncated, reward 0 (none if no turn was played)."""
    episode.status, episode.stop_reason = "truncated", reason
    episode.reward = 0.0 if episode.turns else None

