"""Offline stand-ins for each family's tokenizer: the project's tiny BPE with the family's real chat
template from the ``trl`` wheel (or shipped with the dialects), its special tokens added as single
tokens and its end-of-turn token as eos. Rendering, parsing and token segments then behave as with
the real tokenizer (only ordinary text splits into different pieces)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TEMPLATES = {
    # dialect: (trl template file, eos token)
    "hermes": ("qwen3", "<|im_end|>"),
    "qwen3_xml": ("qwen3_5_think", "<|im_end|>"),
    "llama3_json": ("llama3_1", "<|eot_id|>"),
    "harmony": ("gptoss", "<|return|>"),
    "glm4": ("glm4moe", "<|endoftext|>"),
    "gemma4": ("gemma4", "<turn|>"),
    "lfm2": ("lfm2_2_5", "<|im_end|>"),
    "llama4_pythonic": ("llama4_pythonic", "<|eot|>"),
    "mistral": ("mistral", "</s>"),
    "deepseek_v3": ("deepseek_v3_1", "<｜end▁of▁sentence｜>"),
    "kimi_k2": ("kimi_k2", "<|im_end|>"),
    "granite": ("granite4", "<|end_of_text|>"),
    "xlam": ("xlam", "<|im_end|>"),
    "minimax_m2": ("minimax_m2", "[e~["),
}
EXTRA_TEMPLATES = {
    "qwen3_instruct_2507": "hermes", "qwen2_5": "hermes", "qwen3_5_nothink": "qwen3_xml",
    "qwen3_6": "qwen3_xml", "qwen3_8": "qwen3_xml", "llama3_2": "llama3_json",
    "gemma4_v5": "gemma4", "nemotron_3_nano": "qwen3_xml", "nemotron_3_super": "qwen3_xml",
    "nemotron_3_ultra": "qwen3_xml", "nemotron_3_5_lightning": "qwen3_xml",
    "deepseekv3": "react", "deepseek_r1_distill": "react", "lfm2_v2": "lfm2", "lfm2_2_5_v2": "lfm2", "lfm2": "react",
    "llama3": "react", "phi3": "react", "gemma3": "react",
}
TEMPLATE_KWARGS = {t: {"enable_thinking": False} for t in EXTRA_TEMPLATES if t.startswith("nemotron")}
"""Nemotron 3 renders a reply without thinking as ``<think></think>``, which continues only the
generation prompt of ``enable_thinking=False`` (with thinking on, its replies always think)."""
_SPECIAL = re.compile(r"<\|[A-Za-z_0-9\"]+\|>|<\|[A-Za-z_\"]+>|<[A-Za-z_\"]+\|>|\[gMASK\]|<sop>|</s>|<｜[^｜]+｜>"
                      r"|\]~!?b[\[\]]|\[e~\[|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|ARGS|TOOL_RESULTS|THINK)\]")


def template_text(name: str) -> str:
    """The template shipped with the dialects, else trl's."""
    from trace_agents.dialects import chat_template

    try:
        return chat_template(name)
    except FileNotFoundError:
        trl = pytest.importorskip("trl")
        return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def family_tokenizer(dialect: str, template: str | None = None):
    from trace_agents.models import tiny_tokenizer

    name, eos = TEMPLATES[dialect]
    text = template_text(template or name)
    tok = tiny_tokenizer()
    specials = sorted(set(_SPECIAL.findall(text)) | {eos} | {"<|im_start|>", "<|im_end|>"})
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = eos
    tok.chat_template = text
    return tok
