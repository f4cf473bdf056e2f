"""One policy update from a step's rollout trees: samples → padded token batches → clipped loss.

The old log-probabilities are recomputed with the weights that sampled (before the first
gradient step), not taken from the engine: engines report them under their own numerics and some
report none, and a recomputation keeps the first PPO pass exactly on-policy (ratio 1).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trace_agents.models import autocast
from trace_agents.rollout import token_path
from trace_agents.train.advantages import Sample, training_samples
from trace_agents.train.config import OptimConfig
from trace_agents.train.forward import token_logprobs
from trace_agents.train.loss import policy_loss
from trace_allocation.tree import RolloutTree


@dataclass
class Batch:
    """Right-padded sequences; ``mask``/``advantages`` are aligned with ``tokens``."""

    tokens: torch.Tensor
    attention: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor


def sample_tensors(sample: Sample) -> tuple[list[int], list[float], list[float]]:
    """Token ids, loss mask and per-token advantages of one sample."""
    path = token_path(sample.leaf)
    mask, adv = [], []
    for trainable, depth in zip(path.loss_mask, path.depth):
        a = sample.advantages.get(depth)
        on = bool(trainable) and a is not None
        mask.append(1.0 if on else 0.0)
        adv.append(a if on else 0.0)
    return path.ids, mask, adv


def collate(rows: Sequence[tuple[list[int], list[float], list[float]]], pad_id: int) -> Batch:
    width = max(len(r[0]) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width))
    advantages = torch.zeros((len(rows), width))
    for i, (ids, m, a) in enumerate(rows):
        n = len(ids)
        tokens[i, :n] = torch.tensor(ids)
        attention[i, :n] = 1
        mask[i, :n] = torch.tensor(m)
        advantages[i, :n] = torch.tensor(a)
    return Batch(tokens, attention, mask, advantages)


class PolicyUpdater:
    """Owns the optimiser (and the frozen reference for the KL term) of one policy."""

    def __init__(self, model: torch.nn.Module, *, pad_id: int, config: OptimConfig,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.pad_id = pad_id
        self.config = config
        self.compute_dtype = compute_dtype
        """Forwards run in it under autocast; ``model`` keeps float32 weights (:func:`autocast`)."""
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.reference = None
        if config.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def _logprobs(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with autocast(model, self.compute_dtype):
            return token_logprobs(model, batch.tokens, batch.attention).cpu()

    def update(self, trees: Sequence[RolloutTree]) -> dict[str, Any]:
        cfg = self.config
        samples = [
            s for s in training_samples(trees, mode=cfg.advantage, shared=cfg.shared_tokens)
            if any(a != 0.0 for a in s.advantages.values())
        ]
        stats: dict[str, Any] = {"samples": len(samples), "trained_tokens": 0, "loss": None,
                                 "clip_fraction": None, "kl": None, "grad_norm": None}
        if not samples:  # no contrast anywhere: nothing to learn from this step
            return stats
        rows = [sample_tensors(s) for s in samples]
        micro = [rows[i : i + cfg.micro_batch] for i in range(0, len(rows), cfg.micro_batch)]
        batches = [collate(m, self.pad_id) for m in micro]
        stats["trained_tokens"] = int(sum(float(b.mask.sum()) for b in batches))
        self.model.train()
        with torch.no_grad():
            old = [self._logprobs(self.model, b) for b in batches]
            ref = [self._logprobs(self.reference, b) for b in batches] if self.reference else None
        losses, clips, kls, norms = [], [], [], []
        groups = [range(i, min(i + cfg.grad_accum, len(batches)))
                  for i in range(0, len(batches), cfg.grad_accum)]
        for _ in range(cfg.ppo_epochs):
            for group in groups:  # one optimiser step per `grad_accum` micro-batches
                self.optimizer.zero_grad(set_to_none=True)
                group_tokens = sum(float(batches[j].mask.sum()) for j in group)
                for j in group:
                    b = batches[j]
                    out = policy_loss(
                        self._logprobs(self.model, b), old[j], b.advantages, b.mask,
                        clip_eps=cfg.clip_eps, ref_logprobs=None if ref is None else ref[j],
                        kl_coef=cfg.kl_coef, level=cfg.level,
                    )
                    share = float(b.mask.sum()) / max(group_tokens, 1.0)
                    (out.loss * share).backward()
                    losses.append(out.loss.item() * share)
                    clips.append(out.clip_fraction)
                    kls.append(out.kl)
                norms.append(float(torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), cfg.max_grad_norm)))
                self.optimizer.step()
        self.model.eval()
        stats.update(loss=sum(losses) / (len(groups) * cfg.ppo_epochs),
                     clip_fraction=sum(clips) / len(clips), kl=sum(kls) / len(kls),
                     grad_norm=sum(norms) / len(norms))
        return stats
