"""What every dialect does, and the template-driven dialect the model families share.

A dialect is how one model family talks tools: how the prompt shows the tools, how a reply's tool
calls are written, in which role tool results come back, and how a turn ends. A
:class:`TemplateDialect` takes all of it from the model's own chat template and the family's
response template (the declarative parsers ``trl`` ships, run by ``transformers``'
``parse_response``): tools go through ``apply_chat_template(tools=...)``, replies are parsed by
the library, and results are rendered as the family's tool messages. Only what no library does is
written here: finding the end of an assistant turn in a rendering, and turning a malformed reply
into error observations instead of silently dropping it.

The response-template parser with argument typing is transformers 5.15's. Older releases (verl
0.9 pins ``transformers<5.11``) have only the legacy regex parser: there a family parses with
trl's legacy response *schema* for it (Hermes, Qwen3.5 XML, Llama 3.x, GLM-4), its argument values
typed here from the tool schemas; harmony, Gemma 4 and the families whose response template is
written here (trl has no legacy schema that reads them right) refuse to start with a clear error.

Rollouts stay token-exact: the model's tokens are kept as generated, and the tokens after an
action (turn end, tool results, next generation prompt) are cut from the template's rendering of
a conversation in which that turn is followed by the results, so a continuation's prefix is the
plain concatenation of its path's segments.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from trace_agents.dialects.turn import TokenPrompt
from trace_envs import ToolEnv, bounded_json
from trace_envs.actions import MAX_CALL_DEPTH, ToolCall
from trace_envs.structured import AssistantMessage, tool_call_from

Message = dict[str, Any]
_PROBE = "TRACE_PROBE_2f7c"
"""A stand-in content that survives every template (tojson would escape control characters)."""


class TemplateDialect(TokenPrompt):
    """A model family's tool-calling convention, read from its chat and response templates.

    Subclasses (one per family, :mod:`trace_agents.dialects.families`) declare the family's facts:
    ``response_template`` (the parser spec), ``end_of_turn`` (the special tokens with which the
    model ends its turn), where its thinking goes in a message, and what the parser needs that the
    model does not write.
    """

    name: ClassVar[str]
    end_of_turn: ClassVar[tuple[str, ...]]
    """Markers that end an assistant turn (``<|im_end|>``; GLM's next-role tokens)."""
    message_end: ClassVar[tuple[str, ...]] = ()
    """End-of-turn markers that may also end one message of a turn holding several (harmony's
    ``<|end|>`` after the analysis, before the call): generation must not stop at them."""
    opens_next: ClassVar[tuple[str, ...]] = ()
    """End-of-turn markers that are the next message's opener (GLM's ``<|observation|>``), not a
    closer of the model's turn: one the model did not write itself is never dropped."""
    thinking_key: ClassVar[str] = "reasoning_content"
    """The message key the template reads the thinking from."""
    parse_suffix: ClassVar[str] = ""
    """Appended to a reply before parsing: the end-of-turn token a response template requires
    and that the rollout strips (Llama's ``}<|eot_id|>`` closes a call)."""
    one_call_per_message: ClassVar[bool] = False
    """The template renders one tool call per assistant message (Llama 3.x)."""
    call_lists: ClassVar[bool] = False
    """One call block holds a list of calls (LFM2's and Llama 4's ``[f(a=1), g(b=2)]``)."""
    paired_tags: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Tags that must pair up inside a call: the library drops an unclosed XML argument silently."""
    stop: ClassVar[tuple[str, ...]] = ()
    """Stop strings for generation; the family's end-of-turn tokens end a turn by themselves."""
    call_marker: ClassVar[str] = r"<tool_call>"
    """Where the family's calls start (a regex): left in a reply after every readable call was
    taken out, it is a call cut off or garbled, which the model is told, not a final answer."""
    trl_template: ClassVar[str] = ""
    """The name of the family's response template in ``trl.chat_template_utils``."""
    trl_schema: ClassVar[str] = ""
    """The name of trl's legacy response schema for the family: what parses its replies on
    transformers < 5.15; empty where trl has none that reads the family right."""

    def __init__(self, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(chat_template_kwargs or {})
        eos = tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        for marker in self.end_of_turn:
            encoded = tokenizer.encode(marker, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
        self.end_ids = frozenset(ids)
        """Token ids that end a turn (the tokenizer's eos and the family's single-token markers)."""
        self.stop_ids = self.end_ids - {i for m in self.message_end
                                        for i in tokenizer.encode(m, add_special_tokens=False)}
        """Token ids generation stops at: ``end_ids`` less the markers that may end a message only."""
        self._closer_ids = self.end_ids - {i for m in self.opens_next
                                           for i in tokenizer.encode(m, add_special_tokens=False)}
        user = [{"role": "user", "content": "u"}]
        with_prompt = self.render(user, generation_prompt=True)
        without = self.render(user, generation_prompt=False)
        if not with_prompt.startswith(without):
            raise ValueError(f"{self.name}: the generation prompt is not appended to the conversation")
        self.generation_prompt = with_prompt[len(without):]
        """What the template writes to open the assistant's turn (the parser's ``prefix``)."""
        self.response_template = self.load_response_template()
        self.response_schema = None if template_parser() else self.load_response_schema()
        """The legacy schema that parses replies where transformers has no template parser."""
        fields = self.response_template["fields"]["tool_calls"]
        self._call_open = re.compile(fields.get("open_pattern") or re.escape(fields["open"]))
        self._call_close = re.compile(fields.get("close_pattern") or re.escape(fields["close"]))
        opens = [f.get("open_pattern") or re.escape(f["open"]) for k, f in self.response_template["fields"].items()
                 if k != "tool_calls" and (f.get("open_pattern") or f.get("open"))]
        self._call_marker = re.compile(self.call_marker)
        self._section_open = re.compile("|".join(opens) or "(?!)")
        """Where a thinking or answer section opens (harmony's channels, ``<think>``)."""

    # ----------------------------------------------------------------- family facts
    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """The family's response template (``transformers`` response-parsing spec): trl's
        :attr:`trl_template` unless a family overrides this."""
        try:
            from trl import chat_template_utils
        except ImportError as exc:  # pragma: no cover - the dialects extra installs it
            raise ImportError("template dialects parse replies with trl's response templates: "
                              "pip install 'trace-rl[dialects]' (or pip install trl)") from exc
        return getattr(chat_template_utils, cls.trl_template)

    @classmethod
    def load_response_schema(cls) -> dict[str, Any]:
        """trl's legacy response schema for the family, its XML argument values kept as text
        (typed from the tool schemas by :func:`_typed`, as transformers >= 5.15 types them)."""
        import transformers
        from trl import chat_template_utils

        if not cls.trl_schema:
            raise RuntimeError(
                f"the {cls.name} dialect parses replies with {cls.trl_template or 'its response template'}, "
                f"which needs transformers>=5.15 (installed: {transformers.__version__}); on this release use "
                f"hermes, qwen3_xml, llama3_json or glm4, or react")
        schema = copy.deepcopy(getattr(chat_template_utils, cls.trl_schema))
        function = schema["properties"]["tool_calls"]["items"]["properties"].get("function", {})
        arguments = function.get("properties", {}).get("arguments", {})
        if "x-regex-key-value" in arguments:  # XML formats write values raw: do not guess a type
            arguments["additionalProperties"] = {}
        return schema

    # --------------------------------------------------------------------- rendering
    def render(self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] | None = None,
               generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, tokenize=False,
            add_generation_prompt=generation_prompt, **self.template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def initial_messages(self, env: ToolEnv, task_prompt: str) -> list[Message]:
        """The env's instructions as the system message, then the task; tools go to the template."""
        return instruction_messages(env, task_prompt)

    def initial_ids(self, env: ToolEnv, task_prompt: str) -> list[int]:
        """The prompt with the env's tools rendered by the template, up to the generation prompt."""
        text = self.render(self.initial_messages(env, task_prompt), tools=env.tool_schemas(),
                           generation_prompt=True)
        return self.encode(text)

    def assistant_message(self, action: AssistantMessage) -> Message:
        """The chat message of a parsed reply, as the template renders it in the history."""
        message: Message = {"role": "assistant", "content": action.content}
        calls = [c for c in action.tool_calls if c.error is None]
        if calls:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
                for c in calls
            ]
        if action.reasoning:
            message[self.thinking_key] = action.reasoning
        return message

    def observation_messages(self, action: AssistantMessage, observation: str,
                             info: Mapping[str, Any]) -> list[Message]:
        """Tool results as the family's tool messages, one per call; a new user turn (BFCL), an
        error about the reply as a whole, or errors of a reply whose every call was malformed as
        a user message."""
        results = info.get("tool_results")
        called = any(c.error is None and c.name for c in action.tool_calls)
        if info.get("observation_role") == "user" or not results or not called:
            # templates render tool messages only after a call (harmony names them by it)
            return [{"role": "user", "content": observation}]
        messages = [{"role": "tool", "name": r["name"], "content": r["content"]} for r in results]
        rest = observation[len("\n\n".join(r["content"] for r in results)):]
        if rest.strip():  # the env's note on calls it did not run
            messages[-1]["content"] += rest
        return messages

    def turn_messages(self, action: AssistantMessage, observation: str | None,
                      info: Mapping[str, Any]) -> list[Message]:
        messages = [self.assistant_message(action)]
        if observation is not None:
            messages += self.observation_messages(action, observation, info)
        return messages

    def render_action(self, message: AssistantMessage | Mapping[str, Any]) -> str:
        """The text the model writes for ``message`` after the generation prompt (the template's
        rendering of it as the reply to the last user turn, thinking included, less the end of
        turn): what a demonstration or a scripted policy should generate."""
        if not isinstance(message, AssistantMessage):
            message = _as_message(message)
        user = [{"role": "user", "content": "u"}]
        opened = self.render(user, generation_prompt=True)
        text = self.render(user + [self.assistant_message(message)], generation_prompt=False)
        if not text.startswith(opened):
            raise ValueError(f"{self.name}: the template does not continue its generation prompt")
        body = text[len(opened):].rstrip()
        marker = next((m for m in self.end_of_turn if body.endswith(m)), "")
        return body[: len(body) - len(marker)]

    # ----------------------------------------------------------------------- tokens
    def action_text(self, action_ids: Sequence[int]) -> str:
        """The reply as the parser reads it: the model's tokens less a trailing end-of-turn."""
        ids = list(action_ids)
        while ids and ids[-1] in self.end_ids:
            ids.pop()
        return self.decode(ids)

    def after_action_ids(self, action_ids: Sequence[int], action: AssistantMessage,
                         observation: str | None, info: Mapping[str, Any]) -> list[int]:
        """Tokens after the model's action: the end of its turn, the observation messages and the
        next generation prompt (or, when the episode ended, what closes the turn)."""
        probe = [{"role": "user", "content": "u"}, self._probe_assistant(action)]
        if observation is None:
            ended = self.render(probe, generation_prompt=False)
            body = ended.rstrip()
            marker = next((m for m in self.end_of_turn if body.endswith(m)), "")
            return self._after(action_ids, self.encode(ended[len(body) - len(marker):]))
        follow = self.observation_messages(action, observation, info)
        marked = [{**m, "content": _PROBE} for m in follow]
        probe_text = self.render(probe + marked, generation_prompt=True)
        cut = self._last_turn_end(probe_text[: probe_text.index(_PROBE)])
        full = self.render(probe + follow, generation_prompt=True)
        if full[:cut] != probe_text[:cut]:
            raise ValueError(f"{self.name}: the template renders a turn differently by what follows it")
        return self._after(action_ids, self.encode(full[cut:]))

    def _probe_assistant(self, action: AssistantMessage) -> Message:
        """A stand-in for the action in the renderings that segments are cut from: same calls,
        neutral content (the model's own tokens are what the record keeps)."""
        calls = [c for c in action.tool_calls if c.error is None and c.name]
        if self.one_call_per_message:
            calls = calls[:1]
        if not calls:
            return {"role": "assistant", "content": "x"}
        return {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c.name, "arguments": {}}} for c in calls]}

    def _last_turn_end(self, text: str) -> int:
        """Where the last end-of-turn marker in ``text`` starts (its length when there is none)."""
        found = [text.rfind(m) for m in self.end_of_turn]
        best = max(found, default=-1)
        return best if best >= 0 else len(text)

    def _after(self, action_ids: Sequence[int], ids: list[int]) -> list[int]:
        """Drop the tail's end-of-turn token when the model already ended its turn: with the same
        token, or with another one where the tail's only closes the turn (harmony's
        ``<|return|>`` stands where the history has ``<|end|>``)."""
        last = action_ids[-1] if action_ids else None
        if ids and last in self.end_ids and (ids[0] == last or ids[0] in self._closer_ids):
            return ids[1:]
        return ids

    # ---------------------------------------------------------------------- parsing
    def parse(self, text: str, env: ToolEnv | None = None) -> AssistantMessage:
        """The reply as a structured action; never raises, and costs time linear in the reply.

        Arguments are typed by the env's tool schemas (a string argument stays a string in XML
        dialects); a malformed call becomes a :class:`~trace_envs.ToolCall` with an ``error`` the
        env reports to the model. Model output is untrusted, so it is bounded before any library
        reads it: a reply over the env's action limit is refused whole, each call block is parsed
        on its own (the library's scan of a whole reply grows with calls x length: 39 s for 4,000
        GLM calls) after its nesting depth is measured without recursion, calls past the env's
        per-turn limit are counted but not parsed, and anything the library still raises is an
        error the model reads instead of a crashed turn.
        """
        limit = getattr(env, "max_action_chars", MAX_REPLY_CHARS)
        if len(text) > limit:
            return _refused(f"the reply is {len(text)} characters long; the limit is {limit}")
        try:
            return self._parse(text, env)
        except Exception as exc:  # noqa: BLE001 - no reply may crash a turn (RecursionError included)
            return _refused(f"the reply could not be parsed ({type(exc).__name__}); write tool "
                            "calls in the format the system prompt shows")

    def _parse(self, text: str, env: ToolEnv | None) -> AssistantMessage:
        tools = env.tool_schemas() if env is not None else None
        max_calls = getattr(env, "max_calls_per_turn", MAX_CALLS)
        calls: list[ToolCall] = []
        rest: list[str] = []
        pos = 0
        for start, end, closed in self._call_blocks(text):
            rest.append(text[pos:start])
            pos = end
            if len(calls) >= max_calls:  # never run: counted so the env can say how many were
                calls.append(ToolCall("", error="not run"))
            else:
                read = self._parse_calls(text[start:end], closed, tools)
                room = max_calls - len(calls)
                calls += [*read[:room], *(ToolCall("", error="not run") for _ in read[room:])]
        rest.append(text[pos:])
        remains = "".join(rest)
        if (cut := self._call_marker.search(remains)) is not None:
            snippet = remains[cut.start(): cut.start() + 200].strip()
            calls.append(ToolCall("", error=f"malformed tool call: cut off or unreadable in {snippet!r}"))
        base = self._content(remains, tools)
        return AssistantMessage(base.content, tuple(calls), base.reasoning)

    def _call_blocks(self, text: str) -> Iterator[tuple[int, int, bool]]:
        """Start, end and whether it was closed, of each tool-call region of the reply, in one
        pass (a region left open runs to the end of the reply; one whose opener is only a
        lookahead, Llama 4's ``[``, holds at least that character)."""
        suffixed = text + self.parse_suffix
        pos = 0
        while (opened := self._call_open.search(text, pos)) is not None:
            closed = self._call_close.search(suffixed, max(opened.end(), opened.start() + 1))
            end = len(text) if closed is None else min(closed.end(), len(text))
            yield opened.start(), end, closed is not None
            pos = max(end, opened.end())

    def _parse_calls(self, block: str, closed: bool, tools: list[dict[str, Any]] | None) -> list[ToolCall]:
        """One call block on its own: its good calls (one, or a list where the family writes
        several in one block: LFM2, Llama 4), or what is wrong with it for the model to fix."""
        opened = self._call_open.search(block)
        name = (opened.groupdict().get("name") or "") if opened else ""
        error = self._block_error(block)
        if error is None:
            try:
                parsed = self._library_parse(block, tools, in_reply=False).get("tool_calls") or []
                if len(parsed) == 1 or (parsed and self.call_lists):
                    return [tool_call_from(c) for c in parsed]
                error = "malformed tool call" if closed else "the tool call is cut off"
            except (ValueError, KeyError, TypeError) as exc:
                error = "malformed tool call: " + _reason(exc)
        return [ToolCall(name, error=f"{error} in {block.strip()[:200]!r}")]

    def _block_error(self, block: str) -> str | None:
        """What makes a call block unreadable before any parser sees it: nesting past the bound
        every JSON reader here keeps, or tags the library would drop without a word."""
        depth = bounded_json.nesting_depth(block)
        if depth > MAX_CALL_DEPTH:
            return f"malformed tool call: nested {depth} levels deep; the limit is {MAX_CALL_DEPTH}"
        for open_tag, close_tag in self.paired_tags:
            if block.count(open_tag) != block.count(close_tag):
                return f"malformed tool call: {open_tag}... without a matching {close_tag}"
        return None

    def _content(self, text: str, tools: list[dict[str, Any]] | None) -> AssistantMessage:
        """The reply's text and thinking, its call blocks taken out. The library's scan costs
        sections x length, so a reply with more sections than any real one (a model repeating
        ``<think></think>``) is read as plain text instead."""
        sections = self._section_open.finditer(text)
        if sum(1 for _ in itertools.islice(sections, MAX_SECTIONS + 1)) > MAX_SECTIONS:
            return AssistantMessage(text.strip())
        try:
            return self._message(self._library_parse(text, tools))
        except (ValueError, KeyError, TypeError):
            return AssistantMessage(text.strip())

    def _library_parse(self, text: str, tools: list[dict[str, Any]] | None, *,
                       in_reply: bool = True) -> dict[str, Any]:
        """``in_reply=False`` parses a lone call block, outside the state the generation prompt
        opens (Qwen3.5's ``<think>``)."""
        if self.response_schema is not None:
            from transformers.utils.chat_parsing_utils import recursive_parse

            parsed = recursive_parse(text + self.parse_suffix, self.response_schema)
            if not isinstance(parsed, dict):
                raise ValueError(f"the reply does not match the {self.name} response schema")
            return _typed(parsed, tools)
        from transformers.utils.chat_parsing import parse_response

        return parse_response(text + self.parse_suffix, self.response_template,
                              prefix=self.generation_prompt if in_reply else "", tools=tools)

    def _message(self, parsed: Mapping[str, Any]) -> AssistantMessage:
        reasoning = next((parsed[k] for k in ("reasoning_content", "thinking") if parsed.get(k)), "")
        content = parsed.get("content") or ""
        calls = tuple(tool_call_from(c) for c in parsed.get("tool_calls") or [])
        return AssistantMessage(content.strip() if isinstance(content, str) else "", calls,
                                reasoning.strip() if isinstance(reasoning, str) else "")


