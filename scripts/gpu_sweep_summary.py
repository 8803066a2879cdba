"""Tabulate a reward-model sweep of ``scripts/gpu_check.sh sweep``: the end-to-end mixture at
several head learning rates and seeds, on all 2,400 benchmark pairs, against the scalar RM.

    python scripts/gpu_sweep_summary.py [--sweep docs/results/level2/gpu_sweep]

Reads ``NAME.json`` and ``NAME_pair_scores.csv`` of each run (``rm train``'s final evaluation,
copied from ``WORK/sweep/NAME/final/``; NAME is ``lrRATE_sSEED`` or ``scalar_s0``), compares
each run's contested-pair detector with the scalar RM's on the same 800 test pairs
(``eval.rm.compare_contested``, paired bootstrap) and writes ``summary.md``, ``summary.json``
and ``sweep.png`` into the sweep folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

GOAL_RHO = 0.4  # Spearman(predicted spread, centred disagreement)
RUN = re.compile(r"lr(?P<rate>.+)_s(?P<seed>\d+)$")


def runs(folder: Path) -> dict[str, dict]:
    """name -> the run's evaluation (scalars only), its rate (None: the scalar RM) and seed,
    and its training time where ``sweep.json`` has it. A run is a ``NAME.json`` with its
    ``NAME_pair_scores.csv`` beside it; NAME is ``lrRATE_sSEED`` or ``scalar_sSEED``."""
    times = {}
    if (folder / "sweep.json").is_file():
        times = json.loads((folder / "sweep.json").read_text())
    out = {}
    for path in sorted(folder.glob("*.json")):
        if not path.with_name(f"{path.stem}_pair_scores.csv").is_file():
            continue  # sweep.json, summary.json
        m = RUN.match(path.stem)
        scalar = re.fullmatch(r"scalar_s(\d+)", path.stem)
        try:
            rate = float(m["rate"]) if m else None
        except ValueError:
            m = None
        if not (m or scalar):
            print(f"{path}: not a run of the sweep (lrRATE_sSEED or scalar_sSEED), left out")
            continue
        ev = json.loads(path.read_text())
        row = {k: v for k, v in ev.items() if not isinstance(v, dict)}
        row["rate"] = rate if m else None
        row["seed"] = int(m["seed"] if m else scalar[1])
        row["train_seconds"] = times.get(path.stem, {}).get("train_seconds")
        out[path.stem] = row
    return out


def compare(folder: Path, rows: dict[str, dict], baseline: Path) -> None:
    """Adds each mixture's contested AUROC minus the baseline's, same pairs, paired CI."""
    from distalign.eval.rm import compare_contested

    for name, row in rows.items():
        if row["rate"] is None:
            continue
        d = compare_contested(folder / f"{name}_pair_scores.csv", baseline)
        row |= {"vs_scalar": d["difference"], "vs_scalar_ci95": [d["lo"], d["hi"]]}
        row["meets_auroc"] = d["lo"] > 0
        row["meets_rho"] = row["spread_spearman_centred"] >= GOAL_RHO


def ensemble_vs_truth(folder: Path, rows: dict[str, dict]) -> dict[str, float]:
    """Accuracy against the truth of the mean of every run's margin, each divided by its std
    over the test pairs (so no run outweighs the others), beside the runs' own: does averaging
    seeds close the gap to the ceiling, i.e. is it variance?"""
    import numpy as np
    import torch

    from distalign.data.load import known_p_chosen, load_preferences
    from distalign.eval.rm import margins_by_pair
    from distalign.metrics import accuracy_vs_truth

    p = known_p_chosen(load_preferences("gold", "test"))
    margins = []
    for name in rows:
        m = margins_by_pair(folder / f"{name}_pair_scores.csv", len(p))  # unscored pairs: NaN
        margins.append(m / np.nanstd(m))
    common = ~np.isnan(margins).any(axis=0)  # the pairs every run scored
    mean = torch.as_tensor(np.mean(margins, axis=0)[common])
    own = [r["accuracy_vs_truth"] for r in rows.values()]
    return {
        "runs": len(margins),
        "pairs": int(common.sum()),
        "ensemble_accuracy_vs_truth": accuracy_vs_truth(mean, torch.zeros_like(mean), p[common]),
        "runs_accuracy_vs_truth_min": min(own),
        "runs_accuracy_vs_truth_max": max(own),
    }


def by_rate(rows: dict[str, dict]) -> dict[float, dict]:
    import numpy as np

    keys = ("accuracy", "accuracy_vs_truth", "ece", "contested_auroc", "vs_scalar",
            "spread_spearman_centred", "component_spread")  # fmt: skip
    out = {}
    for rate in sorted({r["rate"] for r in rows.values() if r["rate"] is not None}):
        rs = [r for r in rows.values() if r["rate"] == rate]
        out[rate] = {
            "seeds": sorted(r["seed"] for r in rs),
            "both_goals": sum(r["meets_auroc"] and r["meets_rho"] for r in rs),
            **{f"mean_{k}": float(np.mean([r[k] for r in rs])) for k in keys},
        }
    return out


def f3(x) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(f3(v) for v in x) + "]"
    return "–" if x is None else f"{x:.3f}"


def markdown(rows: dict[str, dict], rates: dict[float, dict], baseline: Path, ens: dict) -> str:
    lines = [
        "# End-to-end mixture reward models: head learning rate × seed",
        "",
        "`scripts/gpu_check.sh sweep` on one GPU (see `docs/results/README.md` for the machine "
        "and settings); tabulated by `scripts/gpu_sweep_summary.py`. All 800 test pairs, Bayes "
        f"ceiling {next(iter(rows.values()))['bayes_ceiling']:.3f}. AUROC difference: against "
        f"the scalar RM's contested detector (`{baseline}`), same pairs, paired 95% bootstrap "
        f"interval. Goals: that interval above 0, and ρ(spread, centred disagreement) ≥ "
        f"{GOAL_RHO}. Training (s): wall time of the 300 steps, with other runs on the GPU "
        "beside it (`sweep.json`: which ran together, and what stopped a run).",
        "",
        "| run | accuracy (vs truth) | ECE | contested AUROC [95% CI] | minus the scalar RM's "
        "[paired CI] | ρ(spread, centred) | given length | component spread | both goals | "
        "training (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda n: (rows[n]["rate"] or 0, rows[n]["seed"]))
    for name in order:
        r = rows[name]
        mixture = r["rate"] is not None
        secs = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(
            f"| {name} | {f3(r['accuracy'])} ({f3(r.get('accuracy_vs_truth'))}) | "
            f"{f3(r['ece'])} | {f3(r['contested_auroc'])} {f3(r.get('contested_auroc_ci95'))} | "
            f"{f3(r.get('vs_scalar')) + ' ' + f3(r.get('vs_scalar_ci95')) if mixture else '–'} | "
            f"{f3(r.get('spread_spearman_centred'))} | "
            f"{f3(r.get('spread_partial_centred_given_length'))} | "
            f"{f3(r.get('component_spread'))} | "
            f"{('yes' if r['meets_auroc'] and r['meets_rho'] else 'no') if mixture else '–'} | "
            f"{secs} |"
        )
    lines += [
        "",
        "| head learning rate | seeds | both goals | mean accuracy (vs truth) | mean ECE | "
        "mean AUROC minus the scalar's | mean ρ | mean component spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, s in rates.items():
        lines.append(
            f"| {rate:g} | {len(s['seeds'])} | {s['both_goals']} of {len(s['seeds'])} | "
            f"{f3(s['mean_accuracy'])} ({f3(s['mean_accuracy_vs_truth'])}) | "
            f"{f3(s['mean_ece'])} | {s['mean_vs_scalar']:+.3f} | "
            f"{f3(s['mean_spread_spearman_centred'])} | {f3(s['mean_component_spread'])} |"
        )
    lines += [
        "",
        f"An ensemble of all {ens['runs']} runs, the scalar RM's among them (the mean of their "
        f"margins, each divided by its std), reads {ens['ensemble_accuracy_vs_truth']:.3f} "
        f"against the truth on the {ens['pairs']} pairs they all scored; the runs alone "
        f"read {ens['runs_accuracy_vs_truth_min']:.3f}–{ens['runs_accuracy_vs_truth_max']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mix = [r for r in rows.values() if r["rate"] is not None]
    rates = sorted({r["rate"] for r in mix})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [
        ("spread_spearman_centred", "ρ(predicted spread, centred disagreement)", GOAL_RHO),
        ("vs_scalar", "contested AUROC minus the scalar RM's", 0.0),
    ]
    for ax, (key, label, goal) in zip(axes, panels, strict=True):
        for i, rate in enumerate(rates):
            ys = [r[key] for r in mix if r["rate"] == rate]
            xs = [i + 0.06 * (j - (len(ys) - 1) / 2) for j in range(len(ys))]
            ax.scatter(xs, ys, s=30)
            ax.plot([i - 0.3, i + 0.3], [sum(ys) / len(ys)] * 2, color="black", lw=1)
        ax.axhline(goal, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_xlabel("head learning rate (backbone 2e-5)")
        ax.set_title(label, fontsize=10)
    fig.suptitle(
        "End-to-end mixture RMs, one GPU run per point (line: mean; dashed: ρ goal, no difference)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", type=Path, default=Path("docs/results/level2/gpu_sweep"))
    ap.add_argument(
        "--baseline",
        type=Path,
        default=Path("docs/results/level2/pair_scores/scalar.csv"),
        help="the scalar RM's pair scores on the same test pairs",
    )
    args = ap.parse_args()
    rows = runs(args.sweep)
    compare(args.sweep, rows, args.baseline)
    rates = by_rate(rows)
    ens = ensemble_vs_truth(args.sweep, rows)
    (args.sweep / "summary.md").write_text(markdown(rows, rates, args.baseline, ens))
    data = {"runs": rows, "by_rate": {f"{k:g}": v for k, v in rates.items()}, "ensemble": ens}
    (args.sweep / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(rows, args.sweep / "sweep.png")
    print((args.sweep / "summary.md").read_text())


if __name__ == "__main__":
    main()
