"""Reward functionals φ(p): a distribution over scores -> one reward (pure torch).

All take probabilities p (B, n) over score values v, default v_i = i for i = 1..n, and
return (B,). v is (n,), shared by every row (the bins of a categorical or ordinal head), or
(B, n), each row its own atoms in any order (a mixture head's K component rewards, equal
shares: ``distalign.models.heads``). Used by REINFORCE with a distributional reward model.

    expectation        E[R] = Σ v_i p_i
    mean_minus_std     E[R] − κ·Std[R]                     (risk-averse for κ > 0)
    cvar               CVaR_α: mean of the lowest α of the mass  (≤ E[R] always)
    quantile           smallest v_i with CDF(i) ≥ τ
    win_probability    P(R > R_ref) + ½ P(R = R_ref) against a reference distribution (a tie
                       counts as half a win)
    win_probability_strict   P(R > R_ref) (a tie counts as a loss)
    mixture_win_probability  Σ_k π_k σ(r_k − r_k,ref): a mixture head's own preference for the
                       reply over the reference reply
"""

from __future__ import annotations

import torch


def score_values(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The default score values 1..n, (n,)."""
    return torch.arange(1, n + 1, device=device, dtype=dtype)


def _values(p: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
    return score_values(p.shape[-1], p.device, p.dtype) if values is None else values.to(p)


def _ascending(p: torch.Tensor, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """p and v (B, n) with each row's values ascending: shared values (n,) are taken as given
    (the bins, ascending), per-row atoms (B, n) are sorted and p follows them."""
    v = _values(p, values)
    if v.dim() == 1:
        return p, v.expand_as(p)
    v, order = v.sort(-1)
    return p.gather(-1, order), v


def expectation(p: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """Σ v_i p_i, (B,)."""
    return (p * _values(p, values)).sum(-1)


def std(p: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of R, (B,)."""
    v = _values(p, values)
    mean = expectation(p, v)
    var = (p * (v - mean[:, None]) ** 2).sum(-1)
    # sqrt's gradient at 0 is inf (NaN after ·0): a point mass takes sqrt(1), then 0
    positive = var > 0
    return torch.where(positive, torch.where(positive, var, 1.0).sqrt(), 0.0)


def mean_minus_std(
    p: torch.Tensor, kappa: float = 1.0, values: torch.Tensor | None = None
) -> torch.Tensor:
    """E[R] − κ·Std[R], (B,)."""
    return expectation(p, values) - kappa * std(p, values)


def cvar(p: torch.Tensor, alpha: float = 0.25, values: torch.Tensor | None = None) -> torch.Tensor:
    """Conditional value at risk: the mean of R over its lowest ``alpha`` of probability mass.

    CVaR_α = (1/α) Σ_i v_i · min(p_i, max(0, α − CDF(i−1))), values ascending. (B,).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    p, v = _ascending(p, values)
    before = p.cumsum(-1) - p  # CDF(i − 1)
    taken = torch.minimum(p, (alpha - before).clamp(min=0))  # mass of bin i inside the tail
    return (taken * v).sum(-1) / alpha


def quantile(p: torch.Tensor, tau: float = 0.5, values: torch.Tensor | None = None) -> torch.Tensor:
    """Smallest v_i with CDF(i) ≥ τ − 1e-6, (B,): the slack keeps a CDF that a cumulative
    sum rounds to just under τ (0.4999999 for ½) on the bin that reaches it. Not
    differentiable (a selection)."""
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    p, v = _ascending(p, values)
    cdf = p.cumsum(-1)
    idx = (cdf < tau - 1e-6).sum(-1).clamp(max=p.shape[-1] - 1)  # first bin reaching τ
    return v.gather(-1, idx[:, None])[:, 0]


def win_probability(p: torch.Tensor, p_ref: torch.Tensor, ties: str = "half") -> torch.Tensor:
    """Probability that R ~ p beats R_ref ~ p_ref (independent), both (B, n) -> (B,).

    ``ties="half"`` (the default): P(R > R_ref) + ½ P(R = R_ref) = Σ_i p_i (CDF_ref(i−1) +
    ½ p_ref,i). A tie counts as half a win, so p against itself gives ½ and the value is
    1 − (the reference's win probability against p). ``ties="strict"``: P(R > R_ref) alone; a
    tie is a loss, so a reply must be *better* to score (on n bins, two replies the model puts
    on the same bin both score 0 against each other). The distributional preference loss offers
    the same two forms (``distalign.losses.distributional_preference_loss``).
    """
    before = p_ref.cumsum(-1) - p_ref  # P(R_ref < i)
    greater = (p * before).sum(-1)  # P(R > R_ref)
    if ties == "strict":
        return greater
    if ties == "half":
        return greater + 0.5 * (p * p_ref).sum(-1)
    raise ValueError(f"ties must be 'half' or 'strict', got {ties!r}")


def mixture_win_probability(
    atoms: torch.Tensor, ref_atoms: torch.Tensor, shares: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_k π_k σ(r_k − r_k,ref), (B,): the probability a mixture of Bradley–Terry rewards
    (components r_k, shares π_k; equal shares when None) gives to the reply beating the
    reference reply, both (B, K). It compares component with component (each annotator type
    judges both replies), so each component's arbitrary offset cancels; a reply against itself
    gives ½."""
    prob = torch.sigmoid(atoms - ref_atoms.to(atoms))
    if shares is None:
        return prob.mean(-1)
    return (prob * shares.to(atoms)).sum(-1)


FUNCTIONALS = (
    "expectation",
    "mean_minus_std",
    "cvar",
    "quantile",
    "win_probability",
    "win_probability_strict",
)
REFERENCE_FUNCTIONALS = ("win_probability", "win_probability_strict")  # need p_ref


def apply_functional(
    name: str,
    p: torch.Tensor,
    *,
    kappa: float = 1.0,
    alpha: float = 0.25,
    tau: float = 0.5,
    p_ref: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """φ(p) by name, (B,). ``values``: the score values, (n,) or per-row atoms (B, n). With
    per-row atoms (a mixture head), ``p_ref`` holds the reference reply's atoms and the win
    probability is ``mixture_win_probability`` (strict and half are the same: σ has no ties)."""
    if name == "expectation":
        return expectation(p, values)
    if name == "mean_minus_std":
        return mean_minus_std(p, kappa, values)
    if name == "cvar":
        return cvar(p, alpha, values)
    if name == "quantile":
        return quantile(p, tau, values)
    if name in REFERENCE_FUNCTIONALS:
        if p_ref is None:
            raise ValueError(f"{name} needs the reference distribution p_ref")
        if values is not None and values.dim() == 2:
            return mixture_win_probability(values, p_ref, p)
        return win_probability(p, p_ref, ties="strict" if name.endswith("_strict") else "half")
    raise ValueError(f"unknown functional {name!r}; expected one of {FUNCTIONALS}")
