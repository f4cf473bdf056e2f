"""In-process Hugging Face transformers backend: CPU tests, demos, and in-process training.

Requests that arrive together are decoded as one left-padded batch with a KV cache (several
times the throughput of one-at-a-time on CPU). Each row keeps its own sampling parameters, seed,
stop strings and token limit. The backend holds the very ``torch.nn.Module`` a trainer updates,
so weight sync is direct: update between steps, or call :meth:`HFBackend.load_weights`, which
waits for the running batch to finish.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trace_agents.backends.base import (
    BackendError,
    Completion,
    FinishReason,
    Prompt,
    SamplingParams,
    is_token_prompt,
)


@dataclass
class _Row:
    prompt: list[int]
    params: SamplingParams
    generator: Any
    ids: list[int]
    logprobs: list[float]
    finish: FinishReason | None = None


class HFEngine:
    """Synchronous batched sampler over a causal LM (the part that runs in a worker thread)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_tokens: int = 16_384) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        """Bound on rows x padded prompt length of one batch: attention memory grows with both,
        so long prompts (BFCL's are thousands of tokens) are decoded in smaller groups."""
        self.tokenizer = tokenizer
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids))
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.lock = threading.Lock()
        # transformers 5 renamed ``past_key_values`` to ``cache``; accept both generations
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def generate(self, requests: Sequence[tuple[list[int], SamplingParams]]) -> list[Completion]:
        import torch

        order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]))
        results: dict[int, Completion] = {}
        with self.lock, torch.inference_mode():
            for group in self._groups(order, requests):
                for i, completion in zip(group, self._generate([requests[i] for i in group])):
                    results[i] = completion
        return [results[i] for i in range(len(requests))]

    def _groups(self, order: list[int], requests: Sequence[tuple[list[int], SamplingParams]]) -> list[list[int]]:
        """Consecutive runs of the length-sorted requests whose padded size fits the bound."""
        groups: list[list[int]] = []
        for i in order:
            width = len(requests[i][0])
            if groups and width * (len(groups[-1]) + 1) <= self.max_batch_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _generate(self, requests: Sequence[tuple[list[int], SamplingParams]]) -> list[Completion]:
        import torch

        rows = []
        for prompt, params in requests:
            if not prompt:
                raise BackendError("empty prompt")
            seed = params.seed if params.seed is not None else random.getrandbits(63)
            rows.append(_Row(list(prompt), params, torch.Generator().manual_seed(seed), [], []))
        device = self.model.device
        width = max(len(r.prompt) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        steps = max(r.params.max_tokens for r in rows)
        past = None
        for _ in range(steps):
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions,
                use_cache=True, **{self._cache_arg: past},
            )
            past = out[self._cache_arg]
            logits = out.logits[:, -1, :].float()
            next_ids = [self._advance(r, logits[i]) for i, r in enumerate(rows)]
            if all(r.finish is not None for r in rows):
                break
            input_ids = torch.tensor(next_ids, device=device)[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
        return [self._completion(r) for r in rows]

    def _advance(self, row: _Row, logits: Any) -> int:
        """Sample one token for a live row, record it and decide whether the row is finished."""
        import torch

        if row.finish is not None:
            return self.pad_id
        logprobs = torch.log_softmax(logits, dim=-1)
        p = row.params
        if p.temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            token = int(torch.multinomial(probs, 1, generator=row.generator))
        row.ids.append(token)
        row.logprobs.append(float(logprobs[token]))
        if token in self.eos_ids:
            row.finish = "stop"
        elif p.stop and any(s in self._tail_text(row) for s in p.stop):
            row.finish = "stop"
        elif len(row.ids) >= p.max_tokens or len(row.prompt) + len(row.ids) >= self.max_positions:
            row.finish = "length"
        return token

    def _tail_text(self, row: _Row) -> str:
        """Enough decoded tail to see a stop string that the last token completed."""
        longest = max(len(s) for s in row.params.stop)
        return self.tokenizer.decode(row.ids[-(longest + 1):], skip_special_tokens=False)

    def _completion(self, row: _Row) -> Completion:
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        return Completion(
            text=text, token_ids=row.ids, logprobs=row.logprobs,
            finish_reason=row.finish or "length", prompt_tokens=len(row.prompt),
        )


class HFBackend:
    """Async front of :class:`HFEngine`: concurrent callers are batched, up to ``max_batch``."""

    accepts_token_ids = True

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 16,
                 max_batch_tokens: int = 16_384) -> None:
        self.engine = HFEngine(model, tokenizer, max_batch_tokens=max_batch_tokens)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[list[int], SamplingParams, asyncio.Future[Completion]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> Any:
        return self.engine.model

    def load_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Copy new weights in place, between batches (the trainer may also share the module)."""
        with self.engine.lock:
            self.engine.model.load_state_dict(state_dict, strict=True)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if is_token_prompt(prompt):
            return [int(t) for t in prompt]  # type: ignore[union-attr]
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        ids = self.encode_prompt(prompt)
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._loop is not loop:
            # one batching worker per event loop (tests run a fresh loop each)
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._serve(self._queue))
        future: asyncio.Future[Completion] = loop.create_future()
        await self._queue.put((ids, params, future))
        return await future

    async def _serve(self, queue: asyncio.Queue) -> None:
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(0)  # let callers scheduled in the same tick join the batch
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [item for item in batch if not item[2].cancelled()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.engine.generate, [(i, p) for i, p, _ in batch])
            except Exception as exc:  # a bad batch fails its callers, never the worker
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BackendError(f"in-process generation failed: {exc!r}"))
                continue
            for (_, _, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
