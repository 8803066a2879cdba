"""Evaluation metrics as pure functions: tensors or arrays in, numbers out.

Reward-model metrics take torch tensors; the comparison's measures (bootstrap interval, win
rate, distinct-n, Bayes ceiling, values at matched KL) take numpy arrays. No config, model or
I/O in here. The measures of disagreement live in ``distalign.disagreement``.
"""

from __future__ import annotations

import numpy as np
import torch

from distalign.losses import (
    bradley_terry_loss,
    distributional_preference_loss,
    entropy,
    log_prob_greater,
    mixture_preference_loss,
)


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs with r_w > r_l; ties count half. chosen, rejected: (N,)."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return wins.mean().item()


def expected_correct(
    chosen: torch.Tensor, rejected: torch.Tensor, p_chosen: np.ndarray
) -> torch.Tensor:
    """Per pair, the probability that the scores' order agrees with the pair's drawn label,
    when its true probability p_i that the chosen reply is preferred is known:
    [r_w > r_l]·p_i + [r_w < r_l]·(1 − p_i) + [r_w = r_l]·½. (N,) float64; its mean is
    ``accuracy_vs_truth``. chosen, rejected: (N,); p_chosen: (N,)."""
    p = torch.as_tensor(np.asarray(p_chosen, dtype=np.float64), device=chosen.device)
    if p.shape != chosen.shape:
        raise ValueError(f"p_chosen has {tuple(p.shape)} values for {tuple(chosen.shape)} pairs")
    return torch.where(chosen > rejected, p, torch.where(chosen < rejected, 1 - p, 0.5))


def accuracy_vs_truth(chosen: torch.Tensor, rejected: torch.Tensor, p_chosen: np.ndarray) -> float:
    """Accuracy against the known truth rather than the drawn labels: its expectation over
    the labels' draws, when each pair's true probability p_i that its chosen reply is
    preferred is known (the gold benchmark's ``p_chosen``):

        (1/N) Σ_i [r_w > r_l]·p_i + [r_w < r_l]·(1 − p_i) + [r_w = r_l]·½.

    The observed accuracy is one draw of it, off by the labels' own noise (std
    √(Σ p_i(1 − p_i)) / N: 0.014 on the 800 gold-benchmark test pairs). ``bayes_accuracy`` is
    the same expectation for the best predictor, so this one compares with it like for like.
    chosen, rejected: (N,) scores whose order is the prediction; p_chosen: (N,)."""
    right = expected_correct(chosen, rejected, p_chosen)
    return right.mean().item() if chosen.numel() else float("nan")


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


def reward_summary(
    chosen: torch.Tensor, rejected: torch.Tensor, p_chosen: np.ndarray | None = None
) -> dict[str, float]:
    """Pairwise accuracy, the labels' negative log-likelihood (``loss``: the mean Bradley–Terry
    loss, as training minimises it without its centring term), mean margin, reward mean/std,
    ECE of a scalar reward model; with the pairs' known ``p_chosen`` (N,), also
    ``accuracy_vs_truth``."""
    both = torch.cat([chosen, rejected]).double()
    out = {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "loss": _mean(bradley_terry_loss(chosen.double(), rejected.double())),
        "margin": (chosen - rejected).double().mean().item() if chosen.numel() else float("nan"),
        "reward_mean": both.mean().item() if both.numel() else float("nan"),
        "reward_std": both.std().item() if both.numel() > 1 else float("nan"),
        "ece": preference_ece(chosen, rejected),
        "pairs": int(chosen.numel()),
    }
    return out | _vs_truth(chosen, rejected, p_chosen)


def _mean(values: torch.Tensor) -> float:
    """The mean of per-pair values; NaN for no pairs."""
    return values.double().mean().item() if values.numel() else float("nan")


