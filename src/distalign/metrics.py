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


def _win_ece(greater: torch.Tensor, less: torch.Tensor) -> float:
    """ECE of P(chosen wins | no tie) = P(>) / (P(>) + P(<)), symmetrised."""
    p = (greater / (greater + less).clamp(min=1e-30)).double()
    prob = torch.cat([p, 1 - p])
    return expected_calibration_error(prob, torch.cat([torch.ones_like(p), torch.zeros_like(p)]))


def is_unimodal(p: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Whether each row of p (B, n) rises then falls (one peak, plateaus allowed), (B,) bool.

    Differences smaller than ``tol`` count as flat, so numerical noise is not a second peak.
    """
    d = p[..., 1:] - p[..., :-1]  # (B, n − 1)
    sign = torch.where(d > tol, 1, torch.where(d < -tol, -1, 0))
    # after the first fall, no rise may follow
    fallen = torch.cummax((sign == -1).int(), dim=-1).values.bool()
    return ~((sign == 1) & fallen).any(-1)


def distribution_summary(
    logp_w: torch.Tensor, logp_l: torch.Tensor, values: torch.Tensor | None = None
) -> dict[str, float]:
    """Metrics of a distributional reward model on pairs: accuracy by P(R_w > R_l) vs
    P(R_l > R_w) and by expectation, mean entropy, unimodal share, mean std."""
    from distalign.functionals import expectation, std
    from distalign.losses import entropy, log_prob_greater

    p_w, p_l = logp_w.exp(), logp_l.exp()
    greater = log_prob_greater(logp_w, logp_l).exp()
    less = log_prob_greater(logp_l, logp_w).exp()
    both = torch.cat([p_w, p_l])
    e_w, e_l = expectation(p_w, values), expectation(p_l, values)
    out = {
        "accuracy": pairwise_accuracy(greater, less),
        "accuracy_expectation": pairwise_accuracy(e_w, e_l),
        "p_greater_mean": greater.mean().item(),
        "entropy": entropy(torch.cat([logp_w, logp_l])).mean().item(),
        "unimodal_share": is_unimodal(both).float().mean().item(),
        "std_mean": std(both, values).mean().item(),
        "ece": preference_ece(
            torch.log(greater / less.clamp(min=1e-12)), torch.zeros_like(greater)
        ),
        "pairs": int(p_w.shape[0]),
    }
    return out
