"""Tools: a name, a JSON schema the model sees, an argument check, and a function.

Write a tool as a method of your env and decorate it with :func:`tool`; its schema and strict
argument validation come from the type hints (via pydantic) and its description from the
docstring. The method receives the env, so a tool can read and change the episode's tool state
and ``env.fork()`` copies that state with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic


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
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"invalid arguments for {name}: {problems}") from None
        return {k: getattr(parsed, k) for k in fields}

    return validate


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Turn an env method ``def my_tool(self, x: int, y: str = "a") -> str`` into a :class:`Tool`.

    Arguments are checked strictly (a JSON string is not accepted for an ``int``). The first
    paragraph of the docstring becomes the description the model reads.
    """

    def build(fn: Callable[..., Any]) -> Tool:
        params = list(inspect.signature(fn).parameters.values())[1:]  # drop `self`
        fields: dict[str, Any] = {}
        for p in params:
            if p.annotation is inspect.Parameter.empty:
                raise TypeError(f"tool {fn.__name__}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (p.annotation, default)
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
        description = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        return Tool(tool_name, description, schema, fn, _pydantic_validator(tool_name, model))

    return build(function) if function is not None else build
