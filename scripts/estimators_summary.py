"""Table and plot of the advantage-estimator runs (scripts/measure_estimators.sh).

    .venv/bin/python scripts/estimators_summary.py [--runs runs/estimators]
        [--out docs/results/estimators] [--kl 0.5 1 2] [--objectives]

``--objectives``: the runs of TRL GRPO's objectives instead (``rl_obj_*``, written to
docs/results/objectives by default). Runs at another learning rate (``rl_<name>_lr<rate>_s*``)
come as rows of their own.

Reads each run's in-run evaluations (gold reward overall and per annotator group, the proxy
reward, KL to SFT, on held-out prompts every few steps) and writes ``summary.md`` (gold at
matched KL: each run where its trajectory first reaches the KL, ``metrics.at_first_crossing``,
averaged over seeds with each seed beside; and each run's last evaluation), ``summary.json``
and ``curves.png``.
"""

from __future__ import annotations

from pathlib import Path

from level2_summary import (
    GROUPS,
    eval_curve,
    fmt,
    kl_targets,
    matched,
    matched_rows,
    plot,
    summary_options,
    table_head,
    table_row,
    write_summary,
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
OBJECTIVES = {  # run name rl_obj_<loss_type>: GRPO advantages, num_iterations=2
    "obj_dapo": "PPO clip (dapo, TRL GRPO's default)",
    "obj_cispo": "CISPO (capped, detached ratio)",
    "obj_sapo": "SAPO (soft gate)",
    "obj_vespo": "VESPO (smooth reply weight)",
}
# what the runs compare -> (their names, the folder of their results)
KINDS = {"estimator": (ESTIMATORS, "docs/results/estimators"),
         "objective": (OBJECTIVES, "docs/results/objectives")}  # fmt: skip


def runs_of(runs: Path, names: dict[str, str]) -> dict[str, dict[int, list[dict]]]:
    """estimator -> seed -> the run's in-run evaluations, step order."""
    out: dict[str, dict[int, list[dict]]] = {}
    for est in names:
        for run in sorted(runs.glob(f"rl_{est}_s*")):
            if (run / "final").is_dir():  # finished runs only
                out.setdefault(est, {})[int(run.name.rsplit("_s", 1)[1])] = eval_curve(run)
    return out


def with_other_rates(runs: Path, names: dict[str, str]) -> dict[str, str]:
    """``names`` and each run's variant at another learning rate (``rl_<name>_lr<rate>_s*``,
    measure_estimators.sh's OBJ_LR), labelled with its rate."""
    out = dict(names)
    for name, label in names.items():
        for run in sorted(runs.glob(f"rl_{name}_lr*_s*")):
            variant = run.name.removeprefix("rl_").rsplit("_s", 1)[0]
            out[variant] = f"{label}, lr {variant.rsplit('_lr', 1)[1]}"
    return out


def wall_seconds(runs: Path) -> dict[str, float]:
    """Each stage's wall time by its name, as measure_estimators.sh wrote them
    (logs/seconds.tsv); a stage run again counts its last time."""
    path = runs / "logs" / "seconds.tsv"
    lines = path.read_text().splitlines() if path.is_file() else []
    return {name: float(s) for name, s in (line.split("\t") for line in lines)}


def markdown(curves, table, runs: Path, names: dict[str, str], kind: str) -> str:
    seconds = wall_seconds(runs)
    lines = ["## Gold reward at matched KL (first crossing; mean over seeds, each seed after)", ""]
    lines += table_head(kind, "KL", "gold", "concise", "thorough", "proxy")
    lines += matched_rows(table, names, ("gold_mean", "gold_concise", "gold_thorough", "reward"))
    lines += ["", "## Each run's last evaluation", ""]
    lines += table_head(kind, "seed", "gold at step 0 (SFT)", "step", "KL", "gold", *GROUPS,
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
                    fmt(seconds.get(f"rl_{est}_s{s}"), 0),
                )
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = summary_options(__doc__, "runs/estimators", None, "0.5, 1, 2, 4, 8")
    ap.add_argument("--objectives", action="store_true", help="TRL GRPO's objectives' runs")
    args = ap.parse_args()
    kind = "objective" if args.objectives else "estimator"
    names, default_out = KINDS[kind]
    runs, out = Path(args.runs), Path(args.out or default_out)
    names = with_other_rates(runs, names)
    out.mkdir(parents=True, exist_ok=True)
    curves = runs_of(runs, names)
    table = matched(curves, kl_targets(curves, args.kl, (0.5, 1, 2, 4, 8)))
    if curves:
        plot(curves, out / "curves.png", names=names, panels=PANELS)
    text = markdown(curves, table, runs, names, kind)
    write_summary(out, text, {"matched_kl": table, "curves": curves})


if __name__ == "__main__":
    main()
