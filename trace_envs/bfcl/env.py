"""`trace/BFCL-v0`: BFCL v4 multi-turn function calling as a forkable, step-by-step env.

One task is one BFCL multi-turn entry. The env shows the user's turns one at a time; the agent
calls functions (several per action run in order; ``<tool_call>`` text or a structured message)
against the entry's own back-end instances, and an action without a tool call is its reply to the user,
which ends the user turn. Held-out functions of the missing-function subset appear at the turn
where BFCL adds them. After the last user turn the reward is BFCL's own multi-turn verdict
(state and response checks, :mod:`trace_envs.bfcl.verdict`) as 1.0/0.0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, SupportsFloat

import pydantic

from trace_envs import bounded_json
from trace_envs.actions import (
    ANSWER_CLOSE, ANSWER_OPEN, MAX_CALL_DEPTH, MAX_INT_DIGITS, ParsedAction, ToolCall,
)
from trace_envs.bfcl import guards
from trace_envs.bfcl import state as backend
from trace_envs.bfcl.calls import is_plain_name, render_call
from trace_envs.bfcl.data import SUBSETS, load_subset, user_text
from trace_envs.bfcl.functions import (
    EXECUTION_ERROR, CallError, check_arguments, execute, tool_schema,
)
from trace_envs.bfcl.verdict import FORCE_TERMINATED, bfcl_verdict
from trace_envs.core import Response, ToolEnv
from trace_envs.structured import EMPTY_REPLY, to_action
from trace_envs.tasks.base import Task
from trace_envs.tasks.suites import load_suite, register_suite
from trace_envs.tools import Tool, ToolError

MAXIMUM_STEP_LIMIT = 20
"""BFCL's limit of tool-calling steps in one user turn (``constants.default_prompts``)."""
ADDITIONAL_FUNCTIONS_PROMPT = (
    "{functions}\nI have updated some more functions you can choose from. What about now?"
)
"""BFCL's user message for a turn that reveals held-out functions (prompting style)."""
_END_OF_TURN = ANSWER_OPEN + ANSWER_CLOSE

register_suite("bfcl", load_subset)


