"""Losses as pure tensor functions (torch only: no config, model or accelerator).

Reward models:
    bradley_terry_loss     −log σ(r_w − r_l − m)                (Bradley & Terry 1952)
    centering_penalty      γ · (r_w + r_l)²                      (reward centering)
    reward_model_loss      the two together, with the metrics a trainer logs
    mixture_rm_loss        −log Σ_k π_k σ(r_k(w) − r_k(l)): K Bradley–Terry components

Each returns per-pair values of shape (B,) unless it says otherwise; the caller reduces
(mean over pairs), so micro-batches of different sizes combine correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def wins_ties_half(margin: torch.Tensor) -> torch.Tensor:
    """The share of pairs whose margin is positive, a tie counting half, as
    ``distalign.metrics.pairwise_accuracy`` scores held-out pairs (so a zero-initialised head
    logs 0.5 in training too)."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()


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
            "accuracy": wins_ties_half(chosen - rejected),
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
            "accuracy": wins_ties_half(greater - less),
            "entropy": entropy(torch.cat([logp_w, logp_l])).mean(),
        }
    return loss, metrics


# A mixture head gives K component rewards per reply (B, K), equal shares; the components
# share the annotator: one latent type judges both replies of a pair (``models.heads``).


def mixture_preference_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, shares: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair −log Σ_k π_k σ(r_k(w) − r_k(l)), (B,), from component rewards (B, K) and
    shares π (K,) (equal when None). With K = 1 it is the Bradley–Terry loss."""
    k = chosen.shape[-1]
    log_pi = (
        torch.full((k,), -math.log(k), device=chosen.device, dtype=chosen.dtype)
        if shares is None
        else shares.to(chosen).log()
    )
    return -torch.logsumexp(log_pi + F.logsigmoid(chosen - rejected), -1)


def mixture_rm_loss(
    chosen: torch.Tensor, rejected: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = mean[−log Σ_k π_k σ(r_k(w) − r_k(l))], equal shares. No centering term: pulling
    each pair's r_w + r_l to 0 per component also pulls the components together (on frozen
    features it cut their spread's agreement with disagreement from 0.41 to 0.28). Returns
    (scalar, detached metrics: the mixture loss, accuracy by P(w ≻ l) > ½, the mean margin
    and the mean std of the components' margins)."""
    loss = mixture_preference_loss(chosen, rejected).mean()
    with torch.no_grad():
        margins = chosen - rejected  # (B, K)
        metrics = {
            "mixture_loss": loss.detach(),
            "accuracy": wins_ties_half(torch.sigmoid(margins).mean(-1) - 0.5),
            "margin": margins.mean(),
            "component_spread": margins.std(-1, unbiased=False).mean(),
        }
    return loss, metrics


