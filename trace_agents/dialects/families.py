"""The model families: each one's response template (``trl``'s, or written here in the same
declarative spec where no package ships one) and its end-of-turn tokens.

Adding a family is a subclass here with the facts of its format, an entry in :data:`FAMILIES`,
a marker in :func:`detect`, and a round-trip test with its real chat template
(``tests/agents/test_dialects.py``; where no package ships a template that renders its tools, one
written from the published template goes in ``templates/``); see ``docs/dialects.md``.
"""

from __future__ import annotations

import copy
from typing import Any

from trace_agents.dialects.base import TemplateDialect


def _patched(template: dict[str, Any], **tool_calls: Any) -> dict[str, Any]:
    """trl's response template with its ``tool_calls`` field widened to the forms the family's
    models write that the template's own patterns miss."""
    template = copy.deepcopy(template)
    field = template["fields"]["tool_calls"]
    for key, value in tool_calls.items():
        if key == "tag_pattern":
            field["content_args"]["tag_pattern"] = value
        else:
            field[key] = value
    return template


class Hermes(TemplateDialect):
    """Qwen2.5, Qwen3 (and 2507), Hermes: ``<tool_call>{"name", "arguments"}</tool_call>`` JSON,
    results as ``<tool_response>`` blocks in a user turn."""

    name = "hermes"
    end_of_turn = ("<|im_end|>",)
    trl_template = "qwen3_template"
    trl_schema = "qwen3_schema"


class Granite(Hermes):
    """IBM Granite 4.0: the Hermes JSON calls, results as ``<tool_response>`` blocks in a user
    turn, every message ended by ``<|end_of_text|>``; its template, less the documents (RAG)
    part, is shipped here: ``chat_template("granite4")``."""

    name = "granite"
    end_of_turn = ("<|end_of_text|>",)

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """trl's Qwen3 template with Granite's role markers (it has no thinking to read)."""
        template = copy.deepcopy(super().load_response_template())
        template["start_anchor"] = "<|start_of_role|>assistant<|end_of_role|>"
        del template["fields"]["reasoning_content"]
        template["fields"]["content"]["close_pattern"] = r"<\|end_of_text\|>\s*"
        return template


class QwenXML(TemplateDialect):
    """Qwen3.5, Qwen3.6, Qwen3-Coder: ``<tool_call><function=name><parameter=key>value</parameter>
    </function></tool_call>``; string values are written raw, so the tool schema types them."""

    name = "qwen3_xml"
    end_of_turn = ("<|im_end|>",)
    paired_tags = (("<parameter=", "</parameter>"), ("<function=", "</function>"))
    trl_template = "qwen3_5_template"
    trl_schema = "qwen3_5_schema"


class Llama3JSON(TemplateDialect):
    """Llama 3.1 / 3.2: a bare ``{"name": ..., "parameters": {...}}`` reply, one call per turn,
    tools listed in the first user message, results in the ``ipython`` role."""

    name = "llama3_json"
    end_of_turn = ("<|eot_id|>", "<|eom_id|>")
    parse_suffix = "<|eot_id|>"
    one_call_per_message = True
    call_marker = r'^\s*\{\s*"(?:name|type)"'
    trl_template = "llama3_template"
    trl_schema = "llama3_schema"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """Also the forms Llama 3.x models write beside Meta's ``{"name", "parameters"}``:
        ``"arguments"`` for ``"parameters"``, a leading ``"type": "function"``, spaces after
        ``{`` (vLLM's ``llama3_json`` parser reads them too)."""
        return _patched(super().load_response_template(), open_pattern=(
            r'\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*'
            r'"(?:parameters|arguments)"\s*:\s*'))


class Harmony(TemplateDialect):
    """gpt-oss's harmony format: thinking in the ``analysis`` channel, a call as a
    ``to=functions.name`` message in the ``commentary`` channel ended by ``<|call|>``, the answer
    in the ``final`` channel ended by ``<|return|>``; results as ``functions.name`` messages."""

    name = "harmony"
    end_of_turn = ("<|return|>", "<|call|>", "<|end|>")
    message_end = ("<|end|>",)
    thinking_key = "thinking"
    one_call_per_message = True
    call_marker = r"to=functions\."
    trl_template = "gptoss_template"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """The recipient before the channel (the chat template's rendering, ``to=functions.f
        <|channel|>commentary json<|message|>``) or after it (OpenAI's harmony guide,
        ``<|channel|>commentary to=functions.f <|constrain|>json<|message|>``), with or without
        the ``<|constrain|>`` and ``json`` hints."""
        return _patched(super().load_response_template(), open_pattern=(
            r"(?:<\|channel\|>commentary\s+)?to=functions\.(?P<name>[^\s<]+)\s*"
            r"(?:<\|channel\|>commentary)?\s*(?:<\|constrain\|>)?\s*(?:json)?\s*<\|message\|>"))


