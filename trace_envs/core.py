"""`ToolEnv`: a Gymnasium environment for tool use that can be forked and snapshotted at any turn.

The episode state is small and explicit: the task, the turn count, whether the episode is over,
the RNG state, and whatever the env's tools keep (``get_tool_state``/``set_tool_state``).
Everything else (task suite, tool definitions, indexes) is shared read-only between forks, so a
fork costs what the state costs, not what the history cost.

Two promises hold for every env built on :class:`ToolEnv`: ``step`` never raises for any action
(only ``ResetNeeded`` for misuse; every other failure is an error observation with
``info["error"]``, and the turn is counted once), and ``restore`` checks a whole snapshot before
it changes anything (a refused snapshot raises ``ValueError`` and leaves the env as it was).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, SupportsFloat, TypeVar

import gymnasium as gym
import numpy as np
import pydantic
from gymnasium.error import ResetNeeded

from trace_envs.actions import ParsedAction, ToolCall
from trace_envs.snapshot import Snapshot
from trace_envs.spaces import UnicodeText
from trace_envs.structured import to_action
from trace_envs.tasks.base import Task, TaskSuite
from trace_envs.tools import Tool, ToolError
from trace_envs.validation import validation_problems

ERROR_PREFIX = "Error: "
_log = logging.getLogger(__name__)


@dataclass
class Response:
    """What an env answers to one parsed action, before the common bookkeeping in ``step``."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class ToolEnv(gym.Env[str, str]):
    """Base class of all trace-rl tool environments.

    Subclasses declare tools as methods decorated with :func:`trace_envs.tool`, and override
    ``get_tool_state``/``set_tool_state``/``reset_tool_state`` when their tools keep state. An
    env whose turn logic differs (e.g. a multi-turn conversation) overrides :meth:`respond`; an
    observation that is a new user message rather than tool results carries
    ``info["observation_role"] = "user"``, so agents render it as a user turn.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    tools: ClassVar[Mapping[str, Tool]] = {}
    instructions: ClassVar[str] = ""
    """What the agent's system prompt tells the model about this env (tools are listed apart)."""
    error_prefix: ClassVar[str] = ERROR_PREFIX
    """How a failed tool call's result starts (an env may mimic its benchmark's wording)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = dict(cls.tools)
        found.update({t.name: t for t in vars(cls).values() if isinstance(t, Tool)})
        cls.tools = found

    def __init__(
        self,
        tasks: TaskSuite,
        *,
        max_turns: int = 8,
        max_calls_per_turn: int = 8,
        max_action_chars: int = 32_768,
        max_observation_chars: int = 16_384,
    ) -> None:
        if len(tasks) == 0:
            raise ValueError(f"task suite {tasks.name!r} is empty")
        if max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        self.tasks = tasks
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.max_action_chars = max_action_chars
        self.max_observation_chars = max_observation_chars
        self.action_space = UnicodeText(max_action_chars)
        self.observation_space = UnicodeText(max_observation_chars)
        self.task: Task | None = None
        self.turn = 0
        self.done = False

    # ----------------------------------------------------------------- identity
    @property
    def env_id(self) -> str:
        """The class identity stored in snapshots; restoring into another class is refused."""
        cls = type(self)
        return f"{cls.__module__}:{cls.__qualname__}"

    def available_tools(self) -> Mapping[str, Tool]:
        """Tools the model may call now (an env may reveal tools as the episode goes on)."""
        return self.tools

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.available_tools().values()]

    def demonstration(self, task: Task) -> list[Any] | None:
        """An expert's actions for ``task`` as structured messages (each dialect writes them in its
        model's format; for format warm-starts and tests), if the env knows one."""
        return None

    # ------------------------------------------------------------ tool state
    def reset_tool_state(self, task: Task) -> None:
        """Set the tools up for a new episode of ``task``."""

    def get_tool_state(self) -> Any:
        """The tools' mutable state as a JSON-serialisable value."""
        return None

    def check_tool_state(self, state: Any, task: Task | None) -> None:
        """Raise ``ValueError`` unless ``state`` is a tool state this env could have produced
        in an episode of ``task`` (types, ranges, sizes). :meth:`restore` calls it before it
        changes anything, so a snapshot from an untrusted source never reaches
        :meth:`set_tool_state` unchecked."""

    def set_tool_state(self, state: Any) -> None:
        """Inverse of :meth:`get_tool_state`; must not keep references into ``state``'s caller.

        It must assign new objects rather than change existing ones in place, so that a restore
        that fails half-way can be rolled back.
        """

    def copy_tool_state_to(self, clone: Self) -> None:
        """Give ``clone`` an independent copy of the tool state (override for speed)."""
        clone.set_tool_state(copy.deepcopy(self.get_tool_state()))

    # ------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._pending_rng = None  # the new seed wins over a state inherited from a fork
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        else:
            task = self.tasks.get(task_id)
        self.task, self.turn, self.done = task, 0, False
        self.reset_tool_state(task)
        return self.initial_observation(task), {"task_id": task.id, "turn": 0}

    def initial_observation(self, task: Task) -> str:
        return task.prompt

    def step(self, action: Any) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """One turn. ``action``: text (the Hermes ``<tool_call>`` dialect) or a structured assistant
        message (:mod:`trace_envs.structured`). Never raises for any ``action`` (only
        ``ResetNeeded`` when misused): a bad action, a failing tool, back-end or grader all become
        an error observation."""
        if self.task is None:
            raise ResetNeeded("call reset() before step()")
        if self.done:
            raise ResetNeeded("the episode is over; call reset() before step()")
        self.turn += 1
        try:
            parsed = to_action(action, max_chars=self.max_action_chars, env=self)
            if parsed.error is not None:
                response = Response(ERROR_PREFIX + parsed.error, info={"error": parsed.error})
            else:
                response = self.respond(parsed)
        except Exception as exc:  # a bug or a back-end failure must not end the whole run
            _log.warning("%s: step failed on turn %d", self.env_id, self.turn, exc_info=True)
            error = f"the environment failed on this action ({type(exc).__name__}: {exc})"[:2000]
            response = Response(self.error_prefix + error, info={"error": error})
        truncated = not response.terminated and self.turn >= self.max_turns
        self.done = response.terminated or truncated
        info = {"task_id": self.task.id, "turn": self.turn, **response.info}
        reward = 0.0 if truncated else float(response.reward)
        return self._clip(response.observation), reward, response.terminated, truncated, info

    async def astep(
        self, action: Any, executor: Executor | None = None
    ) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """:meth:`step` without blocking the caller's event loop: run in ``executor`` (a bounded
        worker pool; None: asyncio's default). Envs whose tools do I/O override it to await that
        I/O and keep the pool for the rest."""
        return await asyncio.get_running_loop().run_in_executor(executor, self.step, action)

    def respond(self, action: ParsedAction) -> Response:
        """Answer a well-formed action: grade a final answer, or run the tool calls."""
        assert self.task is not None
        if action.answer is not None:
            grade = self.task.grade(action.answer)
            return Response("", grade.reward, True, {"score": grade.score, **grade.details})
        return self.run_tool_calls(action.tool_calls)

    def run_tool_calls(self, calls: tuple[ToolCall, ...]) -> Response:
        results: list[dict[str, str]] = []
        errors: list[str] = []
        for call in calls[: self.max_calls_per_turn]:
            try:
                content = self.call_tool(call)
            except ToolError as exc:
                errors.append(str(exc))
                content = self.error_prefix + str(exc)
            results.append({"name": call.name, "content": self._clip(content)})
        observation = "\n\n".join(r["content"] for r in results)
        if len(calls) > self.max_calls_per_turn:
            dropped = (
                f"{len(calls)} tool calls in one action; only the first "
                f"{self.max_calls_per_turn} were run"
            )
            errors.append(dropped)
            observation += f"\n\n{self.error_prefix}{dropped}"
        info: dict[str, Any] = {"tool_results": results}
        if errors:
            info["error"] = "; ".join(errors)
        return Response(observation, info=info)

    def call_tool(self, call: ToolCall) -> str:
        """Run one call; any problem is a :class:`ToolError` the model will read."""
        if call.error is not None:
            raise ToolError(call.error)
        tools = self.available_tools()
        if call.name not in tools:
            raise ToolError(f"unknown tool {call.name!r}; available: {sorted(tools)}")
        return tools[call.name](self, call.arguments)

    def _clip(self, text: str) -> str:
        limit = self.max_observation_chars
        if len(text) <= limit:
            return text
        note = f"\n[... truncated {len(text) - limit} characters]"
        return text[: limit - len(note)] + note

    # ------------------------------------------------------- fork/snapshot
    # Forks rarely draw random numbers before their episode ends, and building a Generator costs
    # most of a fork, so a fork keeps its parent's RNG *state* and builds the Generator on first use.
    _pending_rng: dict[str, Any] | None = None

    @property
    def np_random(self) -> np.random.Generator:
        if self._pending_rng is not None:
            self._np_random, self._pending_rng = _rng_from_state(self._pending_rng), None
        return super().np_random

    @np_random.setter
    def np_random(self, value: np.random.Generator) -> None:
        self._pending_rng = None
        self._np_random = value

    def _rng_state(self) -> dict[str, Any] | None:
        if self._pending_rng is not None:
            return self._pending_rng
        return None if self._np_random is None else self._np_random.bit_generator.state

    def fork(self) -> Self:
        """An independent env at this exact turn: same task, tool state, turn count and RNG."""
        clone = copy.copy(self)
        clone._pending_rng, clone._np_random = self._rng_state(), None
        self.copy_tool_state_to(clone)
        return clone

    def snapshot(self) -> Snapshot:
        """An immutable, JSON-backed record of this turn (see :class:`Snapshot`)."""
        rng = _plain(self._rng_state())
        return Snapshot.of(
            self.env_id,
            {
                "suite": self.tasks.name,
                "task_id": None if self.task is None else self.task.id,
                "turn": self.turn,
                "done": self.done,
                "rng": rng,
                "tools": self.get_tool_state(),
            },
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Put this env back at the snapshot's turn (the env may be fresh, in another process).

        The whole state is checked first (common fields here, tools by
        :meth:`check_tool_state`); a refused snapshot raises ``ValueError`` and leaves this env
        exactly as it was.
        """
        if snapshot.env_id != self.env_id:
            raise ValueError(f"snapshot is of {snapshot.env_id!r}, this env is {self.env_id!r}")
        state = _checked(EpisodeState, snapshot.state(), "snapshot")
        if state.suite != self.tasks.name:
            raise ValueError(
                f"snapshot is of suite {state.suite!r}, this env has {self.tasks.name!r}"
            )
        if state.task_id is not None and state.task_id not in self.tasks:
            raise ValueError(f"snapshot task {state.task_id!r} is not in suite {self.tasks.name!r}")
        if state.turn > self.max_turns or (state.task_id is None and (state.turn or state.done)):
            raise ValueError(f"snapshot turn {state.turn} is out of range (max_turns="
                             f"{self.max_turns}, task {state.task_id!r}, done={state.done})")
        rng = None if state.rng is None else _rng_from_state(state.rng)
        task = None if state.task_id is None else self.tasks.get(state.task_id)
        try:
            self.check_tool_state(state.tools, task)
        except (ValueError, TypeError, KeyError, pydantic.ValidationError) as exc:
            raise ValueError(f"invalid snapshot tool state: {_message(exc)}") from None
        saved = dict(self.__dict__)
        try:
            self.task = task
            self.turn, self.done = state.turn, state.done
            self._np_random, self._pending_rng = rng, None
            self.set_tool_state(state.tools)
        except Exception as exc:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise ValueError(f"invalid snapshot tool state: {_message(exc)}") from None


M = TypeVar("M", bound=pydantic.BaseModel)


class EpisodeState(pydantic.BaseModel):
    """The common part of every snapshot; ``tools`` is checked by the env."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    suite: str
    task_id: str | None
    turn: int = pydantic.Field(ge=0)
    done: bool
    rng: dict[str, Any] | None
    tools: Any = None


def _checked(model: type[M], value: Any, what: str) -> M:
    """``model`` validated from ``value``; any problem is one readable ``ValueError``."""
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise ValueError(f"invalid {what}: {_message(exc)}") from None


def _message(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(validation_problems(exc, top="value", limit=5))
    return f"{type(exc).__name__}: {exc}"[:500]


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A Generator in ``state``; an unknown or malformed state raises ``ValueError``."""
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(f"invalid snapshot: unknown bit generator {name!r}")
    bit_generator_cls = getattr(np.random, name)
    bit_generator = bit_generator_cls.__new__(bit_generator_cls)
    bit_generator.__init__(0)  # seeding from a constant avoids an OS entropy read
    try:
        bit_generator.state = state
    except Exception as exc:  # NumPy's setters check a state by using it: any failure is a bad one
        raise ValueError(f"invalid snapshot: bad {name} state ({_message(exc)})") from None
    return np.random.Generator(bit_generator)


def _plain(state: Any) -> Any:
    """A bit generator's state as JSON values (MT19937, Philox and SFC64 hold arrays)."""
    if isinstance(state, dict):
        return {k: _plain(v) for k, v in state.items()}
    return state.tolist() if isinstance(state, np.ndarray) else state
