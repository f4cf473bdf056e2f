"""One trace-rl episode driven by token ids through a verl-style ``generate``; no verl import.

`EpisodeRunner.run` plays an env from its first turn; `EpisodeRunner.resume` continues a recorded
episode from one of its turns (env restored from that turn's snapshot, generation continued from
the exact token prefix on the parent's sticky session, so the server's prefix cache hits). Both
play with the native rollouts' loop, :func:`trace_agents.episode.play` (its limits, env-step
deadline, engine abort and failure handling included), and flatten its turns into an `Episode`:
the verl output fields plus, per turn, the texts, the env snapshot and the token offset where a
continuation starts, which is what the TRACE sampler branches from.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym

import trace_envs  # noqa: F401  (registers the trace/* envs for gym.make)
from trace_envs import Snapshot, ToolEnv
from trace_agents.backends.base import Completion
from trace_agents.dialects import Dialect
from trace_agents.episode import Episode as Played
from trace_agents.episode import Limits, play
from trace_agents.react import ObservationRole, turn_text
from trace_allocation.tree import prefix_text


def stop_params(engine: str, dialect: Dialect) -> dict[str, Any]:
    """Sampling params that end a turn where ``dialect`` ends it: its stop strings, kept in the
    output (``react``: ``</tool_call>``, ``</answer>``), and its end-of-turn tokens (GLM's
    ``<|observation|>``, harmony's ``<|call|>``: not every server's eos list holds them). The
    names differ per engine; an unknown engine gets none and relies on the model's eos."""
    stop = {"stop": list(dialect.stop)} if dialect.stop else {}
    tokens = {"stop_token_ids": sorted(dialect.stop_ids)} if dialect.stop_ids else {}
    if engine == "vllm":
        return {**stop, **({"include_stop_str_in_output": True} if stop else {}), **tokens}
    if engine == "sglang":
        return {**stop, **({"no_stop_trim": True} if stop else {}), **tokens}
    return {}


class Generate(Protocol):
    """verl's ``LLMServerClient.generate`` (``verl/workers/rollout/llm_server.py``): returns a
    ``TokenOutput`` (``token_ids``, ``log_probs``, ``stop_reason``, ``extra_fields`` with the
    weights' ``global_steps``); ``request_id`` keys the sticky session."""

    def __call__(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class EnvSpec:
    """Which env and task a dataset row plays (from verl's ``extra_info``)."""

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    seed: int | None = None

    @classmethod
    def from_extra_info(cls, extra_info: Mapping[str, Any]) -> EnvSpec:
        """``env_kwargs`` may be a dict or a JSON string (parquet turns dicts whose keys differ
        between rows into structs padded with nulls; a string survives unchanged)."""
        if not isinstance(extra_info, Mapping) or not extra_info.get("env_id"):
            raise ValueError(f"extra_info needs an 'env_id' (e.g. 'trace/Calculator-v0'), got {extra_info!r}")
        kwargs = extra_info.get("env_kwargs") or {}
        if isinstance(kwargs, str):
            kwargs = json.loads(kwargs)
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"env_kwargs must be a JSON object, got {type(kwargs).__name__}")
        task_id, seed = extra_info.get("task_id"), extra_info.get("seed")
        return cls(
            str(extra_info["env_id"]), dict(kwargs),
            None if task_id is None else str(task_id), None if seed is None else int(seed),
        )

    def make(self) -> ToolEnv:
        env = gym.make(self.env_id, **self.env_kwargs).unwrapped
        if not isinstance(env, ToolEnv):
            raise TypeError(f"{self.env_id} is a {type(env).__name__}, not a trace_envs.ToolEnv")
        return env


