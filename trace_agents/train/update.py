"""One policy update from a step's rollout trees: samples → padded token batches → clipped loss.

The old log-probabilities are recomputed with the weights that sampled (before the first
gradient step), not taken from the engine: engines report them under their own numerics and some
report none, and a recomputation keeps the first PPO pass exactly on-policy (ratio 1).

In an asynchronous run some tokens were sampled by an older policy (``Turn.policy_version`` below
the update's ``version``). Their recomputed log-probabilities are then the proximal policy of
decoupled PPO, and each such token's surrogate is weighted by ``π_old/π_behaviour`` from the
engine's own log-probability, truncated at ``stale_weight_cap``; a stale token whose engine
reported no log-probability cannot be corrected and is left out (counted in ``stale_dropped``).
Tokens of the current policy are never reweighted, so a synchronous update is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trace_agents.models import autocast
from trace_agents.rollout import TokenPath, token_path
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


def sample_tensors(sample: Sample, path: TokenPath | None = None) -> tuple[list[int], list[float], list[float]]:
    """Token ids, loss mask and per-token advantages of one sample (``path``: its token path,
    when already computed)."""
    path = path or token_path(sample.leaf)
    mask, adv = [], []
    for trainable, depth in zip(path.loss_mask, path.depth):
        a = sample.advantages.get(depth)
        on = bool(trainable) and a is not None
        mask.append(1.0 if on else 0.0)
        adv.append(a if on else 0.0)
    return path.ids, mask, adv


@dataclass
class Behaviour:
    """What sampled each token of a micro-batch: the engine's log-probability (NaN where it
    reported none) and the policy version (padded like ``Batch.tokens``)."""

    logprobs: torch.Tensor
    version: torch.Tensor


def behaviour_tensors(paths: Sequence[TokenPath], width: int) -> Behaviour:
    logprobs = torch.full((len(paths), width), float("nan"))
    version = torch.zeros((len(paths), width), dtype=torch.long)
    for i, p in enumerate(paths):
        n = len(p.ids)
        logprobs[i, :n] = torch.tensor([float("nan") if x is None else x for x in p.logprobs])
        version[i, :n] = torch.tensor(p.version)
    return Behaviour(logprobs, version)


def stale_weights(old: torch.Tensor, behaviour: Behaviour, mask: torch.Tensor, version: int,
                  cap: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token weights (1 on current tokens, truncated ``π_old/π_behaviour`` on stale ones) and
    the mask without the stale tokens that cannot be corrected, with their counts."""
    stale = (mask > 0) & (behaviour.version < version)
    known = ~torch.isnan(behaviour.logprobs)
    corrected, dropped = stale & known, stale & ~known
    ratio = torch.exp(old - torch.nan_to_num(behaviour.logprobs))
    weights = torch.where(corrected, ratio.clamp(max=cap), torch.ones_like(old))
    kept = mask * ~dropped
    counts = {"stale": float(stale.sum()), "dropped": float(dropped.sum()),
              "capped": float((corrected & (ratio > cap)).sum()),
              "weight_sum": float(weights[corrected].sum()),
              "staleness_max": float((version - behaviour.version)[stale].max()) if stale.any() else 0.0}
    return weights, kept, counts


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

    def update(self, trees: Sequence[RolloutTree], *, version: int = 0) -> dict[str, Any]:
        """One update on the trees' samples by the policy of ``version`` (updates applied so
        far): tokens sampled by an older version get the behaviour correction."""
        cfg = self.config
        samples = [
            s for s in training_samples(trees, mode=cfg.advantage, shared=cfg.shared_tokens)
            if any(a != 0.0 for a in s.advantages.values())
        ]
        stats: dict[str, Any] = {"samples": len(samples), "trained_tokens": 0, "loss": None,
                                 "clip_fraction": None, "kl": None, "grad_norm": None,
                                 "stale_tokens": 0, "stale_dropped": 0, "stale_capped": 0,
                                 "stale_weight_mean": None, "staleness_max": 0}
        if not samples:  # no contrast anywhere: nothing to learn from this step
            return stats
        paths = [token_path(s.leaf) for s in samples]
        rows = [sample_tensors(s, p) for s, p in zip(samples, paths)]
        chunks = [slice(i, i + cfg.micro_batch) for i in range(0, len(rows), cfg.micro_batch)]
        batches = [collate(rows[c], self.pad_id) for c in chunks]
        self.model.train()
        with torch.no_grad():
            old = [self._logprobs(self.model, b) for b in batches]
            ref = [self._logprobs(self.reference, b) for b in batches] if self.reference else None
        weights: list[torch.Tensor | None] = [None] * len(batches)
        if any(v < version for p in paths for v, m in zip(p.version, p.loss_mask) if m):
            weights = self._correct_stale(batches, old, [paths[c] for c in chunks], version, stats)
        stats["trained_tokens"] = int(sum(float(b.mask.sum()) for b in batches))
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
                        kl_coef=cfg.kl_coef, level=cfg.level, weights=weights[j],
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

    def _correct_stale(self, batches: list[Batch], old: list[torch.Tensor], paths: list[list[TokenPath]],
                       version: int, stats: dict[str, Any]) -> list[torch.Tensor | None]:
        """Weights of each micro-batch's stale tokens (masking the uncorrectable ones in place);
        ``paths``: each micro-batch's token paths."""
        weights: list[torch.Tensor | None] = []
        total = {"stale": 0.0, "dropped": 0.0, "capped": 0.0, "weight_sum": 0.0, "staleness_max": 0.0}
        for b, o, batch_paths in zip(batches, old, paths):
            behaviour = behaviour_tensors(batch_paths, b.tokens.shape[1])
            w, b.mask, counts = stale_weights(o, behaviour, b.mask, version, self.config.stale_weight_cap)
            weights.append(w)
            for key, value in counts.items():
                total[key] = max(total[key], value) if key == "staleness_max" else total[key] + value
        corrected = total["stale"] - total["dropped"]
        stats.update(stale_tokens=int(total["stale"]), stale_dropped=int(total["dropped"]),
                     stale_capped=int(total["capped"]), staleness_max=int(total["staleness_max"]),
                     stale_weight_mean=total["weight_sum"] / corrected if corrected else None)
        return weights
