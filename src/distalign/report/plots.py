"""Every figure of distalign (matplotlib, no display needed).

Reward-model evaluation figures are written as PNG files (``plot_*``, called by ``rm eval``);
the comparison report's figures are returned as PNG bytes, to be embedded in the page. They
take plain numbers (dicts, lists, arrays), never a config or a model.

Rules the report's figures keep: every axis says what it measures and in which unit; rewards
of different reward models never share an axis (each RM is on its own scale, so one panel per
RM); a panel with a single point is not drawn (the page prints the number instead, see
``single_point_panels``); a noisy training curve is drawn smoothed, the raw values faint behind.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from distalign.functionals import expectation, std

CHOSEN, REJECTED = "#2a7f62", "#c0504d"
SFT_COLOR = "#7f7f7f"
NO_BETTER = "#999999"  # the 0.5 line: a policy no better than SFT
SMOOTH_FROM = 12  # curves with at least this many points are drawn smoothed


def _plain_text(draw):
    """Draw with every label as written: a policy named ``$x$`` is not read as math
    (``text.parse_math`` off), nor does ``$\\foo{$`` stop the report."""

    @functools.wraps(draw)
    def plain(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return plain


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def policy_colors(names: list[str]) -> dict[str, str]:
    """One colour per policy, the same in every figure; SFT is grey."""
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # 7 is grey
    others = [n for n in names if n != "sft"]
    colors = {n: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, n in enumerate(others)}
    return {"sft": SFT_COLOR, **colors}


# --- reward-model evaluation (rm eval) ------------------------------------------------------


@_plain_text
def plot_distribution_grid(
    logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, path: str | Path, n: int = 8
) -> Path:
    """p over scores for the first ``n`` pairs: chosen and rejected side by side per pair."""
    p_w, p_l = logp_chosen.exp()[:n], logp_rejected.exp()[:n]
    n = p_w.shape[0]
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharey=True
    )
    bins = torch.arange(1, p_w.shape[1] + 1)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        ax.bar(bins - 0.2, p_w[k], width=0.4, color=CHOSEN, label="chosen")
        ax.bar(bins + 0.2, p_l[k], width=0.4, color=REJECTED, label="rejected")
        e_w, e_l = expectation(p_w[k : k + 1]).item(), expectation(p_l[k : k + 1]).item()
        ax.set_title(f"pair {k}: E {e_w:.1f} vs {e_l:.1f}", fontsize=9)
        ax.set_xticks(bins)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("score (bin of the reward model's scale)")
    fig.supylabel("predicted probability p(score)")
    return _save(fig, path)


@_plain_text
def plot_expectation_std_histograms(
    logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, path: str | Path
) -> Path:
    """Histograms of E[R] and Std[R] for chosen vs rejected replies."""
    p_w, p_l = logp_chosen.exp(), logp_rejected.exp()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, f, name in (
        (a, expectation, "expected score E[R] (score bins)"),
        (b, std, "std of score Std[R] (score bins)"),
    ):
        ax.hist(f(p_w).numpy(), bins=30, alpha=0.6, color=CHOSEN, label="chosen")
        ax.hist(f(p_l).numpy(), bins=30, alpha=0.6, color=REJECTED, label="rejected")
        ax.set_xlabel(name)
        ax.set_ylabel("replies (count)")
        ax.legend(fontsize=8)
    return _save(fig, path)


# --- the comparison report -----------------------------------------------------------------


@_plain_text
def win_rate_intervals(
    panels: dict[str, dict[str, tuple[float, float, float]]], colors: dict[str, str]
) -> bytes | None:
    """Win rate vs SFT with its 95% interval, one row per policy, one panel per judge.

    ``panels`` maps a judge ("gold judge", "RM scalar", ...) to policy -> (rate, lo, hi).
    Win rates are probabilities, so the panels share their x axis; the dotted line at 0.5 is
    a policy no better than SFT."""
    panels = {title: rows for title, rows in panels.items() if rows}
    if not panels:
        return None
    names = list(dict.fromkeys(n for rows in panels.values() for n in rows))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.6 * len(panels) + 1.2, 0.45 * len(names) + 1.4),
        squeeze=False,
        sharey=True,
        sharex=True,
    )
    y = {n: i for i, n in enumerate(reversed(names))}  # first policy on top
    for ax, (title, rows) in zip(axes[0], panels.items(), strict=True):
        ax.axvline(0.5, ls=":", color=NO_BETTER)
        for name, (rate, lo, hi) in rows.items():
            drawn = lo is not None and hi is not None and np.isfinite([lo, hi]).all()
            err = [[rate - lo], [hi - rate]] if drawn else None  # none over one prompt
            ax.errorbar(rate, y[name], xerr=err, fmt="o", color=colors.get(name), capsize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("win rate vs SFT (probability)")
        ax.grid(axis="x", alpha=0.3)
    bounds = np.array([r[1:] for rows in panels.values() for r in rows.values()], dtype=float)
    lo, hi = np.nanmin([0.4, *bounds[:, 0]]), np.nanmax([0.6, *bounds[:, 1]])
    axes[0][0].set_xlim(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    axes[0][0].set_yticks(list(y.values()), list(y.keys()))
    axes[0][0].set_ylim(-0.6, len(names) - 0.4)
    return _png(fig)


@_plain_text
def reward_per_reply(
    rewards: dict[str, np.ndarray], colors: dict[str, str], xlabel: str
) -> bytes | None:
    """Box plot of a judge's reward of every reply, one row per policy, the mean as a diamond
    and the replies as faint dots; ``xlabel`` names the judge and its scale. None when no
    policy has two replies."""
    rewards = {n: np.asarray(v, dtype=float) for n, v in rewards.items() if len(v)}
    if not rewards or max(len(v) for v in rewards.values()) < 2:
        return None
    names = list(reversed(rewards))  # first policy on top
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.3))
    ax.boxplot(
        [rewards[n] for n in names],
        vert=False,
        widths=0.5,
        showfliers=False,
        medianprops={"color": "black"},
    )
    rng = np.random.default_rng(0)  # jitter only; fixed so the page is the same every time
    for i, n in enumerate(names, start=1):
        v = rewards[n]
        ax.scatter(v, i + rng.uniform(-0.18, 0.18, len(v)), s=6, alpha=0.3, color=colors.get(n))
        ax.scatter([v.mean()], [i], marker="D", s=40, color=colors.get(n), zorder=3)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


@_plain_text
def spread_vs_disagreement(points: dict[str, dict], colors: dict[str, str]) -> bytes | None:
    """One panel per distributional reward model: each compared reply's predicted std (x)
    against the annotators' disagreement about it, centred within the prompt (y), coloured by
    policy, with Spearman ρ in the title. ``points``: {rm: {"policy", "predicted", "centred"}}
    as ``eval compare`` saves them. None when there is nothing to draw."""
    from distalign.disagreement import spearman

    points = {rm: p for rm, p in (points or {}).items() if p and len(p.get("predicted", [])) > 1}
    if not points:
        return None
    fig, axes = plt.subplots(1, len(points), figsize=(5.2 * len(points), 4), squeeze=False)
    for ax, (rm, p) in zip(axes[0], points.items(), strict=True):
        x, y = np.asarray(p["predicted"], float), np.asarray(p["centred"], float)
        policy = np.asarray(p["policy"])
        for name in dict.fromkeys(p["policy"]):
            keep = policy == name
            ax.scatter(x[keep], y[keep], s=8, alpha=0.5, color=colors.get(name), label=name)
        ax.set_title(f"RM {rm}: Spearman ρ = {spearman(x, y):.2f}", fontsize=10)
        ax.set_xlabel("predicted std of the reward")
        ax.set_ylabel("annotator disagreement (centred in prompt)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, markerscale=2)
    return _png(fig)


@_plain_text
def overoptimisation(
    curves: dict[str, list[dict]],
    rm_names: list[str],
    colors: dict[str, str] | None = None,
    judge: str | None = None,
) -> bytes | None:
    """The held-out judge's reward and each RM's reward against KL to SFT over a run's
    checkpoints (Gao et al. 2022), one panel per reward, one line per run, points labelled
    with their step.

    ``curves`` maps a run to points {"step", "kl", "gold_mean" or "judge_mean", "rm_<name>"}:
    the gold judge's reward, or that of the judge named ``judge``. Runs with fewer than two
    points are left out (None if none is left)."""
    curves = {run: sorted(p, key=lambda q: q["step"]) for run, p in curves.items() if len(p) > 1}
    if not curves:
        return None
    keys = [("gold_mean", "gold judge", "gold reward (judge's score)")]
    keys += [("judge_mean", f"judge {judge}", f"judge {judge} reward (its own scale)")]
    keys += [(f"rm_{rm}", f"RM {rm}", f"RM {rm} reward (its own scale)") for rm in rm_names]
    keys = [k for k in keys if any(k[0] in p for pts in curves.values() for p in pts)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, (key, title, ylabel) in zip(axes[0], keys, strict=True):
        for run, pts in curves.items():
            pts = [p for p in pts if p.get(key) is not None]
            kl, value = [p["kl"] for p in pts], [p[key] for p in pts]
            ax.plot(kl, value, marker="o", label=run, color=(colors or {}).get(run))
            for p, x, v in zip(pts, kl, value, strict=True):
                ax.annotate(f"{p['step']}", (x, v), textcoords="offset points", xytext=(4, 4),
                            fontsize=8, color="#333")  # fmt: skip
        ax.margins(x=0.1, y=0.12)  # room for the last point's step label
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("KL to SFT (nats per reply)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="run (point labels: step)", title_fontsize=7)
    return _png(fig)


@dataclass
class Panel:
    """One panel of training curves: a line per series, x is the training step."""

    title: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]]  # name -> (step, value) points
    levels: dict[str, float] = field(default_factory=dict)  # dotted reference lines: label -> y

    def points(self) -> int:
        return max((len(p) for p in self.series.values()), default=0)


def single_point_panels(panels: list[Panel]) -> tuple[list[Panel], list[Panel]]:
    """(panels worth drawing, panels whose every series has at most one point)."""
    panels = [p for p in panels if p.points() > 0]
    return [p for p in panels if p.points() > 1], [p for p in panels if p.points() == 1]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (N,) -> (N,); the ends average the points they have."""
    values = np.asarray(values, dtype=float)
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


@_plain_text
def training_curves(
    panels: list[Panel], colors: dict[str, str] | None = None, avoid: set[str] = frozenset()
) -> bytes | None:
    """Training curves, at most three panels a row. Series of ``SMOOTH_FROM`` points or more
    are drawn as a moving average over about a tenth of the run, the raw values faint behind.
    A series without a colour in ``colors`` takes the next one that is not in ``avoid`` (the
    policies' colours, so a reward model's curve is never read as a policy's)."""
    panels = [p for p in panels if p.points() > 1]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    colors = dict(colors or {})
    taken = {c.lower() for c in avoid}
    free = [matplotlib.colors.to_hex(c) for c in plt.get_cmap("tab10").colors]
    free = [c for c in free if c not in taken and c != SFT_COLOR] or free
    cycle = iter(free + free)
    smoothed_any = False
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name, pts in panel.series.items():
            if not pts:
                continue
            color = colors.setdefault(name, next(cycle, "k"))
            x, y = (np.array(v, dtype=float) for v in zip(*sorted(pts), strict=True))
            if len(y) >= SMOOTH_FROM:
                smoothed_any = True
                ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
                ax.plot(x, moving_average(y, max(3, len(y) // 10)), color=color, label=name)
            else:
                ax.plot(x, y, color=color, marker="o", ms=3, label=name)
        for label, level in panel.levels.items():
            ax.axhline(level, ls=":", color=NO_BETTER, label=label)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if smoothed_any:
        fig.text(0.99, 0.005, "solid: moving average; faint: logged values", ha="right",
                 fontsize=7, color="#555")  # fmt: skip
    return _png(fig)