@dataclass(frozen=True)
class Turn:
    """A played turn (``trace_agents.episode.Turn``) as it travels through verl: its tokens live
    in the episode's response, up to ``offset``; its snapshot as bytes."""

    action: str
    observation: str | None
    """None on the turn that ended the episode."""
    snapshot: bytes | None
    """The env after this turn (``Snapshot.to_bytes()``); None when the episode ended here."""
    offset: int
    """Response tokens up to and including this turn's observation: where a continuation resumes."""
    role: ObservationRole = "tool"
    """How the observation is rendered: a tool result, or the next user message (BFCL)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Turn:
        return cls(str(d["action"]), d["observation"], _bytes(d["snapshot"]), int(d["offset"]),
                   d.get("role", "tool"))


@dataclass(frozen=True)
class Branch:
    """What a continuation needs to resume a parent episode after ``turn`` env turns.

    Travels through verl as one object per batch row (column ``BRANCH_KEY``)."""

    parent_id: str
    turn: int
    session: str
    prompt_key: str
    env: EnvSpec
    task_prompt: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    turns: list[Turn]

    @property
    def snapshot(self) -> bytes:
        snap = self.turns[-1].snapshot
        assert snap is not None, "branches are only made at non-terminal turns"
        return snap


@dataclass
class Episode:
    """One trajectory, in verl's terms (prompt/response ids and mask) and TRACE's (turns)."""

    id: str
    session: str
    """Sticky request id: continuations reuse their parent's, so they reach the same server."""
    prompt_key: str
    """Groups episodes of one prompt (verl's ``uid``)."""
    env: EnvSpec
    task_prompt: str
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] | None = None
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    stop_reason: str = ""
    """As :attr:`trace_agents.episode.Episode.stop_reason`: "answer", "max_turns" (the env's turn
    limit), "response_length" (verl's token limit), or, for a failed episode that trains nothing,
    "aborted" (the engine aborted a request) or "error" (an exception, kept in ``error``)."""
    error: str | None = None
    parent: tuple[str, int] | None = None
    """(parent episode id, turn) for a continuation; None for a root rollout."""
    generate_seconds: float = 0.0
    env_seconds: float = 0.0
    engine_stop_reason: str | None = None
    """The server's ``stop_reason`` of the last generate call ("completed", "length", "aborted")."""
    min_global_steps: int | None = None
    """Weights version (trainer step) of the first generate call; verl tags staleness with it."""
    max_global_steps: int | None = None
    """Weights version of the last generate call."""

    @property
    def failed(self) -> bool:
        """No outcome (an engine abort or an exception), so the reward means nothing."""
        return self.stop_reason in ("aborted", "error")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Episode) -> Episode:
        """Rebuild an episode from its field dict: verl's V1 path stores ``AgentLoopOutput.as_dict()``
        (pydantic's ``model_dump``, which turns the dataclasses in ``extra_fields`` into dicts) in
        TransferQueue, so the trainer reads episodes back as dicts."""
        if isinstance(d, Episode):
            return d
        env = d["env"]
        parent = d.get("parent")
        return cls(
            id=str(d["id"]), session=str(d["session"]), prompt_key=str(d["prompt_key"]),
            env=env if isinstance(env, EnvSpec) else EnvSpec(
                str(env["env_id"]), dict(env.get("env_kwargs") or {}), env.get("task_id"), env.get("seed")),
            task_prompt=str(d["task_prompt"]),
            prompt_ids=list(d["prompt_ids"]), response_ids=list(d["response_ids"]),
            response_mask=list(d["response_mask"]),
            response_logprobs=None if d.get("response_logprobs") is None else list(d["response_logprobs"]),
            turns=[t if isinstance(t, Turn) else Turn.from_dict(t) for t in d["turns"]],
            reward=float(d["reward"]), terminated=bool(d["terminated"]), truncated=bool(d["truncated"]),
            stop_reason=str(d.get("stop_reason", "")), error=d.get("error"),
            parent=None if parent is None else (str(parent[0]), int(parent[1])),
            generate_seconds=float(d.get("generate_seconds", 0.0)), env_seconds=float(d.get("env_seconds", 0.0)),
            engine_stop_reason=d.get("engine_stop_reason"),
            min_global_steps=d.get("min_global_steps"), max_global_steps=d.get("max_global_steps"),
        )

    @property
    def branch_turn(self) -> int:
        return 0 if self.parent is None else self.parent[1]

    @property
    def num_turns(self) -> int:
        """verl's count of chat messages: the prompt, each action and each observation."""
        return 1 + len(self.turns) + sum(t.observation is not None for t in self.turns)

    def prefix_text(self, turn: int) -> str:
        """H_t as the predictor reads it: the task and the first ``turn`` turns (the same text as
        ``trace_agents.rollout.transcript`` on the in-process path)."""
        return prefix_text(self.task_prompt,
                           [turn_text(t.action, t.observation, t.role) for t in self.turns[:turn]])

    def branch(self, turn: int) -> Branch:
        """A continuation point after ``turn`` (1 <= turn < last) completed turns."""
        if not 1 <= turn <= len(self.turns) or self.turns[turn - 1].snapshot is None:
            raise ValueError(f"episode {self.id} has no branch point at turn {turn}")
        offset = self.turns[turn - 1].offset
        logprobs = None if self.response_logprobs is None else self.response_logprobs[:offset]
        return Branch(
            self.id, turn, self.session, self.prompt_key, self.env, self.task_prompt,
            list(self.prompt_ids), self.response_ids[:offset], self.response_mask[:offset],
            logprobs, self.turns[:turn],
        )

    def verl_fields(self) -> dict[str, Any]:
        """The fields of verl's ``AgentLoopOutput`` (metrics as its ``AgentLoopMetrics`` names).
        ``extra_fields`` is left to the caller; `global_steps_fields` holds verl's staleness tags."""
        return {
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "response_logprobs": self.response_logprobs,
            "reward_score": self.reward,
            "num_turns": self.num_turns,
            "metrics": {"generate_sequences": self.generate_seconds, "tool_calls": self.env_seconds},
        }


    def global_steps_fields(self) -> dict[str, int | None]:
        """``extra_fields`` entries verl's V1 path reads to tag staleness (as its ToolAgentLoop sets them)."""
        return {"global_steps": self.max_global_steps, "min_global_steps": self.min_global_steps,
                "max_global_steps": self.max_global_steps}