class GLM4(TemplateDialect):
    """GLM-4.5/4.6 (GLM-4-MoE): ``<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>
    </tool_call>``; results as ``<tool_response>`` blocks in an ``<|observation|>`` turn. The model
    ends its turn with the next role's token (``<|observation|>`` or ``<|user|>``)."""

    name = "glm4"
    end_of_turn = ("<|observation|>", "<|user|>")
    opens_next = end_of_turn
    paired_tags = (("<arg_key>", "</arg_key>"), ("<arg_value>", "</arg_value>"))
    trl_template = "glm4moe_template"
    trl_schema = "glm4moe_schema"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """Also GLM-4.7's compact form, without newlines between name and arguments
        (``<tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>``)."""
        return _patched(super().load_response_template(),
                        open_pattern=r"<tool_call>(?P<name>[^\s<]+)\s*",
                        tag_pattern=r"<arg_key>(?P<key>[^<]+)</arg_key>\s*<arg_value>(?P<value>.*?)</arg_value>")


class Gemma4(TemplateDialect):
    """Gemma 4: ``<|tool_call>call:name{key:<|"|>text<|"|>,n:3}<tool_call|>``; the model stops at
    ``<|tool_response>``, the result is written into the same model turn, and the model goes on."""

    name = "gemma4"
    end_of_turn = ("<turn|>", "<|tool_response>")
    call_marker = r"<\|tool_call>"
    opens_next = ("<|tool_response>",)
    trl_template = "gemma4_template"


def _response_template(*, start: str, opens: str, closes: str, end: str, content: str = "json",
                       content_args: dict[str, Any] | None = None, call_lists: bool = False,
                       thinking: tuple[str, str, str] | None = None) -> dict[str, Any]:
    """A response template (transformers' spec) for a family no package ships one for: the reply
    after ``start`` (a pattern), calls from ``opens`` to ``closes`` read by the ``content`` parser
    (the call's ``name`` captured by ``opens``), text up to ``end``, and ``thinking`` as (field,
    open tag, close pattern). With ``call_lists`` a block holds a list of calls: Python-style,
    ``[f(a=1), g(b='x')]``, read by transformers' strict ``python-call-list`` reader (keyword
    arguments, literals only, never evaluated), or a JSON array of ``{"name", "arguments"}``."""
    fields: dict[str, Any] = {}
    if thinking:
        key, open_tag, close_pattern = thinking
        fields[key] = {"open": open_tag, "close_pattern": close_pattern, "content": "text"}
    arguments = "{arguments}" if call_lists else "{content}"
    fields["tool_calls"] = {
        "open_pattern": opens, "close_pattern": closes, "content": content,
        "content_args": content_args or {}, **({"transform_each": True} if call_lists else {"repeats": True}),
        "transform": {"type": "function", "function": {"name": "{name}", "arguments": arguments}},
    }
    fields["content"] = {"close_pattern": end, "content": "text"}
    return {"defaults": {"role": "assistant"}, "start_anchor_pattern": start, "fields": fields}


class LFM2(TemplateDialect):
    """LFM2 (since its template renders calls) and LFM2.5: ``<|tool_call_start|>[f(a='x', n=3),
    g()]<|tool_call_end|>``, Python-style calls in one block, results in the ``tool`` role.

    trl's ``lfm2_2_5_template`` reads each call with a regex that ends it at its first ``)`` (a
    string argument ``'(1+2)*3'`` is cut); here the block is read whole by transformers'
    ``python-call-list`` parser."""

    name = "lfm2"
    end_of_turn = ("<|im_end|>",)
    thinking_key = "thinking"
    call_lists = True
    call_marker = r"<\|tool_call_start\|>"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        return _response_template(
            start=r"<\|im_start\|>assistant\n", opens=r"<\|tool_call_start\|>\s*(?=\[)",
            closes=r"(?<=\])\s*<\|tool_call_end\|>\s*", end=r"<\|im_end\|>\s*", content="python-call-list",
            call_lists=True, thinking=("thinking", "<think>", r"</think>\s*"))


