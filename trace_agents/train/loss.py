"""The clipped policy-gradient objective (GRPO/PPO style) over masked token sequences.

Inputs are padded ``[batch, time]`` tensors: new and old log-probabilities of the sampled tokens,
one advantage per token (zero where untrained), and a 0/1 mask of the tokens to train (the
model's own action tokens that the sample owns; prompt and observation tokens are 0).
``level="token"`` averages over all trained tokens of the batch (DAPO); ``"sequence"`` averages
within each sequence first, then over sequences (original GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Level = Literal["token", "sequence"]


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    clip_fraction: float
    kl: float
    """Mean estimated KL to the reference over trained tokens (0 without a reference)."""


def _reduce(values: torch.Tensor, mask: torch.Tensor, level: Level) -> torch.Tensor:
    if level == "token":
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    if level == "sequence":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        has_tokens = (mask.sum(-1) > 0).float()
        return (per_sequence * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)
    raise ValueError(f"level must be 'token' or 'sequence', not {level!r}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    level: Level = "token",
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """PPO-clip surrogate, negated for minimisation, plus ``kl_coef`` × the k3 KL estimator.

    ``weights`` multiply each token's surrogate: the behaviour correction of tokens sampled by an
    older policy (decoupled PPO: ``old_logprobs`` is then the proximal policy, the weights
    ``π_old/π_behaviour``, truncated)."""
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    if weights is not None:
        surrogate = surrogate * weights
    loss = -_reduce(surrogate, mask, level)
    kl_value = 0.0
    if ref_logprobs is not None and kl_coef > 0:
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1.0  # k3: unbiased, always >= 0
        kl_term = _reduce(kl, mask, level)
        loss = loss + kl_coef * kl_term
        kl_value = float(kl_term.detach())
    with torch.no_grad():
        was_clipped = ((ratio - clipped).abs() > 1e-8).to(mask.dtype)
        clip_fraction = float((was_clipped * mask).sum() / mask.sum().clamp_min(1.0))
    return LossOutput(loss, clip_fraction, kl_value)


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., targets]`` over the last dimension, as gather - logsumexp: no
    second vocabulary-sized tensor is kept for the backward pass (a 49k vocabulary makes that
    1.1 GB for 8 rows of 700 tokens)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``out[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1])``.

    Returns ``[batch, time]`` aligned with ``tokens`` (position 0 is 0: nothing predicts it).
    """
    return torch.nn.functional.pad(picked_logprobs(logits[:, :-1], tokens[:, 1:]), (1, 0))
