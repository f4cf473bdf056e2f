"""Hand any trace-rl env to TRL: ``GRPOTrainer(environment_factory=trl_environment(...))``.

TRL discovers an environment's tools by listing the *public functions of its class* and renders
each one's schema from its type hints and Google-style docstring (``transformers``'
``get_json_schema``). A `ToolEnv` has twenty public methods (``step``, ``fork``, ``render``...)
and none named after its tools, so :func:`trl_environment` builds a class whose public functions
are exactly the env's tools, each with the signature and docstring that reproduce the env's own
JSON schema, plus ``reset(**row)``. A call goes through ``env.step`` as a ``<tool_call>`` action,
so validation, error observations and ``max_turns`` behave as in trace-rl (each TRL tool call is
one env turn). :func:`verdict_reward` grades the final assistant message with the env's verdict.

Branching is not available through TRL: its GRPOTrainer samples ``num_generations`` independent
completions from each prompt and has no way to continue generation from an intermediate turn, so
``fork()``/``snapshot()`` and the TRACE allocator are not used; train with ``trace-rl train`` (or
the verl agent loop) for rollout trees.
"""

from __future__ import annotations

import inspect
import json
import keyword
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from trace_envs.core import ToolEnv

RESERVED = frozenset({"reset", "get_reward"})
"""Names TRL gives a meaning of its own; a tool with one of them could not be exposed."""


def trl_environment(make_env: Callable[[], ToolEnv], *, name: str | None = None) -> type:
    """A class for ``environment_factory``: one instance per TRL rollout, each with its own env.

    ``make_env`` builds a fresh env (e.g. ``lambda: gym.make("trace/Calculator-v0")``); one env
    is built here to read its tool schemas. Dataset rows may carry ``task_id`` and ``seed``
    columns, which ``reset(**row)`` passes to the env; other columns are ignored.
    """
    probe = make_env()
    schemas = [s["function"] for s in probe.tool_schemas()]
    if not schemas:
        raise ValueError(
            f"{type(probe).__name__} offers no tools before reset: TRL exposes one fixed tool set per "
            "environment, so envs whose tools depend on the task (BFCL) do not fit environment_factory")
    namespace: dict[str, Any] = {
        "__init__": _init,
        "reset": _reset,
        "__doc__": f"TRL view of {type(probe).__name__}: its tools as methods (see trace_envs.integrations.trl).",
        "_make_env": staticmethod(make_env),
        "_probe": [probe],
        "instructions": probe.instructions,
    }
    for schema in schemas:
        tool_name = schema["name"]
        if tool_name in RESERVED or tool_name.startswith("_"):
            raise ValueError(f"tool {tool_name!r} cannot be a TRL tool: TRL reserves that name")
        namespace[tool_name] = _tool_method(schema)
    return type(name or f"TRL{type(probe).__name__}", (), namespace)


def _init(self: Any) -> None:
    # The probe env built for the schemas serves the first instance instead of being thrown away.
    self.env = self._probe.pop() if self._probe else self._make_env()
    self.reward = 0.0


def _reset(self: Any, **row: Any) -> str:
    """Start the episode of the row's ``task_id`` (a random task without one); returns its prompt."""
    options = {"task_id": row["task_id"]} if row.get("task_id") is not None else None
    seed = row.get("seed")
    observation, _ = self.env.reset(seed=None if seed is None else int(seed), options=options)
    self.reward = 0.0
    return observation


def _call(self: Any, tool_name: str, arguments: Mapping[str, Any]) -> str:
    env: ToolEnv = self.env
    if env.done:
        return f"{env.error_prefix}the episode is over (after {env.turn} turns); give your final answer"
    call = json.dumps({"name": tool_name, "arguments": dict(arguments)}, default=str)
    observation, reward, _, _, _ = env.step(f"<tool_call>{call}</tool_call>")
    self.reward = float(reward)
    return observation


def _tool_method(schema: Mapping[str, Any]) -> Callable[..., str]:
    tool_name = schema["name"]
    parameters = schema.get("parameters") or {}
    properties: Mapping[str, Any] = parameters.get("properties") or {}
    required = set(parameters.get("required") or ())
    sig = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {"return": str}
    arg_docs = []
    for arg, arg_schema in properties.items():
        if not arg.isidentifier() or keyword.iskeyword(arg):
            raise ValueError(f"tool {tool_name!r}: argument {arg!r} is not a Python name, so TRL cannot pass it")
        annotation = python_type(arg_schema)
        default = inspect.Parameter.empty if arg in required else None
        sig.append(inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=annotation))
        annotations[arg] = annotation
        description = " ".join(str(arg_schema.get("description") or arg_schema.get("title") or arg).split())
        arg_docs.append(f"    {arg}: {description}")

    def method(self: Any, **arguments: Any) -> str:
        return _call(self, tool_name, arguments)

    method.__name__ = method.__qualname__ = tool_name
    method.__signature__ = inspect.Signature(sig, return_annotation=str)  # type: ignore[attr-defined]
    method.__annotations__ = annotations
    description = " ".join(str(schema.get("description") or tool_name).split())
    method.__doc__ = description + ("\n\nArgs:\n" + "\n".join(arg_docs) if arg_docs else "")
    return method


_JSON_TYPES: dict[str, Any] = {
    "string": str, "integer": int, "number": float, "boolean": bool, "object": dict, "null": type(None),
}


def python_type(schema: Mapping[str, Any]) -> Any:
    """The type hint whose ``get_json_schema`` rendering matches a JSON schema (as far as hints can)."""
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _union([python_type(s) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([python_type({**schema, "type": k}) for k in kind])
    if kind == "array":
        items = schema.get("items")
        return list[python_type(items)] if isinstance(items, Mapping) and items else list
    return _JSON_TYPES.get(kind, Any) if isinstance(kind, str) else Any


def _union(types: Sequence[Any]) -> Any:
    unique = list(dict.fromkeys(types))
    return unique[0] if len(unique) == 1 else Union[tuple(unique)]  # noqa: UP007


def final_text(completion: Any) -> str:
    """The last assistant message's text (conversational completions) or the completion itself."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            return content if isinstance(content, str) else "".join(
                part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def verdict_reward(completions: Sequence[Any], environments: Sequence[Any], **_: Any) -> list[float]:
    """TRL reward function: the env's own verdict on each rollout's final message.

    The final message is stepped into the env as the last action (``<answer>...</answer>`` is
    graded by the task, anything else scores 0). An episode already over, e.g. cut at
    ``max_turns`` by tool calls, keeps the reward its last step gave.
    """
    rewards = []
    for completion, wrapper in zip(completions, environments, strict=True):
        env: ToolEnv = wrapper.env
        if not env.done:
            _, reward, _, _, _ = env.step(final_text(completion))
            wrapper.reward = float(reward)
        rewards.append(wrapper.reward)
    return rewards


def trl_dataset(env: ToolEnv, *, system_prompt: str | None = None) -> Any:
    """A ``datasets.Dataset`` of the env's tasks: an instructions system message, an empty user
    message that ``reset`` fills with the task prompt, and the ``task_id`` column."""
    from datasets import Dataset

    system = env.instructions if system_prompt is None else system_prompt
    return Dataset.from_list([
        {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": ""}],
         "task_id": task.id}
        for task in env.tasks
    ])