# --- REINFORCE / RLOO -------------------------------------------------------------------------
#
# Sequence-level REINFORCE (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740): the
# whole reply is one action. Shapes: B replies, T reply tokens; ``mask`` (B, T) is 1 on real
# reply tokens (padding and anything after EOS are 0).
#
# Advantage estimators, each (B,) rewards -> (B,) advantages, B = P·k prompt-major (the k
# samples of a prompt are consecutive):
#     rloo_advantages             R_i − mean_{j≠i} R_j                  (Ahmadian et al. 2024)
#     moving_average_advantages   R_i − b, b a moving average of past rewards
#     grpo_advantages             (r_i − mean_g) / (std_g + ε), then − β·KL (Shao et al. 2024)
#     dr_grpo_advantages          R_i − mean_g                          (Liu et al. 2025)
#     reinforce_pp_advantages     whiten over the batch (R_i [− mean_g])  (Hu 2025)
#     remax_advantages            R_i − r(x, greedy reply)              (Li et al. 2023)
# Statistics are taken in float64: a constant group's fp32 mean is off by an ulp, and dividing
# that ulp by a std of the same size (plus a small ε) would make an O(1) advantage out of it.


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


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    old_logprobs: torch.Tensor | None = None,
    level: str = "token",
) -> torch.Tensor:
    """The KL penalty as a loss term instead of in the reward (TRL GRPO's; OpenRLHF's and
    verl's ``use_kl_loss`` with k3, "low_var_kl"):

        (1/B) Σ_i w_i Σ_t ρ_it (e^{Δ_it} − 1 − Δ_it),   Δ_it = log π_ref(y_it) − log π(y_it),

    with the gradient through log π; ``weights`` (B,) are β times each reply's ``loss_type``
    factor, so its tokens are weighted as the policy loss weights them. Its value estimates
    KL(π‖π_ref) without bias (k3).

    ``old_logprobs`` (B, T), the sampling policy's (TRL GRPO's ``use_bias_correction_kl``, its
    default): ρ_it = π(y_it)/π_old(y_it), differentiable, 1 in value at the first update; each
    token's expected gradient is then that of the reverse KL(π‖π_ref), the quantity the value
    estimates. At ``level`` ``sequence`` (GSPO) ρ is each reply's geometric mean over its
    tokens, as TRL broadcasts it; otherwise each token's own (|log ρ| bounded at
    ``LOG_RATIO_BOUND``). None: ρ = 1, and the expected gradient at a sampled token,
    β(1 − π_ref/π)∇log π, is −β Σ_y π_ref(y)∇log π(y): the forward KL(π_ref‖π)'s.
    logprobs (with grad), ref_logprobs, mask: (B, T)."""
    delta = ref_logprobs.detach() - logprobs
    k3 = torch.expm1(delta) - delta
    if old_logprobs is not None:
        log_ratio = (logprobs - old_logprobs.detach()) * mask
        if level == "sequence":
            log_ratio = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1))[:, None]
        k3 = k3 * torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    return (weights.detach() * sequence_sum(k3, mask)).mean()


def kl_shaped_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """R_i = r_i − β · Σ_t (log π(y_t) − log π_ref(y_t)), (B,). rewards (B,), the rest (B, T)."""
    return rewards - beta * sequence_sum(logprobs - ref_logprobs, mask)


def _groups(rewards: torch.Tensor, k: int, name: str, min_k: int = 2) -> torch.Tensor:
    """(B,) prompt-major rewards -> (P, k) float64, after checking that they split."""
    if k < min_k:
        raise ValueError(f"{name} needs k >= {min_k} samples per prompt, got {k}")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    return rewards.double().view(-1, k)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages A_i = R_i − (1/(k−1)) Σ_{j≠i} R_j within each prompt's k samples.

    ``rewards`` (B,) is prompt-major (k consecutive samples per prompt), B = P·k, k ≥ 2.
    Equivalent closed form: A_i = k/(k−1) · (R_i − mean_j R_j). Returns (B,).
    """
    grouped = _groups(rewards, k, "RLOO")  # (P, k)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others).view(-1).to(rewards.dtype)


def dr_grpo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Dr. GRPO: A_i = R_i − mean_g R, the mean over the k samples of i's prompt, (B,) -> (B,).

    GRPO without the division by the group's std (Liu et al. 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective", arXiv 2503.20783): that division weights prompts whose
    rewards barely differ (too easy or too hard) up. Equals (k−1)/k times RLOO's advantage. Dr.
    GRPO also drops the 1/|y| length normalisation of the loss, which ``reinforce_loss`` never
    had (it sums log-probs over the reply). k ≥ 2 (one sample is its own mean: A = 0).
    """
    grouped = _groups(rewards, k, "Dr. GRPO")  # (P, k)
    return (grouped - grouped.mean(-1, keepdim=True)).view(-1).to(rewards.dtype)


