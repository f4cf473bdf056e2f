import torch
import pytest

from trace_agents.train.loss import policy_loss, sequence_logprobs


def test_on_policy_loss_is_minus_mean_advantage():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.1]]))
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = policy_loss(lp, lp, adv, mask)
    assert out.loss.item() == pytest.approx(-(1.0 - 2.0) / 2)
    assert out.clip_fraction == 0.0 and out.kl == 0.0


def test_clipping_stops_gradient_beyond_the_trust_region():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.5, -0.5]], requires_grad=True)  # ratios e^0.5 > 1.2, e^-0.5 < 0.8
    out = policy_loss(new, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    out.loss.backward()
    assert torch.all(new.grad == 0) and out.clip_fraction == 1.0
    new2 = torch.tensor([[0.5, -0.5]], requires_grad=True)  # advantages of the other sign: unclipped
    policy_loss(new2, old, torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2)).loss.backward()
    assert torch.all(new2.grad != 0)


def test_sequence_level_weights_sequences_equally():
    lp = torch.zeros(2, 4)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert policy_loss(lp, lp, adv, mask, level="token").loss.item() == pytest.approx(-3 / 5)
    assert policy_loss(lp, lp, adv, mask, level="sequence").loss.item() == pytest.approx(0.0)


def test_kl_penalty_is_zero_at_the_reference_and_positive_away():
    lp = torch.log(torch.tensor([[0.5, 0.5]]))
    zero = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    assert policy_loss(lp, lp, zero, mask, ref_logprobs=lp, kl_coef=1.0).kl == pytest.approx(0.0)
    out = policy_loss(lp, lp, zero, mask, ref_logprobs=lp - 0.3, kl_coef=0.5)
    assert out.kl > 0 and out.loss.item() == pytest.approx(0.5 * out.kl)


def test_empty_mask_gives_zero_loss():
    lp = torch.zeros(1, 3)
    assert policy_loss(lp, lp, torch.ones(1, 3), torch.zeros(1, 3)).loss.item() == 0.0


def test_sequence_logprobs_matches_manual_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5))
    out = sequence_logprobs(logits, tokens)
    assert out.shape == (2, 5) and torch.all(out[:, 0] == 0)
    manual = torch.log_softmax(logits[1, 2], -1)[tokens[1, 3]]
    assert out[1, 3].item() == pytest.approx(manual.item(), abs=1e-6)
