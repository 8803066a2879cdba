"""Evaluation metrics as pure functions (torch only)."""

from __future__ import annotations

import torch


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs with r_w > r_l; ties count half. chosen, rejected: (N,)."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return wins.mean().item()


def expected_calibration_error(
    prob: torch.Tensor, outcome: torch.Tensor, n_bins: int = 10
) -> float:
    """ECE of predicted probabilities against 0/1 outcomes (Guo et al. 2017).

    ECE = Σ_b (n_b / N) · |mean outcome in b − mean prob in b| over ``n_bins`` equal-width
    bins of ``prob``. For a reward model, prob = σ(r_w − r_l) and outcome = 1 when evaluated
    on (chosen, rejected) pairs; we symmetrise by also scoring each pair in the swapped order
    (prob 1 − p, outcome 0), so a model that is right 70% of the time when it says 0.7 has
    zero error regardless of which side is listed first.

    Args:
        prob: (N,) predicted probabilities in [0, 1].
        outcome: (N,) observed outcomes in {0, 1}.
    """
    if prob.numel() == 0:
        return float("nan")
    prob = prob.double()
    outcome = outcome.double()
    bins = torch.clamp((prob * n_bins).long(), max=n_bins - 1)  # (N,)
    total = torch.zeros(n_bins, dtype=torch.float64)
    gap = total.index_add(0, bins, outcome) - total.index_add(0, bins, prob)
    return (gap.abs().sum() / prob.numel()).item()


def preference_ece(chosen: torch.Tensor, rejected: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of σ(r_w − r_l) as the probability that the chosen reply wins (symmetrised)."""
    p = torch.sigmoid((chosen - rejected).double())
    prob = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    return expected_calibration_error(prob, outcome, n_bins)


def reward_summary(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy, mean margin, reward mean/std, ECE of a scalar reward model."""
    both = torch.cat([chosen, rejected]).double()
    return {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "margin": (chosen - rejected).double().mean().item() if chosen.numel() else float("nan"),
        "reward_mean": both.mean().item() if both.numel() else float("nan"),
        "reward_std": both.std().item() if both.numel() > 1 else float("nan"),
        "ece": preference_ece(chosen, rejected),
        "pairs": int(chosen.numel()),
    }
