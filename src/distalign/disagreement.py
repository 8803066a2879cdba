"""Disagreement that does not reduce to length, and how well a reward model detects it.

Per reply, the spread of the annotators' rewards centred within the prompt (``centred_spread``);
per pair, the gap between the annotator groups' preferences (``group_gap``) and whether their
majorities differ (``contested``). Rank correlations with a partial correlation given length,
AUROC with bootstrap and paired intervals, and the detectors of contested pairs built from a
reward model's margin, spreads or components (``contested_detection``). Pure functions on
numpy arrays: no config, model or I/O in here. ``rm eval`` and ``eval compare`` report them.
"""

from __future__ import annotations

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of ``x`` (N,), ties sharing the mean of the ranks they span, as float64."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # first index of each run of equal values, and each value's run
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    run = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1  # (N,)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((starts + 1 + ends) / 2.0)[run]  # mean of ranks starts+1 .. ends
    return ranks


def centred_spread(
    rewards: np.ndarray, prompt_ids: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per reply, the spread over annotators of their reward centred within the prompt.

        c_a(y) = r_a(y) − mean_{y' of the same prompt} r_a(y')
        spread(y) = sqrt(Σ_a w_a (c_a(y) − Σ_b w_b c_b(y))²)

    Why centred: Bradley–Terry fixes each annotator's reward only up to a constant per prompt
    (σ(r_a(y1) − r_a(y2)) is unchanged by r_a + k), so the raw std over annotators of r_a(y)
    holds offsets no preference can reveal. With annotators that weigh length in opposite
    directions, that raw std grows with length alone. Centring removes the offsets: what is
    left is how much annotators disagree about this reply *relative to its siblings*, the
    part that labels of pairs can show. A prompt with one reply has spread 0.

    Args:
        rewards: (A, R) reward of each of A annotators for each of R replies.
        prompt_ids: (R,) any hashable label of each reply's prompt.
        weights: (A,) annotator probabilities (summing to 1); None: uniform (np.std).
    Returns (R,) float64.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    _, group = np.unique(np.asarray(prompt_ids), return_inverse=True)
    group = group.reshape(-1)  # (R,)
    count = np.bincount(group)  # (P,)
    sums = np.zeros((rewards.shape[0], len(count)))
    np.add.at(sums, (slice(None), group), rewards)  # (A, P)
    centred = rewards - (sums / count)[:, group]  # (A, R)
    w = np.full(len(rewards), 1.0 / len(rewards)) if weights is None else np.asarray(weights)
    mean = w @ centred  # (R,)
    return np.sqrt(np.maximum(w @ (centred - mean) ** 2, 0.0))


def _group_matrix(p_by_group) -> np.ndarray:
    """(N, G) from an array, a mapping group -> (N,), or a list of {group: p} per pair."""
    if isinstance(p_by_group, dict):
        return np.stack([np.asarray(v, dtype=np.float64) for v in p_by_group.values()], axis=1)
    if len(p_by_group) and isinstance(p_by_group[0], dict):
        return np.array([list(d.values()) for d in p_by_group], dtype=np.float64)
    p = np.asarray(p_by_group, dtype=np.float64)
    return p if p.ndim == 2 else p.reshape(len(p), -1 if len(p) else 0)


def group_gap(p_by_group) -> np.ndarray:
    """Per pair, max − min over groups of P_g(a ≻ b); for two groups |P_1 − P_2|.

    ``p_by_group``: (N, G) probabilities, a mapping group -> (N,), or a list of N mappings
    {group: p} (a benchmark file's ``p_chosen_by_group``). Returns (N,); 0 when the groups
    agree on how likely the chosen reply is to win."""
    p = _group_matrix(p_by_group)
    return p.max(axis=1) - p.min(axis=1) if p.size else np.zeros(len(p))


def contested(p_by_group) -> np.ndarray:
    """Per pair, whether the groups' majorities differ: some group has P_g(a ≻ b) > ½ and
    another < ½ (a group at exactly ½ sides with neither). Input as for ``group_gap``;
    returns (N,) bool. Whose preference wins such a pair depends on who is asked — the
    hidden context a distributional reward model should flag."""
    p = _group_matrix(p_by_group)
    if not p.size:
        return np.zeros(len(p), dtype=bool)
    return (p > 0.5).any(axis=1) & (p < 0.5).any(axis=1)


def opposite_leanings(component_margins: np.ndarray) -> np.ndarray:
    """Per pair, how surely a mixture's components lean opposite ways: with each component's
    lean ℓ_k = σ(r_k(a) − r_k(b)) − ½ (equal shares), the negated mean over distinct
    components k ≠ l of ℓ_k·ℓ_l, i.e. Var_k(ℓ)/(K − 1) − mean_k(ℓ)².

    It is the model's counterpart of ``contested``: the truth flags a pair when the groups'
    majorities differ, (P_1 − ½)(P_2 − ½) < 0, and with 2 components this score is
    −ℓ_1·ℓ_2, positive exactly when the components' majorities differ and larger the surer
    each is. Components that agree rank last, the more so the surer they are; no weight is
    fitted. ``component_margins`` (N, K ≥ 2); returns (N,), in [−¼, ¼]."""
    m = np.asarray(component_margins, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"need component margins of shape (N, K >= 2), got {m.shape}")
    lean = 0.5 * np.tanh(0.5 * m)  # σ(m) − ½, exact and stable for large |m|
    k = m.shape[1]
    return lean.var(axis=1) / (k - 1) - lean.mean(axis=1) ** 2


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of x and y (N,) controlling for z ((N,) or (N, k)).

    Rank-transform all three (ties averaged), regress rank(x) and rank(y) each on
    [1, rank(z)] by least squares, and take the Pearson correlation of the residuals — what
    x and y share beyond what both share with z (e.g. beyond reply length). For one z this
    equals (ρ_xy − ρ_xz ρ_yz) / sqrt((1 − ρ_xz²)(1 − ρ_yz²)) of the Spearman ρ's. NaN when
    fewer than 3 values, or a residual is constant (x or y is constant, or a function of z).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64).reshape(len(x), -1)
    if len(x) < 3:
        return float("nan")
    design = np.column_stack([np.ones(len(x))] + [average_ranks(c) for c in z.T])  # (N, 1+k)
    rx, ry = average_ranks(x), average_ranks(y)
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    return pearson(*res)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of x and y (N,); NaN when either is constant (to rounding: an
    absolute tolerance meant for rank-scale values, ranks and their residuals)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    nx, ny = np.sqrt(x @ x), np.sqrt(y @ y)
    # a residual of exact zeros comes back from lstsq as ~1e-15 noise: treat it as constant
    scale = np.sqrt(len(x)) * 1e-9
    if nx <= scale or ny <= scale:
        return float("nan")
    return float(np.clip(x @ y / (nx * ny), -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of x and y (N,) (ties averaged); NaN for a constant input."""
    return pearson(average_ranks(x), average_ranks(y)) if len(x) > 1 else float("nan")


def _auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from per-score-level counts of positives and negatives, (..., K) with levels in
    increasing score order: Σ_k pos_k (negatives below level k + ½ negatives at k) / (n₊ n₋)."""
    below = np.cumsum(neg, axis=-1) - neg  # negatives strictly below each level
    wins = (pos * (below + 0.5 * neg)).sum(axis=-1)
    total = pos.sum(axis=-1) * neg.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / np.where(total > 0, total, 1), np.nan)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) for 0/1 ``labels`` (N,) (Mann–Whitney U):

        AUROC = (1 / (n₊ n₋)) Σ_{i: label 1} Σ_{j: label 0} [s_i > s_j] + ½ [s_i = s_j]

    the probability that a random positive outscores a random negative, ties ½; ½ is chance.
    Computed in O(N log N) by counting per distinct score. NaN when a class is empty."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    _, level = np.unique(scores, return_inverse=True)
    k = int(level.max()) + 1 if len(level) else 0
    pos = np.bincount(level.reshape(-1)[labels], minlength=k)
    neg = np.bincount(level.reshape(-1)[~labels], minlength=k)
    return float(_auroc_from_counts(pos, neg))


