"""Reward heads: raw head outputs (B, k) -> what the losses consume.

``scalar``       k = 1: the reward r.
``categorical``  k = n: logits z; log p = log_softmax(z) over scores 1..n.
``ordinal``      k = 2: location μ and log-scale s of a logistic distribution, discretised
                 onto the n bins and truncated to them: p(i) ∝ F(i + ½) − F(i − ½) with F
                 the logistic CDF of (x − μ)/σ, σ = softplus(s) + σ_min. A truncated,
                 discretised log-concave density is unimodal, so this head can *only*
                 express smooth, single-peaked distributions. (Putting the tails into the
                 outer bins instead would break that: a location far outside the range
                 piles mass into the last bin, a second peak.) μ is centred on the middle bin.
``mixture``      k = K: rewards r_1..r_K of K Bradley–Terry components, equal shares π_k = 1/K
                 (a latent annotator type: P(a ≻ b) = Σ_k π_k σ(r_k(a) − r_k(b)), the same
                 type judging both replies). A reply's distribution is its K atoms r_k, each
                 with mass π_k. Unlike the bin heads, two replies' outcomes are not
                 independent: one annotator judges both, which is what lets the components
                 part where annotators disagree. Each component, like each annotator's reward,
                 is fixed only up to a constant.

Pure torch; the head's linear layer lives in the Hugging Face model (``score``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMA_MIN = 0.05


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x ≤ 0, accurate near 0 and for very negative x."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_sigmoid_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(σ(b) − σ(a)) for a < b, stable in both tails (a may be −∞, b may be +∞)."""
    # right tail: σ(b) − σ(a) = σ(−a) − σ(−b) avoids 1 − 1 cancellation
    right = (a + b) > 0
    hi = torch.where(right, -a, b)
    lo = torch.where(right, -b, a)
    log_hi, log_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    return log_hi + _log1mexp(log_lo - log_hi)


def ordinal_log_probs(params: torch.Tensor, n_bins: int) -> torch.Tensor:
    """(B, 2) (μ, s) -> (B, n) log-probabilities of a discretised logistic over bins 1..n."""
    mu = params[:, :1] + (n_bins + 1) / 2  # (B, 1), 0 means the middle bin
    sigma = F.softplus(params[:, 1:]) + SIGMA_MIN  # (B, 1)
    edges = torch.arange(n_bins + 1, device=params.device, dtype=params.dtype) + 0.5  # 0.5..n+0.5
    z = (edges[None] - mu) / sigma  # (B, n + 1)
    log_mass = log_sigmoid_diff(z[:, :-1], z[:, 1:])  # (B, n)
    return log_mass - log_sigmoid_diff(z[:, :1], z[:, -1:])  # truncate to [½, n + ½]


def mixture_atoms(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture head outputs (B, K) -> (shares π (B, K), atoms r (B, K)): equal shares."""
    atoms = outputs.float()
    return torch.full_like(atoms, 1.0 / atoms.shape[-1]), atoms


def head_log_probs(head: str, outputs: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Head outputs (B, k) -> log p (B, n) for a distributional head."""
    if head == "categorical":
        return torch.log_softmax(outputs.float(), dim=-1)
    if head == "ordinal":
        return ordinal_log_probs(outputs.float(), n_bins)
    raise ValueError(
        f"head {head!r} has no distribution over bins (scalar heads output a reward, mixture "
        "heads K component rewards: mixture_atoms)"
    )
