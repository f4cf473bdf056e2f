"""Model-family dialects: how each family is shown tools, writes calls and reads results.

    from trace_agents.dialects import make_dialect
    dialect = make_dialect(tokenizer)              # chosen from the chat template
    dialect = make_dialect(tokenizer, "harmony")   # or named (config: model.dialect)

Every dialect offers the same calls, used by rollouts, the warm-start and the verl adapter:
``initial_messages``/``initial_ids(env, task_prompt)`` (the prompt, tools included),
``action_text(action_ids)`` and ``parse(text, env)`` (what ``env.step`` receives),
``after_action_ids(action_ids, action, observation, info)`` (the masked tokens after an
action), ``turn_messages`` (the same turn as chat messages), ``render_action(message)`` (a
structured message as the model would write it) and ``stop`` (stop strings); and, for the one
episode loop (:func:`trace_agents.episode.play`, the native rollouts' and verl's agent loop's),
``prompt``/``read``/``extend`` (the running prompt in the dialect's form). ``MessagesDialect`` is
the ``react`` format over chat messages, for servers that take no token ids; ``NativeToolsDialect``
is chat messages with the server's own tool calling (OpenAI ``tools=``). See ``docs/dialects.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from trace_agents.dialects.base import TemplateDialect
from trace_agents.dialects.families import FAMILIES, detect
from trace_agents.dialects.native import NativeToolsDialect
from trace_agents.dialects.text import MessagesDialect, TextDialect

Dialect = TextDialect | TemplateDialect | MessagesDialect | NativeToolsDialect
DIALECTS = ("react", *FAMILIES)


def chat_template(name: str) -> str:
    """A chat template shipped with the dialects (``templates/<name>.jinja``), for families whose
    published template renders no tools or renders them wrong: set it as the tokenizer's
    ``chat_template``. Each file names its source and licence."""
    return resources.files(__package__).joinpath("templates", f"{name}.jinja").read_text()


def make_dialect(tokenizer: Any, name: str | Dialect = "auto",
                 chat_template_kwargs: Mapping[str, Any] | None = None) -> Dialect:
    """The dialect ``name`` (``auto``: detected from the tokenizer's chat template)."""
    if isinstance(name, (TextDialect, TemplateDialect, MessagesDialect, NativeToolsDialect)):
        return name
    if name == "auto":
        template = getattr(tokenizer, "chat_template", None)
        name = detect(template if isinstance(template, str) else None)
    if name == "react":
        return TextDialect(tokenizer, chat_template_kwargs)
    if name not in FAMILIES:
        raise ValueError(f"unknown dialect {name!r}; choose from {', '.join(DIALECTS)} or 'auto'")
    return FAMILIES[name](tokenizer, chat_template_kwargs)


__all__ = ["DIALECTS", "Dialect", "MessagesDialect", "NativeToolsDialect", "TemplateDialect", "TextDialect",
           "chat_template", "detect", "make_dialect"]
