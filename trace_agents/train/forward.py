"""Log-probabilities of a batch of token sequences, with the rows' common prefix run once.

Every training row of a step starts with the same system prompt (the tools' schemas and the
instructions: ~430 of SmolLM2's ~700 calculator tokens), and rows of one tree share their
prompt and the turns before their branch point. A plain padded forward pays for that prefix once
per row. Here the prefix runs once, its key/value cache is repeated across the rows, and only
each row's own suffix is computed: the same function of the weights (the cache carries the
gradient back to the prefix), at a fraction of the FLOPs on the long shared prompts of agent
episodes. Rows are right-padded, so positions continue from the prefix for every row.
"""

from __future__ import annotations

import torch

from trace_agents.models import cache_argument
from trace_agents.train.loss import picked_logprobs, sequence_logprobs

MIN_SHARED = 32
"""On CPU, shorter common prefixes run the plain padded forward (the cache bookkeeping is not
worth it)."""
GPU_MIN_SAVED = 8e12
"""On a GPU the padded forward costs little more than its kernel launches, and the prefix-once
path launches twice: it pays only when the work it saves, (rows - 1) x prefix tokens x
parameters, passes this. Measured on an H200 (``benchmarks/gpu_bench.py``, bfloat16 forwards,
docs/training.md): SmolLM2-135M's size broke even at 3.9e12 (8 rows, 4096 shared tokens) and was
slower below; Qwen3-1.7B's body was 0.93x as fast at 5.4e12 and 1.36x at 1.6e13. Every measured
case is on the faster side of 8e12."""


def common_prefix_length(tokens: torch.Tensor, attention: torch.Tensor) -> int:
    """Tokens all rows share, leaving every row at least one token of its own (the logits at the
    prefix's last position predict each row's first own token)."""
    lengths = attention.sum(-1)
    same = (tokens == tokens[:1]).all(0)
    shared = int(same.long().cumprod(0).sum())
    return max(0, min(shared, int(lengths.min()) - 1))


def prefix_once_pays(model: torch.nn.Module, rows: int, shared: int) -> bool:
    """Whether running a ``shared``-token prefix once beats the padded forward for ``rows`` rows
    on the model's device (:data:`MIN_SHARED` on CPU, :data:`GPU_MIN_SAVED` elsewhere)."""
    if rows < 2:
        return False
    if next(model.parameters()).device.type == "cpu":
        return shared >= MIN_SHARED
    return (rows - 1) * shared * sum(p.numel() for p in model.parameters()) >= GPU_MIN_SAVED


def token_logprobs(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor,
                   *, min_shared: int | None = None) -> torch.Tensor:
    """``out[:, t] = log p(tokens[:, t] | tokens[:, :t])`` (position 0 is 0), ``[batch, time]``,
    on the model's device; differentiable when grad is enabled. The rows' common prefix runs
    once when :func:`prefix_once_pays`, or when it is at least ``min_shared`` tokens if given."""
    device = next(model.parameters()).device
    tokens, attention = tokens.to(device), attention.to(device)
    rows = tokens.shape[0]
    shared = common_prefix_length(tokens, attention)
    once = prefix_once_pays(model, rows, shared) if min_shared is None else (
        rows >= 2 and shared >= min_shared)
    if not once:
        return sequence_logprobs(model(input_ids=tokens, attention_mask=attention).logits, tokens)
    from transformers import DynamicCache

    cache, argument = DynamicCache(config=model.config), cache_argument(model)
    head = model(input_ids=tokens[:1, :shared], use_cache=True, **{argument: cache})
    cache.batch_repeat_interleave(rows)
    tail = model(input_ids=tokens[:, shared:], attention_mask=attention, use_cache=True,
                 **{argument: cache}).logits
    head_logp = sequence_logprobs(head.logits, tokens[:1, :shared]).expand(rows, -1)
    first = picked_logprobs(head.logits[:, -1].expand(rows, -1), tokens[:, shared])[:, None]
    rest = sequence_logprobs(tail, tokens[:, shared:])[:, 1:]
    return torch.cat([head_logp, first, rest], dim=1)
