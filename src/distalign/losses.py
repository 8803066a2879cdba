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


# --- Level 2: distributional reward models ------------------------------------------------
#
# A head gives log-probabilities log p (B, n) over scores 1..n (categorical: log_softmax of n
# logits; ordinal: a discretised logistic, ``distalign.models.heads``). Everything below works
# on log p and stays in log space: with both distributions on one bin, P(R_w > R_l) is ~e^-100
# for logits of ±50, which is 0 in fp32 if computed from raw probabilities.


def log_cdf_before(logp: torch.Tensor) -> torch.Tensor:
    """log P(R < i) for i = 1..n, i.e. log CDF(i − 1): (B, n), first column −inf."""
    cdf = torch.logcumsumexp(logp, dim=-1)  # log P(R ≤ i)
    return torch.cat([torch.full_like(cdf[..., :1], float("-inf")), cdf[..., :-1]], dim=-1)


def log_prob_greater(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """log P(R_w > R_l) = log Σ_i p_w(i) · CDF_l(i − 1), R_w ~ p_w, R_l ~ p_l independent.

    Args:
        logp_w, logp_l: (B, n) log-probabilities.
    Returns:
        (B,) log-probabilities (finite unless p_l puts exactly zero mass below p_w's support).
    """
    return torch.logsumexp(logp_w + log_cdf_before(logp_l), dim=-1)


def log_prob_tie(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """log P(R_w = R_l) = log Σ_i p_w(i) p_l(i), (B,)."""
    return torch.logsumexp(logp_w + logp_l, dim=-1)


def distributional_preference_loss(
    logp_w: torch.Tensor, logp_l: torch.Tensor, ties: str = "strict"
) -> torch.Tensor:
    """Per-pair −log P(R_w > R_l) (``strict``) or −log(P(R_w > R_l) + ½ P(R_w = R_l))
    (``half``, ties-aware), (B,). Inputs (B, n) log-probabilities."""
    greater = log_prob_greater(logp_w, logp_l)
    if ties == "strict":
        return -greater
    if ties == "half":
        half_tie = log_prob_tie(logp_w, logp_l) - torch.log(torch.tensor(2.0, dtype=logp_w.dtype))
        return -torch.logaddexp(greater, half_tie)
    raise ValueError(f"ties must be 'strict' or 'half', got {ties!r}")


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p over the last dim, (B,). Zero-mass bins contribute 0 (no NaN)."""
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def entropy_bonus(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """Per-pair −(H(p_w) + H(p_l)), (B,). Add λ times it to the loss to *raise* entropy.

    Adding λ·Σ p log p = −λ·H instead would give the loss L + λ·(H_w + H_l), whose minimum
    has *lower* entropy; the bonus that spreads each distribution is L − λ·(H_w + H_l).
    """
    return -(entropy(logp_w) + entropy(logp_l))


def batch_entropy_bonus(logp_w: torch.Tensor, logp_l: torch.Tensor) -> torch.Tensor:
    """−H(p̄), p̄ the mean distribution over the batch's chosen and rejected replies (scalar).

    DPL-style (Siththaranjan et al. 2023, "Distributional Preference Learning"): spreads mass
    across the batch without flattening each reply's distribution.
    """
    logp = torch.cat([logp_w, logp_l])  # (2B, n)
    mean_logp = torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(logp.shape[0])))
    return -entropy(mean_logp[None])[0]


def smoothness_penalty(logp: torch.Tensor) -> torch.Tensor:
    """Σ_i (p(i+1) − p(i))² per row, (B,): large for jagged, multi-peaked distributions."""
    p = logp.exp()
    return ((p[..., 1:] - p[..., :-1]) ** 2).sum(-1)


def rating_nll(logp: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """−log p(bin) for known rating bins (B,) (0-based), (B,): the optional pointwise term."""
    return -logp.gather(-1, bins[:, None]).squeeze(-1)


def ratings_to_bins(ratings: torch.Tensor, low: float, high: float, n_bins: int) -> torch.Tensor:
    """Map ratings on [low, high] linearly onto bins 0..n−1 (nearest), (B,) long."""
    frac = ((ratings - low) / (high - low)).clamp(0, 1)
    return torch.round(frac * (n_bins - 1)).long()


def distributional_rm_loss(
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    ties: str = "strict",
    entropy_weight: float = 0.0,
    batch_entropy_weight: float = 0.0,
    smoothness_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Level 2 loss: mean preference loss + λ_H·mean(−H_w − H_l) + λ_DPL·(−H(p̄))
    + λ_S·mean(smoothness). Returns (scalar, detached metrics)."""
    pref = distributional_preference_loss(logp_w, logp_l, ties).mean()
    loss = pref
    if entropy_weight:
        loss = loss + entropy_weight * entropy_bonus(logp_w, logp_l).mean()
    if batch_entropy_weight:
        loss = loss + batch_entropy_weight * batch_entropy_bonus(logp_w, logp_l)
    if smoothness_weight:
        smooth = smoothness_penalty(torch.cat([logp_w, logp_l])).mean()
        loss = loss + smoothness_weight * smooth
    with torch.no_grad():
        greater = log_prob_greater(logp_w, logp_l).exp()
        less = log_prob_greater(logp_l, logp_w).exp()
        metrics = {
            "pref_loss": pref.detach(),
            "accuracy": (greater > less).float().mean(),
            "entropy": entropy(torch.cat([logp_w, logp_l])).mean(),
        }
    return loss, metrics


# --- REINFORCE / RLOO -------------------------------------------------------------------------
#
# Sequence-level REINFORCE (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740): the
# whole reply is one action. Shapes: B replies, T reply tokens; ``mask`` (B, T) is 1 on real
# reply tokens (padding and anything after EOS are 0).


def sequence_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t values·mask per row, (B, T) -> (B,)."""
    return (values * mask).sum(-1)


def kl_estimates(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-reply KL(π‖π_ref) estimates from tokens sampled from π, (B,) each.

    ``k1``: Σ_t (log π − log π_ref), unbiased, can be negative per sample;
    ``k3``: Σ_t (e^{Δ} − 1 − Δ) with Δ = log π_ref − log π, unbiased and ≥ 0 (Schulman 2020,
    "Approximating KL divergence").
    """
    delta = ref_logprobs - logprobs  # (B, T)
    return {
        "k1": sequence_sum(-delta, mask),
        "k3": sequence_sum(torch.expm1(delta) - delta, mask),
    }


def kl_shaped_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """R_i = r_i − β · Σ_t (log π(y_t) − log π_ref(y_t)), (B,). rewards (B,), the rest (B, T)."""
    return rewards - beta * sequence_sum(logprobs - ref_logprobs, mask)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages A_i = R_i − (1/(k−1)) Σ_{j≠i} R_j within each prompt's k samples.

    ``rewards`` (B,) is prompt-major (k consecutive samples per prompt), B = P·k, k ≥ 2.
    Equivalent closed form: A_i = k/(k−1) · (R_i − mean_j R_j). Returns (B,).
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    grouped = rewards.view(-1, k)  # (P, k)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others).view(-1)


def moving_average_update(
    mean: float, count: int, rewards: torch.Tensor, ema: float | None = None
) -> tuple[float, int]:
    """The next moving-average baseline after seeing ``rewards`` (B,).

    ``ema=None``: the mean of all rewards seen so far (the original task's baseline);
    ``ema=α``: b ← α·b + (1 − α)·mean(rewards) (the first batch sets b to its mean).
    Returns (new mean, new count). Advantages use the baseline from *before* the update.
    """
    n = rewards.numel()
    batch_mean = rewards.double().mean().item()
    if count == 0:
        return batch_mean, n
    if ema is None:
        return (mean * count + batch_mean * n) / (count + n), count + n
    return ema * mean + (1 - ema) * batch_mean, count + n


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over all elements (advantage normalisation). Constant x -> zeros."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)


def reinforce_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """−mean_i A_i · Σ_t log π(y_{i,t} | x, y_{i,<t}); advantages are detached.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        mask: (B, T) reply-token mask.
        advantages: (B,).
    Returns a scalar: the mean over the B replies of this (micro-)batch.
    """
    return -(advantages.detach() * sequence_sum(logprobs, mask)).mean()