def _vs_truth(chosen, rejected, p_chosen) -> dict[str, float]:
    """``accuracy_vs_truth`` of the same decision as ``accuracy``, when p_chosen is known."""
    return (
        {}
        if p_chosen is None
        else {"accuracy_vs_truth": accuracy_vs_truth(chosen, rejected, p_chosen)}
    )


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
    logp_w: torch.Tensor,
    logp_l: torch.Tensor,
    values: torch.Tensor | None = None,
    p_chosen: np.ndarray | None = None,
    ties: str = "strict",
) -> dict[str, float]:
    """Metrics of a distributional reward model on pairs: accuracy by P(R_w > R_l) vs
    P(R_l > R_w) and by expectation, the labels' negative log-likelihood (``loss``: the
    preference loss with ``ties`` as training reads them, without its regularisers), mean
    entropy, unimodal share, mean std; with the pairs' known ``p_chosen`` (N,),
    ``accuracy_vs_truth`` of the first decision."""
    from distalign.functionals import expectation, std

    p_w, p_l = logp_w.exp(), logp_l.exp()
    greater = log_prob_greater(logp_w, logp_l).exp()
    less = log_prob_greater(logp_l, logp_w).exp()
    both = torch.cat([p_w, p_l])
    e_w, e_l = expectation(p_w, values), expectation(p_l, values)
    out = {
        "accuracy": pairwise_accuracy(greater, less),
        "accuracy_expectation": pairwise_accuracy(e_w, e_l),
        "loss": _mean(distributional_preference_loss(logp_w.double(), logp_l.double(), ties)),
        "p_greater_mean": greater.mean().item(),
        "entropy": entropy(torch.cat([logp_w, logp_l])).mean().item(),
        "unimodal_share": is_unimodal(both).float().mean().item(),
        "std_mean": std(both, values).mean().item(),
        "ece": preference_ece(
            torch.log(greater / less.clamp(min=1e-12)), torch.zeros_like(greater)
        ),
        "pairs": int(p_w.shape[0]),
    }
    return out | _vs_truth(greater, less, p_chosen)


def mixture_summary(
    chosen: torch.Tensor, rejected: torch.Tensor, p_chosen: np.ndarray | None = None
) -> dict[str, float]:
    """Metrics of a mixture head (component rewards (N, K), equal shares) on pairs: accuracy
    by P(w ≻ l) = mean_k σ(r_k(w) − r_k(l)) > ½ and by the mean reward, ECE of that
    probability, and the mean std of a pair's component margins (``component_spread``: how
    far the annotator types part on it; a single reply's components have no comparable
    spread, since each component is fixed only up to its own constant), and the labels'
    negative log-likelihood (``loss``: −log P(w ≻ l), the mixture loss training minimises).
    With the pairs' known ``p_chosen`` (N,), ``accuracy_vs_truth`` of the first decision."""
    margins = (chosen - rejected).double()
    p = torch.sigmoid(margins).mean(-1)
    logit = torch.log(p) - torch.log1p(-p)
    return {
        "accuracy": pairwise_accuracy(p, 1 - p),
        "accuracy_expectation": pairwise_accuracy(chosen.mean(-1), rejected.mean(-1)),
        "loss": _mean(mixture_preference_loss(chosen.double(), rejected.double())),
        "p_greater_mean": p.mean().item() if p.numel() else float("nan"),
        "ece": preference_ece(logit, torch.zeros_like(logit)),
        "component_spread": margins.std(-1, unbiased=False).mean().item()
        if p.numel()
        else float("nan"),
        "pairs": int(p.numel()),
    } | _vs_truth(p, 1 - p, p_chosen)


def bayes_accuracy(p_chosen: np.ndarray) -> float:
    """Accuracy of the best possible predictor, which picks the likelier reply of each pair.

    acc* = (1/N) Σ_i max(p_i, 1 − p_i), with p_i (N,) the true probability that the chosen
    reply of pair i is preferred. No reward model can beat it on average: a label drawn with
    probability p is predicted at best with probability max(p, 1 − p). NaN for no pairs.
    """
    p = np.asarray(p_chosen, dtype=np.float64)
    return float(np.mean(np.maximum(p, 1.0 - p))) if len(p) else float("nan")