class Llama4Pythonic(TemplateDialect):
    """Llama 4 with Python-style calls, ``[f(a="x", n=3), g()]`` as the whole reply (Meta's
    Llama 4 prompt guide; vLLM's ``llama4_pythonic`` parser), results in the ``ipython`` role.
    The published template lists no ``tools``: use the one shipped here,
    ``chat_template("llama4_pythonic")``."""

    name = "llama4_pythonic"
    end_of_turn = ("<|eot|>", "<|eom|>")
    parse_suffix = "<|eot|>"
    call_lists = True
    call_marker = r"\[\s*[A-Za-z_][\w.-]*\s*\("

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """A call list ends the turn (the template writes the text before it, nothing after),
        or the next list starts."""
        opens = r"(?=\[\s*[A-Za-z_][\w.-]*\s*\()"
        return _response_template(
            start=r"<\|header_start\|>assistant<\|header_end\|>\n\n", opens=opens,
            closes=rf"(?<=\])\s*(?:<\|eo[tm]\|>|{opens})", end=r"<\|eo[tm]\|>\s*|$",
            content="python-call-list", call_lists=True)


class Mistral(TemplateDialect):
    """Mistral's v13 tool format (Ministral 3, Devstral Small 2, Mistral Small 3.2, Magistral):
    ``[TOOL_CALLS]name[ARGS]{json}`` for each call, the turn ended by ``</s>``, results as
    ``[TOOL_RESULTS]...[/TOOL_RESULTS]``, thinking as ``[THINK]...[/THINK]``. The chat template the
    checkpoints ship dates its default system prompt and refuses an empty assistant turn: use the
    one shipped here, ``chat_template("mistral")``."""

    name = "mistral"
    end_of_turn = ("</s>",)
    parse_suffix = "</s>"
    call_marker = r"\[TOOL_CALLS\]"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """A call's JSON runs to the next call or the end of the turn (the format closes neither);
        also v11's form without ``[ARGS]`` (Mistral Small 3.1, Devstral Small 1.x:
        ``[TOOL_CALLS]name{json}``)."""
        return _response_template(
            start=r"\[/INST\]|\[/TOOL_RESULTS\]", opens=r"\[TOOL_CALLS\](?P<name>[^\[\]\s{]+)(?:\[ARGS\])?",
            closes=r"\s*(?:(?=\[TOOL_CALLS\])|</s>)", end=r"</s>\s*|$",
            thinking=("reasoning_content", "[THINK]", r"\[/THINK\]\s*"))


class DeepSeekV3(TemplateDialect):
    """DeepSeek-V3.1/V3.2 (``<｜tool▁call▁begin｜>name<｜tool▁sep｜>{json}<｜tool▁call▁end｜>``) and
    V3/R1-0528 (``<｜tool▁call▁begin｜>function<｜tool▁sep｜>name`` and the JSON in a fenced
    block), calls between ``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``; the model goes on
    after the results without a new turn. The published templates render ``arguments`` as a
    string only: use the one shipped here, ``chat_template("deepseek_v3_1")``."""

    name = "deepseek_v3"
    end_of_turn = ("<｜end▁of▁sentence｜>",)
    call_marker = r"<｜tool▁calls?▁begin｜>"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        return _response_template(
            start=r"<｜Assistant｜>(?:</think>)?|<｜tool▁outputs?▁end｜>",
            opens=(r"(?:<｜tool▁calls▁begin｜>)?<｜tool▁call▁begin｜>(?:function<｜tool▁sep｜>)?"
                   r"(?P<name>[^\n<]+?)(?:\s*```json\s*|<｜tool▁sep｜>)"),
            closes=r"\s*(?:```\s*)?<｜tool▁call▁end｜>(?:<｜tool▁calls▁end｜>)?", end=r"<｜end▁of▁sentence｜>\s*|$")


class KimiK2(TemplateDialect):
    """Kimi-K2: ``<|tool_calls_section_begin|><|tool_call_begin|>functions.name:0
    <|tool_call_argument_begin|>{json}<|tool_call_end|><|tool_calls_section_end|>``, results as
    ``tool`` messages naming the call's id. The published template takes the ids from the
    messages, which here carry none: use the one shipped here, ``chat_template("kimi_k2")``."""

    name = "kimi_k2"
    end_of_turn = ("<|im_end|>",)
    call_marker = r"<\|tool_call(?:s_section)?_begin\|>"

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """The call's id is ``functions.<name>:<index>``; a bare name is read too."""
        return _response_template(
            start=r"<\|im_assistant\|>assistant<\|im_middle\|>",
            opens=(r"(?:<\|tool_calls_section_begin\|>)?<\|tool_call_begin\|>\s*(?:functions\.)?"
                   r"(?P<name>[^\s<:]+)(?::\d+)?\s*<\|tool_call_argument_begin\|>"),
            closes=r"\s*<\|tool_call_end\|>(?:\s*<\|tool_calls_section_end\|>)?", end=r"<\|im_end\|>\s*|$")


