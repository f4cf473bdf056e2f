"""A scripted policy behind the backend interface, for tests and demos without a model.

The policy sees the prompt as text (token prompts are decoded with the tokenizer, chat prompts are
their message contents joined) and returns the action. With a tokenizer the reply also carries
token ids, so token-level rollouts and branching work exactly as with a real engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trace_agents.backends.base import Completion, Prompt, SamplingParams, is_token_prompt

Policy = Callable[[str, SamplingParams], str | Awaitable[str]]


class ScriptedBackend:
    native_tools = False

    def __init__(self, policy: Policy, tokenizer: Any = None) -> None:
        self.policy = policy
        self.tokenizer = tokenizer
        self.accepts_token_ids = tokenizer is not None
        self.calls = 0

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        self.calls += 1
        if is_token_prompt(prompt):
            if self.tokenizer is None:
                raise ValueError("a scripted backend without a tokenizer takes chat messages")
            context = self.tokenizer.decode(list(prompt), skip_special_tokens=False)
            prompt_tokens = len(prompt)
        else:
            context = "\n".join(m["content"] for m in prompt)  # type: ignore[index]
            prompt_tokens = 0
        reply = self.policy(context, params)
        text = reply if isinstance(reply, str) else await reply
        finish = "stop"
        for stop in params.stop:
            at = text.find(stop)
            if at >= 0:
                text = text[: at + len(stop)]
                break
        ids = [] if self.tokenizer is None else list(self.tokenizer.encode(text, add_special_tokens=False))
        ends = [i for i, t in enumerate(ids) if t in params.stop_token_ids]
        if ends and ends[0] + 1 < len(ids):
            ids, finish = ids[: ends[0] + 1], "stop"
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if len(ids) > params.max_tokens:
            ids, finish = ids[: params.max_tokens], "length"
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return Completion(text, ids, [0.0] * len(ids), finish, prompt_tokens)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        return None
