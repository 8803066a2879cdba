"""Figures (matplotlib, no display needed). Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from distalign.functionals import expectation, std

CHOSEN, REJECTED = "#2a7f62", "#c0504d"


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.supxlabel("score")
    fig.supylabel("p(score)")
    return _save(fig, path)


def plot_expectation_std_histograms(
    logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, path: str | Path
) -> Path:
    """Histograms of E[R] and Std[R] for chosen vs rejected replies."""
    p_w, p_l = logp_chosen.exp(), logp_rejected.exp()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, f, name in ((a, expectation, "expected score"), (b, std, "std of score")):
        ax.hist(f(p_w).numpy(), bins=30, alpha=0.6, color=CHOSEN, label="chosen")
        ax.hist(f(p_l).numpy(), bins=30, alpha=0.6, color=REJECTED, label="rejected")
        ax.set_xlabel(name)
        ax.legend(fontsize=8)
    a.set_ylabel("replies")
    return _save(fig, path)