def grpo_advantages(
    rewards: torch.Tensor, k: int, eps: float = 1e-4, penalty: torch.Tensor | None = None
) -> torch.Tensor:
    """GRPO: A_i = (r_i − mean_g r) / (std_g r + ε) over the k samples of i's prompt, (B,) -> (B,).

    Shao et al. 2024 ("DeepSeekMath", arXiv 2402.03300), outcome supervision; std_g is the
    sample std (Bessel-corrected, as in TRL and OpenRLHF), so k ≥ 2. A group with equal rewards
    gets zeros (0 / ε), never NaN.

    ``penalty`` (B,): each reply's KL penalty β·KL, when it is taken as a cost. It is centred
    within the group and subtracted *after* the division, −(p_i − mean_g p), so its weight is
    β's whatever the rewards' spread. Divided by std_g r with the rewards, it would be scaled
    up to unit size in a group whose rewards barely differ, and a group whose rewards tie would
    be pushed by KL noise as hard as an informative one by its rewards. GRPO keeps its KL term
    out of the advantage (in the loss) for the same reason.
    """
    grouped = _groups(rewards, k, "GRPO")  # (P, k)
    centred = grouped - grouped.mean(-1, keepdim=True)
    adv = centred / (grouped.std(-1, keepdim=True) + eps)
    return _less_centred_cost(adv, penalty, k).view(-1).to(rewards.dtype)


def grpo_batch_advantages(
    rewards: torch.Tensor,
    k: int,
    eps: float = 1e-4,
    penalty: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPO with the batch's spread: A_i = (r_i − mean_g r) / (std_batch r + ε), (B,) -> (B,).

    The group's mean out, as ``grpo_advantages``, but divided by the std of every reward in
    the step's batch (Bessel-corrected, + 1e-4: TRL GRPO's ``scale_rewards="batch"``; the
    "group mean, batch std" of Liu et al. 2025, "Part I: Tricks or Traps? A Deep Dive into RL
    for LLM Reasoning", arXiv 2508.08221). Every prompt's advantages keep their relative
    size, so a group whose rewards barely differ is not scaled up as GRPO's group std scales
    it. ``pooled``: every process's rewards (the batch; default ``rewards``); NaN entries (no
    reward source scored the reply) are left out of its std. ``penalty``: as in
    ``grpo_advantages``, centred in the group and subtracted after the division. A batch
    whose rewards all tie gets zeros.
    """
    grouped = _groups(rewards, k, "GRPO")  # (P, k)
    batch = (rewards if pooled is None else pooled.to(rewards.device)).double()
    batch = batch[~batch.isnan()]
    spread = batch.std() if batch.numel() >= 2 else batch.new_zeros(())
    adv = (grouped - grouped.mean(-1, keepdim=True)) / (spread + eps)
    return _less_centred_cost(adv, penalty, k).view(-1).to(rewards.dtype)


def _less_centred_cost(adv: torch.Tensor, penalty: torch.Tensor | None, k: int) -> torch.Tensor:
    """(P, k) advantages minus each reply's penalty centred within its group."""
    if penalty is None:
        return adv
    cost = _groups(penalty, k, "GRPO")
    return adv - (cost - cost.mean(-1, keepdim=True))


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    k: int | None = None,
    pooled: torch.Tensor | None = None,
    eps: float = 1e-8,
    lengths: torch.Tensor | None = None,
    pooled_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """REINFORCE++: rewards whitened over the global batch's tokens, (B,) -> (B,).

    Hu 2025 ("REINFORCE++", arXiv 2501.03262), as OpenRLHF computes it: each reply's tokens
    carry its advantage, and the whitening is over every token of the batch: with ``lengths``
    (B,) the replies' token counts, m = Σ_i n_i R_i / Σ_i n_i, v = Σ_i n_i (R_i − m)² / Σ_i n_i
    (the tokens' population variance) and A = (R − m) / √max(v, ε); without them, every reply
    counts once. With ``k`` (REINFORCE++-baseline, k ≥ 2), each prompt's group mean is
    subtracted first: R'_i = R_i − mean_g R. "Global": with ``pooled``, the (P'·k,) rewards of
    every process, prompt-major (and ``pooled_lengths``, their token counts), the statistics
    are those of the pooled rewards (``rewards`` is one process's share of them), so every
    process scales alike. A constant batch gets zeros.

    OpenRLHF subtracts each token's KL penalty summed over the rest of its reply (returns to
    go); with β in the reward here, every token of a reply takes the whole reply's penalty: the
    same expected gradient (a token's earlier penalties do not depend on it), more variance.
    """

    def centred(r: torch.Tensor) -> torch.Tensor:
        if k is None:
            return r.double()
        grouped = _groups(r, k, "REINFORCE++-baseline")
        return (grouped - grouped.mean(-1, keepdim=True)).view(-1)

    x = centred(rewards)
    population = x if pooled is None else centred(pooled.to(rewards.device))
    weights = lengths if pooled is None else pooled_lengths
    weights = torch.ones_like(population) if weights is None else weights.to(population)
    if not weights.sum() > 0:  # no tokens at all: every reply counts once
        weights = torch.ones_like(population)
    mean = (weights * population).sum() / weights.sum()
    if population.numel() < 2:  # no spread to divide by
        return (x - mean).to(rewards.dtype)
    var = (weights * (population - mean) ** 2).sum() / weights.sum()
    return ((x - mean) * var.clamp(min=eps).rsqrt()).to(rewards.dtype)


