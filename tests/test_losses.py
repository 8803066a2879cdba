"""Loss functions against hand computations (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from distalign.losses import bradley_terry_loss, centering_penalty, reward_model_loss


def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(2.0))]
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), torch.tensor(expected))
    # margin: −log σ(r_w − r_l − m)
    m = torch.tensor([1.0, 0.0, 0.0])
    assert bradley_terry_loss(chosen, rejected, m)[0].item() == pytest.approx(math.log(2.0))


def test_bradley_terry_is_stable_for_huge_gaps():
    loss = bradley_terry_loss(torch.tensor([-200.0, 200.0]), torch.tensor([200.0, -200.0]))
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(400.0) and loss[1].item() == pytest.approx(0.0, abs=1e-6)


def test_centered_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    loss, metrics = reward_model_loss(chosen, rejected, gamma=0.1)
    bt = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    center = ((3.0**2) + (2.0**2)) / 2
    assert loss.item() == pytest.approx(bt + 0.1 * center, rel=1e-6)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == pytest.approx(0.0)
    torch.testing.assert_close(centering_penalty(chosen, rejected), torch.tensor([9.0, 4.0]))


def test_gradient_of_the_loss():
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([-0.2], requires_grad=True)
    loss, _ = reward_model_loss(chosen, rejected, gamma=0.5)
    loss.backward()
    s = 1 / (1 + math.exp(-0.5))  # σ(r_w − r_l)
    # d/dr_w = −(1 − σ) + 2γ(r_w + r_l), d/dr_l = (1 − σ) + 2γ(r_w + r_l)
    assert chosen.grad.item() == pytest.approx(-(1 - s) + 2 * 0.5 * 0.1, rel=1e-6)
    assert rejected.grad.item() == pytest.approx((1 - s) + 2 * 0.5 * 0.1, rel=1e-6)


def test_negative_gamma_is_refused():
    with pytest.raises(ValueError):
        reward_model_loss(torch.zeros(1), torch.zeros(1), gamma=-1)


def test_training_accuracy_counts_a_tie_half_as_held_out_accuracy_does():
    from distalign.losses import reward_model_loss
    from distalign.metrics import pairwise_accuracy

    chosen, rejected = torch.tensor([1.0, 0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 1.0, 2.0])
    _, metrics = reward_model_loss(chosen, rejected)
    assert metrics["accuracy"].item() == pairwise_accuracy(chosen, rejected) == 0.5
