"""Losses as pure tensor functions (torch only: no config, model or accelerator).

Reward models:
    bradley_terry_loss     −log σ(r_w − r_l − m)                (Bradley & Terry 1952)
    centering_penalty      γ · (r_w + r_l)²                      (reward centering)
    reward_model_loss      the two together, with the metrics a trainer logs

Each returns per-pair values of shape (B,) unless it says otherwise; the caller reduces
(mean over pairs), so micro-batches of different sizes combine correctly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Per-pair Bradley–Terry loss −log σ(r_w − r_l − margin).

    Args:
        chosen: rewards r_w of the preferred replies, (B,).
        rejected: rewards r_l, (B,).
        margin: optional required gap m ≥ 0, (B,) or scalar (e.g. from rating differences,
            as in Llama 2's reward models). 0 gives the plain Bradley–Terry loss.

    Returns:
        (B,) losses. Uses ``-logsigmoid``, stable for any gap (no log(0) for large |r_w − r_l|).
    """
    return -F.logsigmoid(chosen - rejected - margin)


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair (r_w + r_l)², (B,). Bradley–Terry only sees differences, so rewards can drift
    together; this term (times γ) keeps them near zero (Eisenstein et al. 2023, "Helping or
    Herding?" reward centering)."""
    return (chosen + rejected) ** 2


def reward_model_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    gamma: float = 0.01,
    margin: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Level 1 loss  L = mean[−log σ(r_w − r_l − m)] + γ · mean[(r_w + r_l)²].

    Args:
        chosen, rejected: (B,) rewards.
        gamma: centering weight γ ≥ 0 (0.01 by default).
        margin: (B,) or scalar margin m.

    Returns:
        (scalar loss, detached metrics: bt loss, accuracy, mean margin r_w − r_l, mean reward).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    bt = bradley_terry_loss(chosen, rejected, margin).mean()
    loss = bt + gamma * centering_penalty(chosen, rejected).mean() if gamma else bt
    with torch.no_grad():
        metrics = {
            "bt_loss": bt.detach(),
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "reward_mean": torch.cat([chosen, rejected]).mean(),
        }
    return loss, metrics