class XLAM(TemplateDialect):
    """Salesforce xLAM-2 (ChatML): a reply of calls is one JSON array, ``[{"name": "f",
    "arguments": {...}}]``, results in the ``tool`` role. Its template is vLLM's example, fixed
    and shipped here: ``chat_template("xlam")``."""

    name = "xlam"
    end_of_turn = ("<|im_end|>",)
    parse_suffix = "<|im_end|>"
    call_lists = True
    call_marker = r'\[\s*\{\s*"name"'

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """The array ends the reply (the template writes nothing beside it), or the next one starts."""
        opens = r'(?=\[\s*\{\s*"name"\s*:)'
        return _response_template(
            start=r"<\|im_start\|>assistant\n", opens=opens, closes=rf"(?<=\])\s*(?:<\|im_end\|>|{opens})",
            end=r"<\|im_end\|>\s*|$", call_lists=True)


class MiniMaxM2(TemplateDialect):
    """MiniMax-M2: ``<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter>
    </invoke></minimax:tool_call>`` (string values raw, so the tool schema types them), results
    as ``<response>`` blocks in a ``tool`` turn, every turn ended by ``[e~[``; the model always
    thinks. Its template, fixed to keep an empty think block, is shipped here:
    ``chat_template("minimax_m2")``."""

    name = "minimax_m2"
    end_of_turn = ("[e~[",)
    paired_tags = (('<parameter name="', "</parameter>"), ('<invoke name="', "</invoke>"))
    call_marker = r"<minimax:tool_call>|<invoke name="

    @classmethod
    def load_response_template(cls) -> dict[str, Any]:
        """Each ``<invoke>`` is a call; the section tags around them go with the first and last."""
        return _response_template(
            start=r"\]~b\]ai\n", opens=r'(?:<minimax:tool_call>\s*)?<invoke name="(?P<name>[^"\n]+)">',
            closes=r"</invoke>\s*(?:</minimax:tool_call>\s*)?", end=r"\[e~\[\s*|$", content="xml-inline",
            content_args={"tag_pattern": r'<parameter name="(?P<key>[^"\n]+)">(?P<value>.*?)</parameter>',
                          "value_parser": {"name": "text"}},
            thinking=("reasoning_content", "<think>", r"</think>\s*"))


FAMILIES: dict[str, type[TemplateDialect]] = {
    d.name: d for d in (Hermes, QwenXML, Llama3JSON, Harmony, GLM4, Gemma4, LFM2, Llama4Pythonic, Mistral,
                        DeepSeekV3, KimiK2, Granite, XLAM, MiniMaxM2)
}


def detect(chat_template: str | None) -> str:
    """The dialect a chat template speaks, from the markers only that family's template writes;
    ``react`` (tools and the Hermes format in the system text) for templates that render no tools."""
    t = chat_template or ""
    if "<|channel|>" in t and "<|call|>" in t:
        return "harmony"
    if "<arg_key>" in t:
        return "glm4"
    if "<|tool_call>" in t and "<tool_call|>" in t:
        return "gemma4"
    if "<function=" in t and "<parameter=" in t:
        return "qwen3_xml"
    if "<minimax:tool_call>" in t:
        return "minimax_m2"
    if "make calls in a single JSON array" in t:
        return "xlam"
    if "<|start_of_role|>" in t and "<tool_call>" in t:
        return "granite"
    if "<|tool_call_argument_begin|>" in t:
        return "kimi_k2"
    if "<｜tool▁call▁begin｜>" in t and "tools" in t:  # the published V3 and R1 templates list none
        return "deepseek_v3"
    if "[TOOL_CALLS]" in t and "[ARGS]" in t:
        return "mistral"
    if "<|header_start|>" in t and "func_name1(" in t:
        return "llama4_pythonic"
    if "<|tool_call_start|>" in t:
        return "lfm2"
    if "<|start_header_id|>" in t and "ipython" in t and "tool_calls" in t:
        return "llama3_json"
    if "<tool_call>" in t and "tools" in t:
        return "hermes"
    return "react"