def group_advantages_where_scored(
    estimator: Callable[..., torch.Tensor],
    rewards: torch.Tensor,
    k: int,
    scored: torch.Tensor | None = None,
    **per_reply,
) -> torch.Tensor:
    """A group estimator (``rloo_advantages``, ``grpo_advantages``, ``dr_grpo_advantages``)
    over each prompt's scored replies only, as a group of their own; NaN marks a reply that no
    reward source scored. Such a reply, and one scored alone in its group, gets 0: TRL's RLOO
    leaves unscorable replies out of the leave-one-out baseline and zeroes their advantage.
    ``per_reply``: the estimator's other (B,) inputs (``penalty``), taken for the same replies.
    ``scored`` (B,) bool: which replies were scored (default: the rewards that are not NaN).
    (B,) -> (B,)."""
    out = torch.zeros_like(rewards)
    scored = ~rewards.isnan() if scored is None else scored
    for start in range(0, rewards.numel(), k):
        idx = torch.arange(start, start + k, device=rewards.device)[scored[start : start + k]]
        if len(idx) >= 2:
            extra = {name: v[idx] for name, v in per_reply.items()}
            out[idx] = estimator(rewards[idx], len(idx), **extra)
    return out


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor, k: int) -> torch.Tensor:
    """ReMax: A_i = R_i − r(x, ȳ), ȳ the greedy reply to i's prompt, (B,) -> (B,).

    Li et al. 2023 ("ReMax", arXiv 2310.10505). ``greedy_rewards`` (P,) is the reward of each
    prompt's greedy reply; a function of the prompt alone, so the gradient stays unbiased. Needs
    one extra greedy sample and score per prompt per step; works with k = 1.
    """
    if k < 1 or rewards.numel() != greedy_rewards.numel() * k:
        raise ValueError(
            f"{rewards.numel()} rewards for {greedy_rewards.numel()} greedy rewards and k={k}"
        )
    baseline = greedy_rewards.to(rewards.device).double().repeat_interleave(k)  # (B,)
    return (rewards.double() - baseline).to(rewards.dtype)


