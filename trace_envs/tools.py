"""Tools: a name, a JSON schema the model sees, an argument check, and a function.

Write a tool as a method of your env and decorate it with :func:`tool`; its schema and strict
argument validation come from one pydantic model built from the type hints, so what the model is
shown and what is checked cannot drift apart. The description comes from the docstring, and each
argument's description from the docstring's Google-style ``Args:`` section or an
``Annotated[int, "description"]`` hint (``Annotated[int, Field(description=..., ge=1)]`` also
constrains the value), the way ``transformers.utils.get_json_schema`` reads a function, so chat
templates that render tools (``apply_chat_template(tools=...)``) show the model every argument's
meaning. The method receives the env, so a tool can read and change the episode's tool state and
``env.fork()`` copies that state with it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic

from trace_envs.validation import validation_problems


class ToolError(Exception):
    """Raised by a tool for a problem the model should read and can fix (bad input, no result)."""


Validator = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Tool:
    """A tool the model can call.

    ``function(env, **arguments)`` returns the observation text. ``validate`` turns the model's
    JSON arguments into keyword arguments or raises :class:`ToolError` with a readable reason.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., str]
    validate: Validator
    final: bool = False
    """Calling it ends the episode: its result is the final answer (an ``answer``/``submit`` tool)."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI/Qwen3 function schema that chat templates render for the model."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def __call__(self, env: Any, arguments: Mapping[str, Any]) -> str:
        """Validate and run; tool failures surface as :class:`ToolError`, never as other errors."""
        kwargs = self.validate(arguments)
        try:
            result = self.function(env, **kwargs)
        except ToolError:
            raise
        except Exception as exc:  # a tool bug must not end the run: the model sees an error
            raise ToolError(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc
        return result if isinstance(result, str) else str(result)


def with_answer_tool(tools: Mapping[str, Tool], offered: bool) -> Mapping[str, Tool]:
    """An env's tools with or without its final (answer) tools, for envs that offer one as an option."""
    return tools if offered else {k: t for k, t in tools.items() if not t.final}


def _pydantic_validator(name: str, model: type[pydantic.BaseModel]) -> Validator:
    fields = set(model.model_fields)

    def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(arguments) - fields)
        if unknown:
            raise ToolError(
                f"{name} got unknown argument(s) {unknown}; expected {sorted(fields)}"
            )
        try:
            parsed = model.model_validate(dict(arguments))
        except pydantic.ValidationError as exc:
            problems = "; ".join(validation_problems(exc, top="arguments"))
            raise ToolError(f"invalid arguments for {name}: {problems}") from None
        return {k: getattr(parsed, k) for k in fields}

    return validate


def tool(
    function: Callable[..., Any] | None = None, *, name: str | None = None, final: bool = False
) -> Any:
    """Turn an env method ``def my_tool(self, x: int, y: str = "a") -> str`` into a :class:`Tool`.

    Arguments are checked strictly (a JSON string is not accepted for an ``int``). The docstring's
    text before its first section is the description the model reads; its ``Args:`` section (or
    ``Annotated`` hints) describes the arguments. ``final=True`` makes it the env's answer tool.
    """

    def build(fn: Callable[..., Any]) -> Tool:
        docstring = inspect.cleandoc(fn.__doc__ or "")
        described = _argument_descriptions(docstring)
        hints = typing.get_type_hints(fn, include_extras=True)
        params = list(inspect.signature(fn).parameters.values())[1:]  # drop `self`
        fields: dict[str, Any] = {}
        for p in params:
            if p.annotation is inspect.Parameter.empty:
                raise TypeError(f"tool {fn.__name__}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (_with_description(hints.get(p.name, p.annotation), described.get(p.name)),
                              default)
        unknown = sorted(set(described) - set(fields))
        if unknown:
            raise TypeError(f"tool {fn.__name__}: docstring describes unknown argument(s) {unknown}")
        tool_name = name or fn.__name__
        model = pydantic.create_model(
            f"{tool_name}_arguments",
            __config__=pydantic.ConfigDict(strict=True, extra="forbid"),
            **fields,
        )
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return Tool(tool_name, _description(docstring), schema, fn,
                    _pydantic_validator(tool_name, model), final)

    return build(function) if function is not None else build


_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$",
                         re.MULTILINE)
_ARG_RE = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _description(docstring: str) -> str:
    """The docstring's text before its first section, as one line."""
    match = _SECTION_RE.search(docstring)
    head = docstring[: match.start()] if match else docstring
    return " ".join(head.split())


def _argument_descriptions(docstring: str) -> dict[str, str]:
    """``{name: description}`` from a Google-style ``Args:`` section (continuation lines are
    indented deeper than the argument's own line)."""
    match = re.search(r"^(Args|Arguments|Parameters):\s*$", docstring, re.MULTILINE)
    if not match:
        return {}
    out: dict[str, list[str]] = {}
    current: str | None = None
    indent = None
    for line in docstring[match.end():].splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break  # the next section
        if indent is None:
            indent = depth
        arg = _ARG_RE.match(line.strip()) if depth == indent else None
        if arg:
            current = arg.group(1)
            out[current] = [arg.group(2)]
        elif current is not None:
            out[current].append(line.strip())
    return {k: " ".join(" ".join(v).split()) for k, v in out.items()}


def _with_description(annotation: Any, description: str | None) -> Any:
    """The hint with its description attached as pydantic reads it (``Annotated[T, "text"]`` too)."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        texts = [e for e in extras if isinstance(e, str)]
        others = [e for e in extras if not isinstance(e, str)]
        description = description or (texts[0] if texts else None)
        annotation = Annotated[(base, *others)] if others else base
    if description:
        return Annotated[annotation, pydantic.Field(description=description)]
    return annotation
