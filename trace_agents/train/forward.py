"""Log-probabilities of a batch of token sequences in one of three layouts, the same function of
the weights in each: ``padded`` (every row in full), ``prefix_once`` (the rows' common prefix
once, below) and ``packed`` (every shared prefix once: a trie with a tree attention mask,
`trace_agents.train.packing`). `choose_layout` picks by estimated work (`layout_flops`).

Every training row of a step starts with the same system prompt (the tools' schemas and the
instructions: ~430 of SmolLM2's ~700 calculator tokens), and rows of one tree share their
prompt and the turns before their branch point. A plain padded forward pays for that prefix once
per row. Here the prefix runs once, its key/value cache is repeated across the rows, and only
each row's own suffix is computed: the same function of the weights (the cache carries the
gradient back to the prefix), at a fraction of the FLOPs on the long shared prompts of agent
episodes. Rows are right-padded, so positions continue from the prefix for every row.
"""

from __future__ import annotations

from typing import Literal

import torch

from trace_agents.models import cache_argument
from trace_agents.train.loss import picked_logprobs, sequence_logprobs
from trace_agents.train.packing import can_pack, pack, packed_logprobs

Layout = Literal["padded", "prefix_once", "packed"]
LAYOUTS: tuple[Layout, ...] = ("padded", "prefix_once", "packed")

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
PACKED_SHARE = 0.8
"""Packing is chosen when its estimated FLOPs are at most this share of the padded or prefix-once
layout's (whichever :func:`prefix_once_pays` picks): the margin pays for building the trie and
mask and for a dense attention kernel. Measured on CPU (``benchmarks/update_bench.py --trees``,
docs/training.md); not yet calibrated on a GPU (``benchmarks/gpu_bench.py`` measures it)."""


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


def layout_flops(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor) -> dict[str, float]:
    """Estimated forward FLOPs of each layout: 2 x parameters per computed token plus 4 x layers x
    hidden per attended (query, key) pair (causal pairs for the padded rows and the prefix, the
    packed sequence's dense ``nodes x nodes``, which is what a masked kernel computes)."""
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    per_pair = 4.0 * config.num_hidden_layers * config.hidden_size
    lengths = attention.sum(-1).double().cpu()
    rows, width = tokens.shape
    shared = common_prefix_length(tokens, attention) if rows >= 2 else 0
    own = lengths - shared
    nodes = float(pack(tokens.cpu(), attention.cpu()).nodes)
    computed = {"padded": float(rows * width), "prefix_once": shared + float(own.sum()), "packed": nodes}
    pairs = {"padded": rows * width * (width + 1) / 2,
             "prefix_once": shared * (shared + 1) / 2 + float((own * (shared + (own + 1) / 2)).sum()),
             "packed": nodes * nodes}
    return {k: 2.0 * params * computed[k] + per_pair * pairs[k] for k in LAYOUTS}


def choose_layout(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor) -> Layout:
    """Padded or prefix-once by :func:`prefix_once_pays` (measured on CPU and an H200), then
    packed where the model takes the tree mask and its estimate is at most :data:`PACKED_SHARE`
    of that layout's."""
    rows = tokens.shape[0]
    once = prefix_once_pays(model, rows, common_prefix_length(tokens, attention))
    base: Layout = "prefix_once" if once else "padded"
    if rows < 2 or not can_pack(model):
        return base
    flops = layout_flops(model, tokens, attention)
    return "packed" if flops["packed"] <= PACKED_SHARE * flops[base] else base


def token_logprobs(model: torch.nn.Module, tokens: torch.Tensor, attention: torch.Tensor,
                   *, layout: Layout | None = None) -> torch.Tensor:
    """``out[:, t] = log p(tokens[:, t] | tokens[:, :t])`` (position 0 is 0), ``[batch, time]``,
    on the model's device; differentiable when grad is enabled. ``layout`` None: `choose_layout`;
    a layout the batch or model cannot take (no common prefix; an attention kernel without
    custom masks) runs padded."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    device = next(model.parameters()).device
    tokens, attention = tokens.to(device), attention.to(device)
    rows = tokens.shape[0]
    layout = choose_layout(model, tokens, attention) if layout is None else layout
    if layout == "packed" and can_pack(model) and tokens.shape[1] > 1:
        return packed_logprobs(model, tokens, attention)
    shared = common_prefix_length(tokens, attention)
    if layout != "prefix_once" or rows < 2 or shared < 1:
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
