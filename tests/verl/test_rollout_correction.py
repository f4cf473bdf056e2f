"""verl's rollout correction (``algorithm.rollout_correction``) inside TRACE's advantage step
(`trace_agents.verl.trainer.rollout_correction`): verl's own arithmetic, on the tokens TRACE
trains. A continuation's row holds the prefix it inherited, masked out of its training; those
tokens must not enter its sequence-level weight or its rejection."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from trace_agents.verl.trainer import rollout_correction

nested = lambda rows, dtype=torch.float32: torch.nested.as_nested_tensor(  # noqa: E731
    [torch.tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)

# a root (trains all 3 tokens) and a continuation of it (inherits 2 tokens, trains its own 2); the
# inherited tokens were sampled long ago: their log-ratio is huge
TRAINED = nested([[1, 1, 1], [0, 0, 1, 1]], torch.int64)
ROLLOUT = nested([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
OLD = nested([[-0.9, -1.2, -1.0], [4.0, 4.0, -0.9, -0.8]])  # log-ratios: .1 -.2 0 | 5 5 .1 .2


def correct(**options):
    return rollout_correction(OmegaConf.create(options), TRAINED, OLD, ROLLOUT)


def test_token_weights_are_the_truncated_ratios_of_the_trained_tokens():
    fields, figures = correct(rollout_is="token", rollout_is_threshold=2.0)
    weights = [w.tolist() for w in fields["rollout_is_weights"]]
    assert [len(w) for w in weights] == [3, 4]
    for got, want in zip(weights[0] + weights[1][2:], [0.1, -0.2, 0.0, 0.1, 0.2]):
        assert got == pytest.approx(math.exp(want), rel=1e-5)
    assert [m.tolist() for m in fields["response_mask"]] == [[1, 1, 1], [0, 0, 1, 1]]  # nothing rejected
    assert all(k.startswith("rollout_corr/") for k in figures)


def test_a_continuations_sequence_weight_reads_only_its_own_tokens():
    fields, _ = correct(rollout_is="sequence", rollout_is_threshold=2.0)
    root, continuation = fields["rollout_is_weights"]
    assert root[0].item() == pytest.approx(math.exp(0.1 - 0.2 + 0.0), rel=1e-5)
    # exp(0.3), not exp(10.3) truncated at 2: the inherited prefix is its parent's to correct
    assert continuation[-1].item() == pytest.approx(math.exp(0.3), rel=1e-5)


def test_rejection_narrows_the_trained_masks_and_spares_the_inherited_prefix():
    fields, _ = correct(rollout_rs="seq_max_k2", rollout_rs_threshold=1.0)
    # k2 = ratio**2 / 2 is at most 0.02 on the trained tokens, 12.5 on the inherited: nothing goes
    assert [m.tolist() for m in fields["response_mask"]] == [[1, 1, 1], [0, 0, 1, 1]]
    assert "rollout_is_weights" not in fields
    fields, _ = correct(rollout_rs="token_k1", rollout_rs_threshold="0.9_1.05")
    # verl's k1 is -log(old/rollout), kept inside [log 0.9, log 1.05]: log-ratios within
    # [-0.049, 0.105] stay, so .1 and 0 stay, -.2 and .2 go (the inherited 5s were never trained)
    assert [m.tolist() for m in fields["response_mask"]] == [[1, 0, 1], [0, 0, 1, 0]]
    assert fields["loss_mask"] is fields["response_mask"]