def moving_average_advantages(
    rewards: torch.Tensor, mean: float, count: int, pooled: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """A_i = R_i − b with b the moving average of past rewards, (B,) -> ((B,), b).

    b is ``mean`` (from ``moving_average_update``) when it has seen rewards (``count`` > 0);
    with no history (the first step) b is the mean of this step's rewards — of ``pooled``, every
    process's, if given — rather than 0, which would push every reply up on a reward model that
    is not centred. Update the average after this call.
    """
    base = mean if count else (rewards if pooled is None else pooled).double().mean().item()
    return (rewards.double() - base).to(rewards.dtype), base


def moving_average_update(
    mean: float, count: int, rewards: torch.Tensor, ema: float | None = None
) -> tuple[float, int]:
    """The next moving-average baseline after seeing ``rewards`` (B,).

    ``ema=None``: the mean of all rewards seen so far (the original task's baseline);
    ``ema=α``: b ← α·b + (1 − α)·mean(rewards) (the first batch sets b to its mean).
    Returns (new mean, new count). Advantages use the baseline from *before* the update
    (``moving_average_advantages``).
    """
    n = rewards.numel()
    batch_mean = rewards.double().mean().item()
    if count == 0:
        return batch_mean, n
    if ema is None:
        return (mean * count + batch_mean * n) / (count + n), count + n
    return ema * mean + (1 - ema) * batch_mean, count + n


def whiten(
    x: torch.Tensor, eps: float = 1e-8, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """(x − mean) / std over all elements (advantage normalisation), (B,) -> (B,), with the
    statistics of ``reference`` when given (every process's values, of which ``x`` is one's
    share). Constant values -> zeros (statistics in float64, see above). NaN values stay NaN
    and are left out of the statistics."""
    x64 = x.double()
    ref = x64 if reference is None else reference.double()
    ref = ref[~ref.isnan()]  # NaN: a value to leave out of the statistics (and keep NaN)
    if ref.numel() < 2:
        return (x64 - ref.mean()).to(x.dtype)
    return ((x64 - ref.mean()) / (ref.std() + eps)).to(x.dtype)


def uncertainty_scaled(advantages: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A_i / (1 + σ_i), σ_i = Std[R] of reply i under a distributional reward model, (B,).

    A per-sample step size, not risk aversion. The expected update becomes the gradient of
    E[(R − b) / (1 + σ)], b the baseline: below the baseline a larger σ lifts (R − b)/(1 + σ)
    towards 0 (risk-seeking there), and the scaled advantages no longer average to zero, so a
    confidently below-average reply can be pushed *up*. Example: three replies, uniform policy,
    R = (−1, −3, 4), σ = (0, 0, 100), b = mean R = 0: scaled advantages (−1, −3, 0.04) with mean
    −1.32, so the reply at −1 (σ = 0) gains probability; unscaled, it loses it. To prefer replies
    the reward model is sure are good, use a risk-averse functional of the distribution:
    ``mean_minus_std``, ``cvar`` or ``quantile`` (``distalign.functionals``).
    """
    return advantages / (1.0 + std)


def high_entropy_mask(
    entropies: torch.Tensor,
    mask: torch.Tensor,
    quantile: float,
    everyone: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) bool: the reply tokens whose entropy is at least the (1 − ``quantile``) quantile
    of the reply tokens' entropies, so that the policy loss keeps about the top ``quantile`` of
    them (TRL GRPO's ``top_entropy_quantile``; Wang et al. 2025, "Beyond the 80/20 Rule:
    High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning", arXiv 2506.01939, keep
    0.2). ``everyone``: the entropies the quantile is taken over, every process's reply tokens
    (default: this batch's). ``quantile`` 1: every reply token."""
    valid = mask.bool()
    if quantile >= 1:
        return valid
    pool = entropies[valid] if everyone is None else everyone
    if pool.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(pool.detach().float(), 1 - quantile)
    return (entropies.detach() >= threshold.to(entropies.device)) & valid


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


LOSS_TYPES = ("sequence", "grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")

# TRL GRPO's loss types that are another objective than PPO's clipped one for the updates after
# a step's first: the aggregation of their tokens each shares with one of the clipped ones
OBJECTIVE_WEIGHTING = {"cispo": "dapo", "sapo": "grpo", "luspo": "sequence", "vespo": "dapo"}


def loss_type_objective(loss_type: str) -> str:
    """The objective a ``loss_type`` takes on its tokens: ``cispo``, ``sapo`` or ``vespo``
    (their own functions here), else ``clip`` (``clipped_policy_loss``; LUSPO is GSPO's
    clipped objective summed over each reply's tokens, ``sequence``'s weighting)."""
    return loss_type if loss_type in ("cispo", "sapo", "vespo") else "clip"


def loss_type_weights(
    lengths: torch.Tensor,
    loss_type: str,
    max_completion_length: int,
    batch_tokens: float | None = None,
    batch_replies: float | None = None,
) -> torch.Tensor:
    """(B,) factor c_i on each reply's term of the sequence-level loss
    −(1/B) Σ_i c_i A_i Σ_t log π(y_i,t) that gives TRL GRPO's ``loss_type`` normalisations at
    the first update of a step (ratio 1; the later, clipped ones scale each reply's clipped
    term alike, since min(ρcA, clip(ρ)cA) = c·min(ρA, clip(ρ)A) for c > 0):

    ``sequence``  c = 1: Σ_t log π per reply, as REINFORCE and TRL's RLOO (distalign's default)
    ``grpo``      c = 1/|y_i|: each reply's tokens averaged, then replies (GRPO's paper)
    ``dr_grpo``   c = 1/max_completion_length: one constant for every token (Dr. GRPO)
    ``dapo``      c = B/N: every token weighted alike, N the tokens and B the replies of the
                  step's rollouts over all processes (DAPO; ``batch_tokens``/``batch_replies``)
    ``bnpo``      the same over each micro-batch of one process (the caller's counts)

    TRL GRPO's ``cispo`` and ``vespo`` aggregate their tokens as ``dapo``, ``sapo`` as ``grpo``
    and ``luspo`` as ``sequence`` (``OBJECTIVE_WEIGHTING``).

    ``lengths`` (B,) are the replies' token counts (at least 1 is used); ``batch_tokens`` and
    ``batch_replies`` default to this batch's. Folded into the advantages, the factors change
    the step size of long against short replies, not which way each reply is pushed."""
    lengths = lengths.float().clamp(min=1)
    loss_type = OBJECTIVE_WEIGHTING.get(loss_type, loss_type)
    if loss_type == "sequence":
        return torch.ones_like(lengths)
    if loss_type == "grpo":
        return 1.0 / lengths
    if loss_type == "dr_grpo":
        return torch.full_like(lengths, 1.0 / max_completion_length)
    if loss_type in ("dapo", "bnpo"):
        tokens = float(lengths.sum()) if batch_tokens is None else float(batch_tokens)
        replies = len(lengths) if batch_replies is None else float(batch_replies)
        return torch.full_like(lengths, replies / max(tokens, 1.0))
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


LOG_RATIO_BOUND = 20.0  # |log π/π_old| beyond which clipped_policy_loss stops (per ratio)

# whose ratio to the sampling policy the clipped updates take: each reply's (the product of
# its tokens', TRL RLOO's), each token's (TRL GRPO's default), or each reply's per token
# (the geometric mean over its tokens: GSPO, TRL GRPO's "sequence")
IMPORTANCE_SAMPLING_LEVELS = ("reply", "token", "sequence")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    level: str = "reply",
    delta: float | None = None,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective against the policy that sampled the replies, for the
    ``num_iterations`` > 1 updates on one batch of rollouts, with the ratio taken at ``level``:

    ``reply``     −(1/B) Σ_i min(ρ_i A_i, clip(ρ_i) A_i), ρ_i = π(y_i | x) / π_old(y_i | x), one
                  ratio per reply, as TRL's RLOO takes it
    ``token``     −(1/B) Σ_i Σ_t min(ρ_it A_i, clip(ρ_it) A_i), ρ_it the token's own ratio, as
                  TRL's GRPO (its default) and PPO for language models take it
    ``sequence``  −(1/B) Σ_i |y_i| min(s_i A_i, clip(s_i) A_i), s_i = ρ_i^(1/|y_i|), the
                  geometric mean of the tokens' ratios (GSPO, Zheng et al. 2025, arXiv
                  2507.18071; TRL GRPO's "sequence"), counted over the reply's tokens

    clip(ρ) = clamp(ρ, 1 − ε_low, 1 + ε_high). Each form's gradient at ratio 1 (the first
    update) is ``reinforce_loss``'s, so a reply's factor from ``loss_type_weights``, folded
    into its advantage, weighs it alike in all three; later, a ratio that has left the band
    on the side its advantage pushes to gives no gradient, nor does one whose |log ρ| exceeds
    ``LOG_RATIO_BOUND`` (counted as clipped). ``delta`` (TRL GRPO's, INTELLECT-2's two-sided
    clipping): the unclipped term's ratio is capped at delta, so a reply or token with a
    negative advantage whose ratio has grown large cannot give an unbounded step.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        mask: (B, T) reply-token mask.
        old_logprobs: (B, T) the sampling policy's log-probs of the same tokens (detached); for
            ``reply``, (B,) Σ_t log π_old of each reply will do.
        advantages: (B,).
        epsilon_high: upper clip (DAPO's ε_high); None: ``epsilon_low``.
        keep: (B, T) the tokens whose terms the loss keeps (``high_entropy_mask``; None: all),
            as TRL GRPO masks its per-token loss: at ``token``, the kept tokens' terms; at
            ``sequence``, the reply's term counted over its kept tokens (the ratio still over
            all of them). A reply-level ratio has no per-token terms to keep: refused.
    Returns (the scalar loss, (B,) the share of each reply's ratios that were clipped: 0 or 1
    but for ``token``, where it is the share of its tokens).
    """
    if keep is not None and level == "reply":
        raise ValueError("keep: a reply-level ratio has no per-token terms to keep")
    high = epsilon_low if epsilon_high is None else epsilon_high
    log_ratio, ratio, a, weight = _ratios(logprobs, mask, old_logprobs, advantages, level, keep)
    clipped = ratio.clamp(1 - epsilon_low, 1 + high)
    unclipped = ratio if delta is None else ratio.clamp(max=delta)
    term = torch.min(unclipped * a, clipped * a) * weight
    loss = -(term.sum(-1) if level == "token" else term).mean()
    was_clipped = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + high) & (a > 0))
    was_clipped = was_clipped | (log_ratio.detach().abs() > LOG_RATIO_BOUND)
    return loss, _share(was_clipped, mask, level)


def _ratios(logprobs, mask, old_logprobs, advantages, level, keep):
    """(log-ratio, ratio, advantage, weight of each term) at ``level``: per token, (B, T)
    each, the advantage broadcast and the weight the kept tokens; per reply, (B,) each, the
    weight 1 (``reply``) or the count of its kept tokens (``sequence``, whose log-ratio is
    the mean over the reply's tokens)."""
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")
    a, old = advantages.detach(), old_logprobs.detach()
    kept = mask if keep is None else mask * keep.to(mask.dtype)
    if level == "token":
        log_ratio, a, weight = (logprobs - old) * mask, a[:, None], kept
    else:
        before = old if old.dim() == 1 else sequence_sum(old, mask)
        log_ratio, weight = sequence_sum(logprobs, mask) - before, torch.ones_like(a)
        if level == "sequence":  # an empty reply: no tokens, no term (as TRL's mask)
            weight = kept.sum(-1)
            log_ratio = log_ratio / mask.sum(-1).clamp(min=1)
    # A reply's ratio is a product over its tokens: a few hundred tokens that each moved a
    # little overflow float32's exp (log-ratio > 88.7), and inf · A, or the 0 · inf of the
    # branch min() leaves, makes the whole update's gradient NaN. The log-ratio is bounded
    # at ±LOG_RATIO_BOUND (as verl bounds it); a ratio beyond it gives no gradient.
    return log_ratio, torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)), a, weight


def _share(flags: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """(B,) per reply, 0 or 1, or at ``token`` level the share of its tokens flagged."""
    flags = flags.float()
    if level == "token":
        flags = (flags * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return flags.detach()


def off_policy_mask(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv 2512.02556, eq. 9; TRL GRPO's
    ``off_policy_mask_threshold``): (B,) 0 for a reply with a negative advantage whose mean
    per-token log π_old − log π exceeds ``threshold`` (the policy has drifted from the one that
    sampled it, and pushing it further down is where updates go unstable), else 1. An empty
    reply reads a drift of 0."""
    drift = sequence_sum((old_logprobs - logprobs).detach(), mask) / mask.sum(-1).clamp(min=1)
    return ((advantages >= 0) | (drift <= threshold)).to(mask.dtype)


def cispo_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_max: float,
    level: str = "token",
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585; TRL GRPO's ``cispo``): every token keeps its
    gradient, weighted by its ratio to the sampling policy capped at ``epsilon_max`` and
    detached, −(1/B) Σ_i Σ_t sg(min(ρ, ε_max)) A_i log π(y_it): a token far off-policy is
    damped, never dropped as PPO's clip drops it. ρ at ``level``: the token's own, or the
    reply's (``reply``: the product of its tokens'; ``sequence``: their geometric mean), one
    weight for all its tokens. At ratio 1 its gradient is ``reinforce_loss``'s times
    min(1, ε_max): TRL's default ε_max (``epsilon_high`` unset: ``epsilon``, 0.2) scales every
    step by 0.2; ScaleRL (arXiv 2510.13786) takes 5. ``keep`` (B, T): the tokens whose terms
    count (``high_entropy_mask``). Returns (the loss, (B,) the share of each reply's ratios
    above ε_max where its advantage is positive, as TRL's ``cispo_clip_ratio`` counts)."""
    _, ratio, a, _ = _ratios(logprobs, mask, old_logprobs, advantages, level, None)
    capped = _share((ratio > epsilon_max) & (a > 0), mask, level)
    weight = ratio.clamp(max=epsilon_max).detach()
    kept = mask if keep is None else mask * keep.to(mask.dtype)
    if level != "token":
        weight, a = weight[:, None], a[:, None]
    return -(weight * a * logprobs * kept).sum(-1).mean(), capped


def sapo_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    temperature_pos: float = 1.0,
    temperature_neg: float = 1.05,
    level: str = "token",
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAPO (arXiv 2511.20347; TRL GRPO's ``sapo``): PPO's hard clip replaced by a soft gate,
    −(1/B) Σ_i Σ_t (4/τ) σ(τ(ρ − 1)) A_i with τ = ``temperature_pos`` where A_i > 0, else
    ``temperature_neg``. Its gradient, 4 σ'(τ(ρ − 1)) ρ A ∇log π, is REINFORCE's at ρ = 1 and
    vanishes smoothly as ρ moves far from 1, faster for the larger τ, where PPO's clip is all
    or nothing. ρ and the weight of each term at
    ``level`` as in ``clipped_policy_loss`` (``keep`` likewise)."""
    if keep is not None and level == "reply":
        raise ValueError("keep: a reply-level ratio has no per-token terms to keep")
    _, ratio, a, weight = _ratios(logprobs, mask, old_logprobs, advantages, level, keep)
    tau = torch.where(a > 0, temperature_pos, temperature_neg).to(ratio.dtype)
    term = torch.sigmoid(tau * (ratio - 1)) * 4 / tau * a * weight
    return -(term.sum(-1) if level == "token" else term).mean()


VESPO_LOG_W = (math.log(1e-8), LOG_RATIO_BOUND)  # the bounds of VESPO's log reply ratio


def vespo_weights(
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
) -> torch.Tensor:
    """VESPO's weight of each reply (arXiv 2602.10693; TRL GRPO's ``get_gamma_weights``):
    φ(w) = e^λ w^k e^(−λw), 1 at w = 1, of the reply's ratio w = Π_t ρ_t (each token's
    log-ratio bounded at ±20, the sum in [log 1e-8, 20]); (k, λ) = (``k_pos``,
    ``lambda_pos``) where A ≥ 0, else the ``_neg`` pair. (B, T) log-ratios, (B,) weights."""
    bound = LOG_RATIO_BOUND
    log_w = sequence_sum(log_ratio.detach().clamp(-bound, bound), mask).clamp(*VESPO_LOG_W)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg).to(log_w.dtype)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).to(log_w.dtype).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor | None = None,
    **shape: float,
) -> torch.Tensor:
    """VESPO (TRL GRPO's ``vespo``): −(1/B) Σ_i φ(w_i) A_i Σ_t log π(y_it), the reply's
    weight φ (``vespo_weights``, detached; ``shape``: its ``k_pos``, ``lambda_pos``,
    ``k_neg``, ``lambda_neg``) a smooth Gamma-shaped bump in its ratio instead of a clip: 1
    on-policy (REINFORCE's gradient), small for a reply far from the sampling policy on
    either side. The ratio is always the reply's product of its tokens' (TRL's
    ``importance_sampling_level`` does not reach it). ``keep`` as in ``clipped_policy_loss``."""
    a = advantages.detach()
    phi = vespo_weights(logprobs - old_logprobs, mask, a, **shape)
    kept = mask if keep is None else mask * keep.to(mask.dtype)
    return -(phi * a * sequence_sum(logprobs, kept)).mean()