class BFCLEnv(ToolEnv):
    """BFCL multi-turn entries; tools are the entry's BFCL functions, revealed as BFCL does."""

    instructions = (
        "You are helping a user through several requests, one turn at a time. At each turn, try "
        "your best to complete the user's request by calling the available functions; keep "
        "calling functions until the request is fulfilled. When you have no more functions to "
        "call, reply to the user without a tool call: that completes the turn."
    )

    def __init__(
        self,
        subset: str = "base",
        split: str = "all",
        *,
        data_dir: str | None = None,
        test_fraction: float = 0.2,
        max_turns: int = 200,
        max_steps_per_turn: int = MAXIMUM_STEP_LIMIT,
        max_calls_per_turn: int = 64,
        **env_options: Any,
    ) -> None:
        if subset not in SUBSETS:
            raise ValueError(f"unknown BFCL subset {subset!r}; choose from {SUBSETS}")
        suite = load_suite("bfcl", subset=subset, root=data_dir)
        super().__init__(
            suite.split(split, test_fraction),  # type: ignore[arg-type]
            max_turns=max_turns, max_calls_per_turn=max_calls_per_turn, **env_options,
        )
        self.long_context = subset == "long_context"
        self.max_steps_per_turn = max_steps_per_turn
        self.instances: backend.Instances = {}
        self.user_turn = 0
        self.steps_in_turn = 0
        self.calls: list[list[list[dict[str, Any]]]] = []
        """Executed calls per user turn per step, as ``{"name", "arguments"}`` (JSON values
        the env checked; rendered to BFCL's call strings only for its checker)."""
        self.verdict: dict[str, Any] | None = None
        self._docs: Mapping[str, dict[str, Any]] = {}  # revealed docs; replaced, never mutated

    # ------------------------------------------------------------------ turns
    def step(self, action: Any) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """A reply with no tool call ends the user turn (in BFCL it is the answer to the user).

        The text parser calls such text a format error (and a structured reply with no content
        an empty one); it is turned into an empty ``<answer>`` here so the core's bookkeeping
        runs unchanged. Over-long actions and actions mixing tool calls with an answer stay errors.
        """
        parsed = to_action(action, max_chars=self.max_action_chars)
        if parsed.error is not None and not parsed.tool_calls and parsed.answer is None:
            within_limit = isinstance(action, str) and len(action) <= self.max_action_chars
            if parsed.error == EMPTY_REPLY or within_limit:
                action = _END_OF_TURN
        return super().step(action)

    def respond(self, action: ParsedAction) -> Response:
        assert self.task is not None
        if action.tool_calls:
            response = self.run_tool_calls(action.tool_calls)
            self.steps_in_turn += 1
            if self.steps_in_turn > self.max_steps_per_turn:
                return self._finish(response.observation, {
                    "valid": False, "error_type": FORCE_TERMINATED,
                    "error_message": f"more than {self.max_steps_per_turn} steps in user turn "
                                     f"{self.user_turn}",
                }, response.info)
            info = {**response.info, "user_turn": self.user_turn}
            return Response(response.observation, info=info)
        return self._next_user_turn()

    def _next_user_turn(self) -> Response:
        assert self.task is not None
        questions = self.task.metadata["entry"]["question"]
        self.user_turn += 1
        self.steps_in_turn = 0
        if self.user_turn >= len(questions):
            self.verdict = bfcl_verdict(self.decoded, self.task.answer, self.task.metadata["entry"])
            return self._finish("", self.verdict, {})
        self.calls.append([])
        info: dict[str, Any] = {"user_turn": self.user_turn, "observation_role": "user"}
        new_docs = self.task.metadata["held_out"].get(self.user_turn, [])
        self._docs = self._revealed_docs(self.task, self.user_turn)
        text = user_text(questions[self.user_turn])
        if new_docs:
            info["new_tools"] = [d["name"] for d in new_docs]
            schemas = json.dumps([tool_schema(d) for d in new_docs], ensure_ascii=False)
            announcement = ADDITIONAL_FUNCTIONS_PROMPT.format(functions=schemas)
            text = f"{announcement}\n\n{text}" if text else announcement
        return Response(text, info=info)

    def _finish(self, observation: str, verdict: dict[str, Any], info: dict[str, Any]) -> Response:
        self.verdict = verdict
        reward = 1.0 if verdict["valid"] else 0.0
        return Response(observation, reward, True, {**info, "user_turn": self.user_turn,
                                                     "score": reward, "bfcl": verdict})

    # ------------------------------------------------------------------ tools
    @staticmethod
    def _revealed_docs(task: Task, user_turn: int) -> dict[str, dict[str, Any]]:
        docs = {d["name"]: d for d in task.metadata["functions"]}
        for turn, held in task.metadata["held_out"].items():
            if turn <= user_turn:
                docs.update({d["name"]: d for d in held})
        return docs

    def available_tools(self) -> Mapping[str, Tool]:
        return {name: self._tool(doc) for name, doc in self._docs.items()}

    def _tool(self, doc: dict[str, Any]) -> Tool:
        schema = tool_schema(doc)["function"]

        def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
            try:
                check_arguments(doc, arguments)
            except CallError as exc:
                raise ToolError(str(exc)) from None
            return dict(arguments)

        def run(env: BFCLEnv, **arguments: Any) -> str:
            return env._call(ToolCall(doc["name"], arguments))

        return Tool(doc["name"], schema["description"], schema["parameters"], run, validate)

    error_prefix = EXECUTION_ERROR

    def run_tool_calls(self, calls: tuple[ToolCall, ...]) -> Response:
        """Run the calls in order (the core does that) and record them as one BFCL step."""
        self._executed: list[dict[str, Any]] = []
        response = super().run_tool_calls(calls)
        if self._executed:
            self.calls[self.user_turn].append(self._executed)
        return response

    def call_tool(self, call: ToolCall) -> str:
        try:
            content = self._call(call, self._executed)
        except CallError as exc:
            raise ToolError(str(exc)) from None
        if content.startswith(EXECUTION_ERROR):  # the API itself failed: an error for info too
            raise ToolError(content[len(EXECUTION_ERROR):])
        return content

    @property
    def decoded(self) -> list[list[list[str]]]:
        """The executed calls as BFCL's decoded results (call strings), for its checker."""
        return [[[render_call(c["name"], c["arguments"]) for c in step] for step in turn]
                for turn in self.calls]

    def _call(self, call: ToolCall, executed: list[dict[str, Any]] | None = None) -> str:
        """Check one call, run it on this episode's instance, and record it for the verdict."""
        if call.error is not None:
            raise CallError(call.error)
        doc = self._docs.get(call.name)
        if doc is None:
            if self.task is not None and call.name in self.task.metadata["owner"]:
                raise CallError(f"function {call.name!r} is not available yet")
            raise CallError(f"unknown function {call.name!r}; available: {sorted(self._docs)}")
        check_arguments(doc, call.arguments)
        if not all(is_plain_name(k) for k in call.arguments):
            raise CallError(f"bad argument name in call to {call.name}")
        assert self.task is not None
        instance = self.instances[self.task.metadata["owner"][call.name]]
        refusal = guards.refusal(instance, call.name, call.arguments)
        if refusal is not None:
            raise CallError(refusal)
        record = {"name": call.name, "arguments": backend.copy_value(dict(call.arguments))}
        with guards.call_scope(self.turn):
            content = execute(instance, call.name, call.arguments)
        guards.after_call(instance, call.name, call.arguments)
        if executed is None:  # a lone call (via a Tool object) is a step of its own
            self.calls[self.user_turn].append([record])
        else:
            executed.append(record)
        return content

    # ------------------------------------------------------------------ state
    def reset_tool_state(self, task: Task) -> None:
        self.instances = backend.load_instances(task.metadata["entry"], self.long_context)
        self.user_turn, self.steps_in_turn, self.calls, self.verdict = 0, 0, [[]], None
        self._docs = self._revealed_docs(task, 0)

    def get_tool_state(self) -> Any:
        return {
            "instances": backend.encode_instances(self.instances),
            "user_turn": self.user_turn,
            "steps_in_turn": self.steps_in_turn,
            "calls": self.calls,
            "verdict": self.verdict,
        }

    def check_tool_state(self, state: Any, task: Task | None) -> None:
        """The whole state must be one this env could have reached in ``task``: instances as
        :func:`~trace_envs.bfcl.state.decode_instances` checks them, turn counters in range, and
        every recorded call one the env would have run (a revealed function, its documented
        arguments, bounded JSON values), so BFCL's checker only ever sees calls the env built."""
        checked = BFCLState.model_validate(state)
        if task is None:
            if checked != BFCLState():
                raise ValueError("an env that was never reset has no BFCL state")
            return
        self._load_state(checked, task)

    def _load_state(self, state: BFCLState, task: Task) -> backend.Instances:
        questions = len(task.metadata["entry"]["question"])
        turns = len(state.calls)
        finished = state.user_turn == questions and turns == questions
        if not (turns == state.user_turn + 1 and state.user_turn < questions) and not finished:
            raise ValueError(f"user turn {state.user_turn} with {turns} recorded turns does not "
                             f"fit an entry of {questions} turns")
        if state.steps_in_turn > self.max_steps_per_turn + 1:
            raise ValueError(f"steps_in_turn {state.steps_in_turn} is out of range")
        for turn, steps in enumerate(state.calls):
            docs = self._revealed_docs(task, turn)
            if len(steps) > self.max_steps_per_turn + 1:
                raise ValueError(f"user turn {turn} has {len(steps)} steps")
            for step in steps:
                if not 1 <= len(step) <= self.max_calls_per_turn:
                    raise ValueError(f"a step of user turn {turn} has {len(step)} calls")
                for call in step:
                    _check_recorded_call(call, docs)
        reference = backend.load_instances(task.metadata["entry"], self.long_context)
        return backend.decode_instances(state.instances, reference)

    def set_tool_state(self, state: Any) -> None:
        if self.task is None:
            self.instances, self.user_turn, self.steps_in_turn = {}, 0, 0
            self.calls, self.verdict, self._docs = [], None, {}
            return
        checked = BFCLState.model_validate(state)
        instances = self._load_state(checked, self.task)
        self.instances = instances
        self.user_turn, self.steps_in_turn = checked.user_turn, checked.steps_in_turn
        self.calls = [[[c.model_dump() for c in step] for step in turn] for turn in checked.calls]
        self.verdict = checked.verdict
        self._docs = self._revealed_docs(self.task, self.user_turn)

    def copy_tool_state_to(self, clone: BFCLEnv) -> None:  # type: ignore[override]
        clone.instances = backend.copy_instances(self.instances)
        clone.calls = [list(turn) for turn in self.calls]  # steps and calls are never mutated


