"""Shared helpers of the verl tier: a small ChatML tokenizer, a scripted policy behind verl's own
``generate`` signature and ``TokenOutput``, calculator actions and env specs.

The tier runs against the real verl 0.9 installed by ``scripts/install_verl.sh`` in ``.venv-verl``
(verl pins transformers<5.11, the main ``.venv`` tracks newer releases): ``.ci/run`` runs
``.venv-verl/bin/python -m pytest tests/verl``. A venv without verl does not collect it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

if importlib.util.find_spec("verl") is None:
    collect_ignore_glob = ["*.py"]  # the main .venv: .ci/run runs this tier in .venv-verl
else:
    from verl.workers.rollout.replica import TokenOutput

from trace_agents.verl import EnvSpec
from trace_envs import load_suite

SUITE = {"size": 20, "seed": 1}
SPECIALS = ("<|im_start|>", "<|im_end|>")


class ChatMLTokenizer:
    """Character-level tokenizer with two atomic special tokens and a ChatML template."""

    chat_template = "chatml"
    eos_token_id = 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in SPECIALS if text.startswith(s, i)), None)
            if special:
                ids.append(SPECIALS.index(special))
                i += len(special)
            else:
                ids.append(ord(text[i]) + len(SPECIALS))
                i += 1
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out = []
        for i in ids:
            if i < len(SPECIALS):
                out.append("" if skip_special_tokens else SPECIALS[i])
            else:
                out.append(chr(i - len(SPECIALS)))
        return "".join(out)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **_):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        text += "<|im_start|>assistant\n" if add_generation_prompt else ""
        return self.encode(text) if tokenize else text


class ScriptedServer:
    """A scripted policy behind ``LLMServerClient.generate``'s signature: ``policy(prompt_text,
    n_call)`` gives the action text, returned as verl's ``TokenOutput`` (ids, then the
    ``end_of_turn`` ids).
    A plain class, like verl's ``LLMServerClient`` (hydra would turn a dataclass into a config)."""

    def __init__(self, tokenizer: Any, policy: Callable[[str, int], str], logprobs: bool = False,
                 end_of_turn: Sequence[int] = (1,)) -> None:
        self.tokenizer = tokenizer
        self.policy = policy
        self.logprobs = logprobs
        self.end_of_turn = list(end_of_turn)
        self.calls: list[dict[str, Any]] = []
        self.stop_reason = "completed"
        self.global_steps: int | None = None

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]):
        await asyncio.sleep(0)
        n = sum(c["request_id"] == request_id for c in self.calls)
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids),
                           "sampling_params": dict(sampling_params)})
        text = self.policy(self.tokenizer.decode(prompt_ids, skip_special_tokens=False), n)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + self.end_of_turn
        ids = ids[: sampling_params["max_tokens"]]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids) if self.logprobs else None,
                           stop_reason=self.stop_reason, extra_fields={"global_steps": self.global_steps})


def calc(expr: str) -> str:
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'


def script(*actions: str) -> Callable[[str, int], str]:
    return lambda _prompt, n: actions[min(n, len(actions) - 1)]


def spec(task: int = 0, max_turns: int = 6) -> EnvSpec:
    task_id = load_suite("arithmetic", **SUITE)[task].id
    return EnvSpec("trace/Calculator-v0", {"suite_options": SUITE, "max_turns": max_turns}, task_id)


def answer(task: int = 0) -> str:
    return load_suite("arithmetic", **SUITE)[task].answer
