"""Table and plot of the advantage-estimator runs (scripts/measure_estimators.sh).

    .venv/bin/python scripts/estimators_summary.py [--runs runs/estimators]
        [--out docs/results/estimators] [--kl 0.5 1 2]

Reads each run's in-run evaluations (gold reward overall and per annotator group, the proxy
reward, KL to SFT, on held-out prompts every few steps) and writes ``summary.md`` (gold at
matched KL: each run where its trajectory first reaches the KL, ``metrics.at_first_crossing``,
averaged over seeds with each seed beside; and each run's last evaluation), ``summary.json``
and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from level2_summary import (
    GROUPS,
    eval_curve,
    fmt,
    kl_targets,
    matched,
    matched_rows,
    plot,
    table_head,
    table_row,
)

PANELS = [("gold_mean", "gold reward (all annotators)"),
          ("gold_concise", "gold reward, concise group"),
          ("reward", "proxy: the scalar RM's reward, change from step 0")]  # fmt: skip
ESTIMATORS = {
    "rloo": "RLOO (leave-one-out mean)",
    "grpo": "GRPO (group mean, / group std)",
    "dr_grpo": "Dr. GRPO (group mean)",
    "reinforce_pp": "REINFORCE++ (batch whitening)",
    "remax": "ReMax (greedy reply's reward)",
}


def runs_of(runs: Path) -> dict[str, dict[int, list[dict]]]:
    """estimator -> seed -> the run's in-run evaluations, step order."""
    out: dict[str, dict[int, list[dict]]] = {}
    for est in ESTIMATORS:
        for run in sorted(runs.glob(f"rl_{est}_s*")):
            if (run / "final").is_dir():  # finished runs only
                out.setdefault(est, {})[int(run.name.rsplit("_s", 1)[1])] = eval_curve(run)
    return out


def seconds_of(runs: Path, est: str, seed: int) -> float | None:
    """The run's wall time, as measure_estimators.sh wrote it (logs/seconds.tsv)."""
    path = runs / "logs" / "seconds.tsv"
    times = (
        dict(line.split("\t") for line in path.read_text().splitlines()) if path.is_file() else {}
    )
    return float(times[f"rl_{est}_s{seed}"]) if f"rl_{est}_s{seed}" in times else None


def markdown(curves, table, runs: Path) -> str:
    lines = ["## Gold reward at matched KL (first crossing; mean over seeds, each seed after)", ""]
    lines += table_head("estimator", "KL", "gold", "concise", "thorough", "proxy")
    lines += matched_rows(
        table, ESTIMATORS, ("gold_mean", "gold_concise", "gold_thorough", "reward")
    )
    lines += ["", "## Each run's last evaluation", ""]
    lines += table_head("estimator", "seed", "gold at step 0 (SFT)", "step", "KL", "gold", *GROUPS,
                        "proxy", "wall s")  # fmt: skip
    for est, seeds in curves.items():
        for s, c in sorted(seeds.items()):
            last = c[-1]
            lines.append(
                table_row(
                    est,
                    s,
                    fmt(c[0]["gold_mean"]),
                    last["step"],
                    fmt(last["kl"], 2),
                    fmt(last["gold_mean"]),
                    *(fmt(last[f"gold_{g}"]) for g in GROUPS),
                    fmt(last["reward"]),
                    fmt(seconds_of(runs, est, s), 0),
                )
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/estimators")
    ap.add_argument("--out", default="docs/results/estimators")
    ap.add_argument("--kl", type=float, nargs="*", help="KL targets (default: 0.5, 1, 2, ...)")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = runs_of(runs)
    targets = kl_targets(curves, args.kl, (0.5, 1, 2, 4, 8))
    table = matched(curves, targets)
    if curves:
        plot(curves, out / "curves.png", names=ESTIMATORS, panels=PANELS)
    (out / "summary.md").write_text(markdown(curves, table, runs))
    payload = {"matched_kl": table, "curves": curves}
    (out / "summary.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