MAX_REPLY_CHARS = 32_768
"""The reply bound without an env to ask (``ToolEnv.max_action_chars``' default)."""
MAX_CALLS = 8
"""Calls parsed per reply without an env to ask (``ToolEnv.max_calls_per_turn``' default)."""
MAX_SECTIONS = 16
"""Thinking/answer sections a reply may open and still be read section by section."""
"""Calls parsed per reply without an env to ask (``ToolEnv.max_calls_per_turn``' default)."""


def instruction_messages(env: ToolEnv, task_prompt: str) -> list[Message]:
    """The env's instructions as the system message, then the task: the opening of every dialect
    that shows the tools outside the text (the chat template's or the server's ``tools=``)."""
    system = env.instructions.strip()
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": task_prompt}]


def _refused(reason: str) -> AssistantMessage:
    """A reply nothing is read from: one malformed call, so the env answers with ``reason``."""
    return AssistantMessage("", (ToolCall("", error=reason),))


@functools.cache
def template_parser() -> bool:
    """Whether transformers parses response templates with argument typing (5.15 on)."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("5.15.0")


def _typed(parsed: dict[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Argument values written as text, typed by the called tool's JSON schema (the legacy parser
    does not): a value stays text where the parameter takes a string (or is unknown), else it is
    read as JSON when it is JSON; the tool's own validation reports what still does not fit."""
    params = {t["function"]["name"]: t["function"].get("parameters", {}).get("properties", {})
              for t in tools or [] if isinstance(t, Mapping) and "function" in t}
    for call in parsed.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if not isinstance(arguments, dict) or function.get("name") not in params:
            continue
        known = params[function["name"]]
        for key, value in arguments.items():
            types = _types(known.get(key))
            if isinstance(value, str) and types and "string" not in types:
                try:
                    arguments[key] = bounded_json.loads(value, max_depth=MAX_CALL_DEPTH)
                except ValueError:
                    pass
    return parsed


def _types(schema: Any) -> list[str]:
    """The JSON types a parameter schema allows (``anyOf``/``oneOf`` included)."""
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    for choice in [*(schema.get("anyOf") or []), *(schema.get("oneOf") or [])]:
        types += _types(choice)
    return types


def _reason(exc: Exception) -> str:
    """The library's message in one line: its summary and, for JSON, the decoder's complaint."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    detail = next((ln[len("Error: "):] for ln in lines if ln.startswith("Error: ")), "")
    return lines[0].rstrip(".") + (f" ({detail})" if detail else "")


def _as_message(message: Mapping[str, Any]) -> AssistantMessage:
    calls = tuple(tool_call_from(c) for c in message.get("tool_calls") or [])
    reasoning = next((message[k] for k in ("reasoning_content", "reasoning", "thinking")
                      if isinstance(message.get(k), str)), "")
    return AssistantMessage(message.get("content") or "", calls, reasoning)