def _bytes(value: Any) -> bytes | None:
    """A snapshot as stored: bytes, or a list of ints / latin-1 text after a trip through a serializer."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    return bytes(value)


class EpisodeRunner:
    """Plays episodes by token ids (see the module docstring).

    ``train_prefix=False`` (the TRACE default) masks a continuation's inherited prefix to 0, so its
    loss covers only its new tokens; the prefix still conditions the forward pass.
    ``max_tokens_per_turn`` caps each generation (the in-process rollouts' ``max_tokens``); verl's
    ``response_length`` caps the whole trajectory; ``step_timeout_s`` is each env step's deadline
    and ``episode_timeout_s`` the whole episode's (a hung server or tool fails its episode instead of
    stalling verl's step). ``dialect`` is the model family's tool-call format
    (``trace_agents.dialects.make_dialect``). An env that cannot be built, reset or restored fails
    its episode too (charged, with its error); only a prompt longer than ``prompt_length``, a
    setting to fix, raises. Every env is closed when its episode ends.
    """

    def __init__(
        self,
        generate: Generate,
        dialect: Dialect,
        *,
        response_length: int,
        prompt_length: int | None = None,
        stop: Mapping[str, Any] | None = None,
        train_prefix: bool = False,
        max_tokens_per_turn: int | None = None,
        step_timeout_s: float | None = 120.0,
        episode_timeout_s: float | None = 900.0,
    ) -> None:
        if response_length < 1:
            raise ValueError("response_length must be at least 1")
        if max_tokens_per_turn is not None and max_tokens_per_turn < 1:
            raise ValueError("max_tokens_per_turn must be at least 1")
        self.generate = generate
        self.dialect = dialect
        self.response_length = response_length
        self.prompt_length = prompt_length
        self.stop = dict(stop or {})
        self.train_prefix = train_prefix
        self.max_tokens_per_turn = max_tokens_per_turn
        self.step_timeout_s = step_timeout_s
        self.episode_timeout_s = episode_timeout_s

    async def run(self, spec: EnvSpec, sampling_params: Mapping[str, Any], *, prompt_key: str) -> Episode:
        session = uuid.uuid4().hex
        episode = Episode(session, session, prompt_key, spec, "", [])

        def start(env: ToolEnv) -> None:
            options = None if spec.task_id is None else {"task_id": spec.task_id}
            episode.task_prompt, _ = env.reset(seed=spec.seed, options=options)
            episode.prompt_ids = self.dialect.initial_ids(env, episode.task_prompt)

        env = await self._set_up(episode, start)
        if env is None:
            return episode
        if self.prompt_length is not None and len(episode.prompt_ids) > self.prompt_length:
            await asyncio.to_thread(env.close)
            raise ValueError(
                f"{spec.env_id} task {spec.task_id!r}: the prompt has {len(episode.prompt_ids)} tokens, "
                f"more than rollout.prompt_length={self.prompt_length}; raise prompt_length"
            )
        return await self._play(env, episode, sampling_params)

    async def resume(self, branch: Branch, sampling_params: Mapping[str, Any]) -> Episode:
        mask = branch.response_mask if self.train_prefix else [0] * len(branch.response_mask)
        logprobs = branch.response_logprobs
        if logprobs is not None and not self.train_prefix:
            logprobs = [0.0] * len(logprobs)
        episode = Episode(
            uuid.uuid4().hex, branch.session, branch.prompt_key, branch.env, branch.task_prompt,
            list(branch.prompt_ids), list(branch.response_ids), list(mask),
            None if logprobs is None else list(logprobs), list(branch.turns),
            parent=(branch.parent_id, branch.turn),
        )
        env = await self._set_up(episode, lambda env: env.restore(Snapshot.from_bytes(branch.snapshot)))
        return episode if env is None else await self._play(env, episode, sampling_params)

    async def _set_up(self, ep: Episode, prepare: Callable[[ToolEnv], None]) -> ToolEnv | None:
        """The episode's env, built from its spec and prepared (reset, or restored); None, with the
        episode failed and the env closed, when either raises: a broken env fails its episode,
        not the step."""
        try:
            env = await asyncio.to_thread(ep.env.make)
        except Exception as exc:  # noqa: BLE001
            self._failed(ep, exc)
            return None
        try:
            await asyncio.to_thread(prepare, env)
        except Exception as exc:  # noqa: BLE001
            await asyncio.to_thread(env.close)
            self._failed(ep, exc)
            return None
        return env

    def _failed(self, ep: Episode, exc: Exception) -> None:
        """An episode whose env could not be set up: failed, its error kept, one masked token."""
        ep.stop_reason, ep.error, ep.truncated = "error", f"{type(exc).__name__}: {exc}"[:2000], True
        if not ep.prompt_ids:  # verl pads prompts; an empty one has no position to pad from
            ep.prompt_ids = sorted(self.dialect.stop_ids)[:1] or [0]
        if not ep.response_ids:
            _append(ep, ep.prompt_ids[-1:], 0, None)

    async def _play(self, env: ToolEnv, ep: Episode, sampling_params: Mapping[str, Any]) -> Episode:
        async def generate(prompt: Sequence[int], max_tokens: int, _turn: int) -> Completion:
            out = await self.generate(ep.session, prompt_ids=list(prompt),
                                      sampling_params={**sampling_params, **self.stop, "max_tokens": max_tokens})
            _note_engine(ep, out)
            ids, logprobs = _tokens(out)
            aborted = ep.engine_stop_reason in ("aborted", "abort")
            return Completion("", ids, logprobs, "abort" if aborted else "stop", len(prompt))

        prompt = ep.prompt_ids + ep.response_ids
        limits = Limits(self.max_tokens_per_turn or self.response_length,
                        response_tokens=self.response_length - len(ep.response_ids),
                        step_timeout_s=self.step_timeout_s, episode_timeout_s=self.episode_timeout_s)
        try:
            _record(ep, await play(generate, self.dialect, env, prompt, limits=limits, context=len(prompt)))
        finally:
            await asyncio.to_thread(env.close)
        if not ep.response_ids:  # failed before any token; verl scores a row's last response token
            _append(ep, sorted(self.dialect.stop_ids)[:1] or ep.prompt_ids[-1:], 0, None)
        return ep


def _record(ep: Episode, played: Played) -> None:
    """Flatten the played turns into verl's response: a turn that ended the episode keeps no
    observation, snapshot or closing tokens (the response ends with the model's tokens)."""
    for turn in played.turns:
        _append(ep, list(turn.action_ids), 1, None if turn.action_logprobs is None else list(turn.action_logprobs))
        if turn.ended:
            ep.turns.append(Turn(turn.action, None, None, len(ep.response_ids)))
        else:
            _append(ep, list(turn.env_ids), 0, None)
            ep.turns.append(Turn(turn.action, turn.observation, turn.snapshot.to_bytes(), len(ep.response_ids),
                                 turn.observation_role))
    ep.reward, ep.stop_reason, ep.error = played.reward or 0.0, played.stop_reason, played.error
    ep.terminated, ep.truncated = played.status == "terminated", played.status != "terminated"
    ep.generate_seconds += played.generate_seconds
    ep.env_seconds += played.env_seconds


def _note_engine(ep: Episode, out: Any) -> None:
    """Keep the server's stop reason and weights version (verl >= 0.9 ``TokenOutput``)."""
    ep.engine_stop_reason = getattr(out, "stop_reason", None)
    extra = getattr(out, "extra_fields", None) or {}
    steps = extra.get("global_steps")
    if steps is not None:  # a call resumed across a weight update (verl's async client) spans versions
        first = extra.get("min_global_steps", steps)
        ep.min_global_steps = first if ep.min_global_steps is None else ep.min_global_steps
        ep.max_global_steps = extra.get("max_global_steps", steps)


def _tokens(out: Any) -> tuple[list[int], list[float] | None]:
    if isinstance(out, Sequence):
        return list(out), None
    logprobs = getattr(out, "log_probs", None)
    return list(out.token_ids), None if not logprobs else list(logprobs)


def _append(ep: Episode, ids: list[int], mask: int, logprobs: list[float] | None) -> None:
    """Extend the response; log-probs, once the server sends any, stay aligned (0.0 where unknown)."""
    if logprobs is not None and ep.response_logprobs is None:
        ep.response_logprobs = [0.0] * len(ep.response_ids)
    if ep.response_logprobs is not None:
        known = list(logprobs or [])[: len(ids)]
        ep.response_logprobs += known + [0.0] * (len(ids) - len(known))
    ep.response_ids += ids
    ep.response_mask += [mask] * len(ids)


__all__ = ["Branch", "EnvSpec", "Episode", "EpisodeRunner", "Generate", "Turn", "stop_params"]
