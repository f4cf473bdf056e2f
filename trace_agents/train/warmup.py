"""Format warm-start: a short supervised pass on expert demonstrations before RL.

RL learns only from groups with mixed outcomes; a small model that never produces a well-formed
tool call or answer gets reward 0 everywhere and no gradient at all (SmolLM2-135M zero-shot
scores 0 on one-step word problems). A few dozen demonstrations of the turn format fix that. The
env's :meth:`~trace_envs.ToolEnv.demonstration` gives structured messages; the model's dialect
writes them as the model would and renders everything else exactly as rollouts do (same prompt,
chat template, observation segments). Only the action tokens are trained, with the token that
ends the turn where no stop string does (the template dialects).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from trace_agents.dialects import Dialect, make_dialect
from trace_agents.models import autocast
from trace_agents.train.forward import token_logprobs
from trace_agents.train.update import collate
from trace_envs import ToolEnv


def demonstration_tokens(env: ToolEnv, task_id: str, dialect: Dialect) -> tuple[list[int], list[float]] | None:
    """Token ids and loss mask of the expert's episode on one task (None if the env has none)."""
    prompt, _ = env.reset(options={"task_id": task_id})
    assert env.task is not None
    messages = env.demonstration(env.task)
    if not messages:
        return None
    ids = dialect.initial_ids(env, prompt)
    mask = [0.0] * len(ids)
    for message in messages:
        action_ids = dialect.encode(dialect.render_action(message))
        action = dialect.parse(dialect.decode(action_ids), env)  # what a rollout would send
        observation, _, terminated, truncated, info = env.step(action)
        ended = terminated or truncated
        tail = dialect.after_action_ids(action_ids, action, None if ended else observation, info)
        if not dialect.stop and tail and tail[0] in dialect.end_ids:
            action_ids.append(tail.pop(0))  # no stop string ends the turn: the model must learn to
        ids += action_ids + tail
        mask += [1.0] * len(action_ids) + [0.0] * len(tail)
    return ids, mask


def warm_start(
    model: torch.nn.Module,
    tokenizer: Any,
    env: ToolEnv,
    *,
    examples: int,
    epochs: int = 1,
    lr: float = 5e-5,
    micro_batch: int = 4,
    seed: int = 0,
    dialect: str | Dialect = "auto",
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``examples`` demonstrations, its forwards in
    ``compute_dtype`` (:func:`~trace_agents.models.autocast`); returns loss and timing."""
    started = time.perf_counter()
    fmt = make_dialect(tokenizer, dialect)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(env.tasks))[:examples]
    rows = [r for i in order if (r := demonstration_tokens(env, env.tasks[int(i)].id, fmt))]
    if not rows:
        raise ValueError(f"{type(env).__name__} has no demonstrations to warm-start from")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for _ in range(epochs):
        for start in range(0, len(rows), micro_batch):
            chunk = [rows[int(i)] for i in rng.permutation(len(rows))[start : start + micro_batch]]
            batch = collate([(ids, mask, mask) for ids, mask in chunk], pad)
            with autocast(model, compute_dtype):
                logp = token_logprobs(model, batch.tokens, batch.attention).cpu()
            loss = -(logp * batch.mask).sum() / batch.mask.sum().clamp_min(1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return {"examples": len(rows), "loss_first": losses[0], "loss_last": losses[-1],
            "seconds": time.perf_counter() - started}