def _resampled_aurocs(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of each resample, (n,), given how often it draws each unit, ``counts`` (n, N);
    NaN for a one-class one."""
    _, lvl = np.unique(scores, return_inverse=True)
    lvl = lvl.reshape(-1)
    k, n = int(lvl.max()) + 1, len(counts)
    cell = (np.arange(n)[:, None] * k + lvl[None, :]).ravel()  # (n·N,) resample × score level
    pos = np.bincount(cell, weights=(counts * labels).ravel(), minlength=n * k).reshape(n, k)
    neg = np.bincount(cell, weights=(counts * ~labels).ravel(), minlength=n * k).reshape(n, k)
    return _auroc_from_counts(pos, neg)


def resample_counts(
    n_units: int, n: int, seed: int, clusters: np.ndarray | None = None
) -> np.ndarray:
    """How often each of ``n`` bootstrap resamples draws each unit, (n, n_units). Without
    ``clusters``, units are drawn with replacement; with ``clusters`` (n_units,) (e.g. each
    pair's prompt), whole clusters are, as many as there are, each bringing all its units:
    units of one cluster are not independent (a prompt's pairs share its replies), and
    resampling them one by one makes the interval too narrow."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, n_units, size=(n, n_units))
        flat = (np.arange(n)[:, None] * n_units + idx).ravel()
        return np.bincount(flat, minlength=n * n_units).reshape(n, n_units)
    _, member = np.unique(np.asarray(clusters), return_inverse=True)
    member = member.reshape(-1)
    if len(member) != n_units:
        raise ValueError(f"{len(member)} cluster ids for {n_units} units")
    k = int(member.max()) + 1
    return rng.multinomial(k, np.full(k, 1 / k), size=n)[:, member]


def bootstrap_auroc_interval(
    scores: np.ndarray,
    labels: np.ndarray,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``auroc(scores, labels)``, resampling the N
    (score, label) units with replacement ``n`` times (seeded), or whole ``clusters`` of them
    (``resample_counts``). Resamples that hold one class only have no AUROC and are left
    out; NaN, NaN when every resample does (or N = 0)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if len(scores) == 0:
        return float("nan"), float("nan")
    areas = _resampled_aurocs(scores, labels, resample_counts(len(scores), n, seed, clusters))
    areas = areas[~np.isnan(areas)]
    if not len(areas):
        return float("nan"), float("nan")
    lo, hi = np.quantile(areas, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_auroc_difference(
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> dict[str, float]:
    """AUROC(a) − AUROC(b) for two scores of the same N units, with a paired percentile
    bootstrap interval (each resample of units, or of whole ``clusters`` of them, scores both,
    so what the two share cancels) and ``p_not_above``, the share of resamples in which a
    does not beat b: a bootstrap share, not the p-value of a test, and 0 only means fewer
    than 1 in ``n``.

    Returns ``difference``, ``lo``, ``hi`` and ``p_not_above``; NaN where no AUROC exists."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not (len(a) == len(b) == len(labels)):
        raise ValueError(f"scores of {len(a)} and {len(b)} units, {len(labels)} labels")
    nan = {"difference": float("nan"), "lo": float("nan"), "hi": float("nan"),
           "p_not_above": float("nan")}  # fmt: skip
    if len(a) == 0:
        return nan
    counts = resample_counts(len(a), n, seed, clusters)
    diff = _resampled_aurocs(a, labels, counts) - _resampled_aurocs(b, labels, counts)
    diff = diff[~np.isnan(diff)]
    if not len(diff):
        return nan
    lo, hi = np.quantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"difference": auroc(a, labels) - auroc(b, labels), "lo": float(lo),
            "hi": float(hi), "p_not_above": float((diff <= 0).mean())}  # fmt: skip


def contested_scores(
    margin: np.ndarray, spread: np.ndarray | None = None, components: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The per-pair scores ``contested_detection`` ranks pairs by (higher: more likely
    contested), (N,) each: ``margin`` −|Δ|, ``spread`` σ (with a spread), ``ratio`` −|Δ|/σ
    (with a spread and components), and ``detector``, the head's own: opposite leanings with
    ``components`` (N, K), else −|Δ|/σ with a spread, else −|Δ|."""
    margin = np.asarray(margin, dtype=np.float64)
    scores = {"margin": -np.abs(margin)}
    scores["detector"] = scores["margin"]
    if spread is not None:
        spread = np.asarray(spread, dtype=np.float64)
        scores["spread"] = spread
        # a zero spread (one-bin mass) makes any margin infinitely sure; tiny floor avoids 0/0
        scores["detector"] = -np.abs(margin) / np.maximum(spread, 1e-12)
    if components is not None:
        if len(components) != len(margin):
            raise ValueError(f"{len(components)} pairs of component margins, {len(margin)} scored")
        if spread is not None:
            scores["ratio"] = scores["detector"]
        scores["detector"] = opposite_leanings(components)
    return scores


def contested_detection(
    margin: np.ndarray,
    spread: np.ndarray | None,
    p_by_group,
    n: int = 2000,
    seed: int = 0,
    components: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> dict[str, object]:
    """How well a reward model's outputs flag the pairs whose groups' majorities differ.

    Per pair i: ``margin`` Δ_i = r_w − r_l (scalar head) or E[R_w] − E[R_l] (distributional),
    ``spread`` σ_i = sqrt(Std[R_w]² + Std[R_l]²) (None for a scalar head), ``p_by_group``
    the known per-group P(chosen ≻ rejected) (anything ``contested`` takes). Detectors, each
    scored by AUROC against ``contested`` with a percentile bootstrap 95% interval over pairs,
    or over ``clusters`` of them (each pair's prompt: ``resample_counts``):

        margin     −|Δ|         a close call; all a scalar reward model can offer (baseline)
        spread     σ            predicted disagreement alone
        detector   −|Δ| / σ     the standardised margin; if R_w, R_l were independent normals
                                P(R_w > R_l) = Φ(Δ / σ), so −|Δ|/σ ranks pairs by how near ½
                                the model's own win probability is. Scale-free: no weights
                                fitted, so nothing is tuned on the pairs it is scored on.
        leanings   ``opposite_leanings(components)``, for a mixture head whose component
                   margins r_k(w) − r_k(l) come as ``components`` (N, K): whether, and how
                   surely, its components' majorities differ, as the groups' do in a
                   contested pair. It replaces −|Δ|/σ as the head's detector, which ranks the
                   sign of the disagreement by a ratio of logits and ignores how sure each
                   component is; −|Δ|/σ stays as ``contested_auroc_ratio``.

    Returns ``contested_share``, ``contested_pairs``, ``contested_auroc`` (the head's
    detector: opposite leanings with components, else −|Δ|/σ, or −|Δ| without a spread),
    ``contested_auroc_margin``, ``contested_auroc_spread`` (with a spread only),
    ``contested_auroc_ratio`` (with components only), each AUROC with ``…_ci95`` [lo, hi], and
    ``contested_detector`` naming the detector. AUROCs are NaN when no pair (or every pair) is
    contested."""
    flags = contested(p_by_group)
    if len(flags) != len(margin):
        raise ValueError(f"{len(flags)} pairs with group probabilities, {len(margin)} scored")
    scores = contested_scores(margin, spread, components)
    detector = "-|margin|/spread" if spread is not None else "-|margin|"
    if components is not None:
        detector = "opposite leanings of the components"
    out: dict[str, object] = {
        "contested_share": float(flags.mean()) if len(flags) else float("nan"),
        "contested_pairs": int(flags.sum()),
        "contested_detector": detector,
        "contested_bootstrap": "pairs" if clusters is None else "clusters",
    }
    for name, s in scores.items():
        key = "contested_auroc" if name == "detector" else f"contested_auroc_{name}"
        out[key] = auroc(s, flags)
        out[f"{key}_ci95"] = list(bootstrap_auroc_interval(s, flags, n, seed, clusters=clusters))
    return out


def spread_agreement(
    predicted: np.ndarray,
    rewards: np.ndarray,
    prompt_ids: np.ndarray,
    lengths: np.ndarray,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Does a predicted per-reply spread track the annotators' disagreement beyond length?

    Args:
        predicted: (R,) the reward model's predicted std per reply.
        rewards: (A, R) every annotator's reward for every reply (the gold judge's
            ``annotator_rewards(attrs).T``).
        prompt_ids: (R,) each reply's prompt (replies to one prompt are centred together).
        lengths: (R,) reply length in tokens.
        weights: (A,) annotator probabilities; None: uniform.

    Returns Spearman ρ of ``predicted`` with the raw std over annotators (``spearman_raw``,
    what the comparison reported first: mostly length, since Bradley–Terry leaves each
    annotator's reward free up to a constant) and with ``centred_spread`` (``spearman_centred``,
    the identifiable part); the partial ρ of each given length (``partial_raw_given_length``,
    ``partial_centred_given_length``); and how much of each truth is length itself
    (``raw_vs_length``, ``centred_vs_length``, ``predicted_vs_length``)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    w = np.full(len(rewards), 1.0 / len(rewards)) if weights is None else np.asarray(weights)
    raw = np.sqrt(np.maximum(w @ (rewards - w @ rewards) ** 2, 0.0))  # (R,)
    centred = centred_spread(rewards, prompt_ids, w)
    return {
        "spearman_raw": spearman(predicted, raw),
        "spearman_centred": spearman(predicted, centred),
        "partial_raw_given_length": partial_spearman(predicted, raw, lengths),
        "partial_centred_given_length": partial_spearman(predicted, centred, lengths),
        "raw_vs_length": spearman(raw, lengths),
        "centred_vs_length": spearman(centred, lengths),
        "predicted_vs_length": spearman(predicted, lengths),
    }