def bootstrap_interval(
    values: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,) (Efron & Tibshirani 1993).

    Draws ``n`` resamples of N values with replacement (seeded, so the interval is
    reproducible), takes each mean and returns the (1 − level)/2 and (1 + level)/2 quantiles of
    those means. Values should be independent units (in the comparison: one per prompt, since
    the replies to one prompt are not independent). NaN, NaN for fewer than two values (every
    resample of one value is that value: no interval to draw).
    """
    means = _resampled_means(values, n, seed)
    if means is None:
        return float("nan"), float("nan")
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _resampled_means(values: np.ndarray, n: int, seed: int) -> np.ndarray | None:
    """(n,) means of ``values`` resampled with replacement (seeded: the resamples of
    ``disagreement.resample_counts``, which the AUROC intervals draw); None for fewer than two
    values."""
    from distalign.disagreement import resample_counts

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    return resample_counts(len(values), n, seed) @ values / len(values)


def bootstrap_p_value(values: np.ndarray, null: float, n: int = 2000, seed: int = 0) -> float:
    """Two-sided percentile-bootstrap p-value of "the mean of ``values`` is ``null``": twice
    the smaller share of resampled means on either side of ``null`` (a mean equal to it counts
    on both), at most 1. The resamples are ``bootstrap_interval``'s for the same ``n`` and
    ``seed``, so the two agree: p < 1 − level where the interval leaves ``null`` out (up to a
    resample at its edge). NaN for fewer than two values."""
    means = _resampled_means(values, n, seed)
    if means is None:
        return float("nan")
    below, above = np.mean(means <= null), np.mean(means >= null)
    return float(min(1.0, 2.0 * min(below, above)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (Holm 1979), in their own order: with them
    sorted, p₍₁₎ ≤ … ≤ p₍ₘ₎, the adjusted p₍ᵢ₎ = max over j ≤ i of min(1, (m − j + 1) p₍ⱼ₎).
    Rejecting where an adjusted p is below α keeps the chance of any false claim among the m
    at most α (the family-wise error), with no assumption on how the tests depend on each
    other: several policies compared with one SFT share its replies."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def win_rate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per prompt, the share of reply pairs in which ``a`` scores higher; ties count ½.

    win_i = (1 / (k_a k_b)) Σ_j Σ_l [a_ij > b_il] + ½ [a_ij = b_il]

    ``a`` (P, k_a) and ``b`` (P, k_b) are the scores of two policies' replies to the same P
    prompts; a 1-D array (P,) is one reply per prompt. Returns (P,). A policy against itself
    gets exactly ½ per prompt.
    """
    a, b = np.atleast_2d(a.T).T, np.atleast_2d(b.T).T  # (P,) -> (P, 1)
    a, b = a[:, :, None], b[:, None, :]  # (P, k_a, 1), (P, 1, k_b)
    return ((a > b) + 0.5 * (a == b)).mean(axis=(1, 2))


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of replies (words split on whitespace).

    1 means no n-gram repeats anywhere in the set; low values mean repetitive or
    mode-collapsed replies (Li et al. 2016). 0 when the texts hold no n-gram.
    """
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def at_first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """y where a trajectory of points (x_i, y_i), in the order they were made, first reaches
    x = target, interpolated linearly inside the segment that crosses it; NaN when it never
    does. For comparing runs at matched KL: x is a run's KL to the reference at each
    evaluation, y what was measured there (its gold reward). KL is estimated from samples, so
    a trajectory need not be monotone; the first crossing is the run's state when it first
    spent that much KL."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for i in range(len(x)):
        if x[i] == target:
            return float(y[i])
        if i and (x[i - 1] - target) * (x[i] - target) < 0:
            w = (target - x[i - 1]) / (x[i] - x[i - 1])
            return float(y[i - 1] + w * (y[i] - y[i - 1]))
    return float("nan")