class RecordedCall(pydantic.BaseModel):
    """One executed call in a snapshot: a function name and its JSON arguments."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    name: str = pydantic.Field(max_length=200)
    arguments: dict[str, Any]


class BFCLState(pydantic.BaseModel):
    """BFCL's tool state in a snapshot (instances are checked by ``decode_instances``)."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    instances: dict[str, Any] = {}
    user_turn: int = pydantic.Field(0, ge=0)
    steps_in_turn: int = pydantic.Field(0, ge=0)
    calls: list[list[list[RecordedCall]]] = []
    verdict: dict[str, Any] | None = None


def _check_recorded_call(call: RecordedCall, docs: Mapping[str, dict[str, Any]]) -> None:
    """A recorded call must be one :meth:`BFCLEnv._call` could have recorded."""
    doc = docs.get(call.name)
    if doc is None:
        raise ValueError(f"recorded call of {call.name[:80]!r}, not a function shown by then")
    try:
        check_arguments(doc, call.arguments)
    except CallError as exc:
        raise ValueError(f"recorded call: {exc}") from None
    if not all(is_plain_name(k) for k in call.arguments):
        raise ValueError(f"recorded call of {call.name} has a bad argument name")
    text = json.dumps(call.arguments, ensure_ascii=False)
    if bounded_json.nesting_depth(text) > MAX_CALL_DEPTH or bounded_json.has_lone_surrogate(
        call.arguments
    ) or re.search(r"\d{%d}" % (MAX_INT_DIGITS + 1), _STRING_RE.sub("", text)):
        raise ValueError(f"recorded call of {call.name} has arguments no action could carry")


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
