"""Tabulate the reward-model recipes of ``scripts/gpu_check.sh recipes``: the scalar and mixture
RMs of the gold benchmark trained harder (higher learning rates, more epochs), evaluated on all
800 test pairs after every epoch, against the accuracy goal (within 0.03 of the Bayes ceiling).

    python scripts/gpu_recipes_summary.py [--runs docs/results/level2/gpu_recipes]

Reads each run's ``RUN_evals.jsonl`` (the evaluations during training; a run the deadline cut
keeps those it made) and, for runs that finished, ``RUN.json`` and ``RUN_pair_scores.csv``.
RUN is ``HEAD_lrRATE_Nep_sSEED``. Finished runs are compared with the 1-epoch scalar RM of
``configs/rm_scalar_full.yaml`` on the same pairs (accuracy against the truth, resampling test
prompts), and all of them are averaged into one ensemble. Writes ``summary.md``,
``summary.json`` and ``recipes.png`` into the folder.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from gpu_sweep_summary import ensemble_vs_truth, f3
from rm_learning_curve import paired

RUN = re.compile(r"(?P<head>[a-z]+)_lr(?P<rate>[^_]+)_(?P<epochs>\d+)ep_s(?P<seed>\d+)$")
STEPS_PER_EPOCH = 300  # 2,400 training pairs at batch 8 (the plans' eval_steps=300)
GOAL_GAP = 0.03  # held-out accuracy within this of the Bayes ceiling


def read_runs(folder: Path, steps_per_epoch: int = STEPS_PER_EPOCH) -> dict[str, dict]:
    """RUN -> its head, rate, epochs, seed and evaluations [{epoch, metrics...}] (epoch: the
    step over ``steps_per_epoch``), plus its final evaluation (scalars only) when it finished."""
    out = {}
    for path in sorted(folder.glob("*_evals.jsonl")):
        name = path.name.removesuffix("_evals.jsonl")
        m = RUN.match(name)
        if not m:
            print(f"{path}: not a recipe run (HEAD_lrRATE_Nep_sSEED), left out")
            continue
        evals = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            e = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
            evals.append({"epoch": row["step"] / steps_per_epoch, **e})
        final = folder / f"{name}.json"
        done = final.is_file() and (folder / f"{name}_pair_scores.csv").is_file()
        out[name] = {
            "head": m["head"],
            "rate": float(m["rate"]),
            "rate_text": m["rate"],  # as the plan wrote it (5e-5, not 5e-05)
            "epochs": int(m["epochs"]),
            "seed": int(m["seed"]),
            "evaluations": evals,
            "finished": done,
            "final": {
                k: v for k, v in json.loads(final.read_text()).items() if not isinstance(v, dict)
            }
            if done
            else None,
        }
    return out


def best_and_goal(runs: dict[str, dict]) -> dict:
    """The highest accuracy (observed and against the truth) any evaluation reached, and how
    many evaluations reached the goal either way."""
    evals = [(name, e) for name, r in runs.items() for e in r["evaluations"]]
    if not evals:
        raise SystemExit("no evaluations: no run of the folder evaluated during training")
    ceiling = evals[0][1]["bayes_ceiling"]
    goal = ceiling - GOAL_GAP

    def best(key: str) -> dict:  # the evaluation with the highest ``key``: its run and epoch
        name, e = max(evals, key=lambda ne: ne[1][key])
        return {"run": name, "epoch": e["epoch"], key: e[key]}

    return {
        "bayes_ceiling": ceiling,
        "goal": goal,
        "evaluations": len(evals),
        "best_vs_truth": best("accuracy_vs_truth"),
        "best_observed": best("accuracy"),
        "reach_goal_vs_truth": sum(e["accuracy_vs_truth"] >= goal for _, e in evals),
        "reach_goal_observed": sum(e["accuracy"] >= goal for _, e in evals),
    }


def by_recipe(runs: dict[str, dict]) -> list[dict]:
    """Mean accuracy against the truth over seeds, per recipe (head, rate, epochs) and epoch."""
    import numpy as np

    cells: dict[tuple, list[float]] = {}
    for r in runs.values():
        for e in r["evaluations"]:
            key = (r["head"], r["rate"], r["rate_text"], r["epochs"], e["epoch"])
            cells.setdefault(key, []).append(e["accuracy_vs_truth"])
    return [
        {
            "head": h,
            "rate": rate,
            "rate_text": text,
            "epochs": n,
            "epoch": ep,
            "seeds": len(v),
            "mean_accuracy_vs_truth": float(np.mean(v)),
            "min": min(v),
            "max": max(v),
        }
        for (h, rate, text, n, ep), v in sorted(cells.items())
    ]


def contested(folder: Path, runs: dict, baseline: Path, vs_base: dict) -> None:
    """Each finished mixture's contested AUROC minus the 1-epoch scalar RM's and minus the
    scalar RM's trained at the same backbone rate, epochs and seed (its twin: the heads and
    the head's rate differ), paired bootstrap over pairs."""
    from distalign.eval.rm import compare_contested

    for name, r in runs.items():
        if not r["finished"] or r["head"] == "scalar":
            continue
        d = compare_contested(folder / f"{name}_pair_scores.csv", baseline)
        vs_base[name]["auroc_minus_1_epoch_scalar"] = [d["difference"], d["lo"], d["hi"]]
        twin = folder / f"scalar_lr{r['rate_text']}_{r['epochs']}ep_s{r['seed']}_pair_scores.csv"
        if twin.is_file():
            d = compare_contested(folder / f"{name}_pair_scores.csv", twin)
            vs_base[name]["auroc_minus_same_recipe_scalar"] = [d["difference"], d["lo"], d["hi"]]


def markdown(runs: dict, goal: dict, recipes: list[dict], vs_base: dict, ens: dict) -> str:
    lines = [
        "# Reward models trained harder: learning rate × epochs, evaluated after every epoch",
        "",
        "`scripts/gpu_check.sh OUT recipes` on one GPU (plans `scripts/gpu_recipes.txt` and "
        "`scripts/gpu_recipes_2ep.txt`; see `docs/results/README.md` for the machine and "
        "settings); tabulated by `scripts/gpu_recipes_summary.py`. All 2,400 training pairs, "
        f"all 800 test pairs, Bayes ceiling {goal['bayes_ceiling']:.3f}, goal ≥ "
        f"{goal['goal']:.3f}. Epoch *k of N*: the evaluation after epoch k of a run whose "
        "cosine decay spans N epochs (before the end of the decay when k < N). Picking the "
        "best epoch by these numbers would pick on the test pairs: read them as a curve.",
        "",
        "| run | epoch | accuracy | against the truth | ECE | contested AUROC [95% CI] | "
        "ρ(spread, centred) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        for e in r["evaluations"]:
            lines.append(
                f"| {name} | {e['epoch']:g} of {r['epochs']} | {f3(e['accuracy'])} | "
                f"{f3(e['accuracy_vs_truth'])} | {f3(e['ece'])} | "
                f"{f3(e['contested_auroc'])} {f3(e.get('contested_auroc_ci95'))} | "
                f"{f3(e.get('spread_spearman_centred'))} |"
            )
    lines += [
        "",
        "Mean over seeds, against the truth:",
        "",
        "| head | learning rate | epochs (decay) | after epoch | seeds | mean | range |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in recipes:
        lines.append(
            f"| {c['head']} | {c['rate_text']} | {c['epochs']} | {c['epoch']:g} | {c['seeds']} | "
            f"{f3(c['mean_accuracy_vs_truth'])} | {f3(c['min'])}–{f3(c['max'])} |"
        )
    b, o = goal["best_vs_truth"], goal["best_observed"]
    lines += [
        "",
        f"Of {goal['evaluations']} evaluations, {goal['reach_goal_vs_truth']} reach the goal "
        f"against the truth and {goal['reach_goal_observed']} in observed accuracy. The "
        f"highest: {b['accuracy_vs_truth']:.3f} against the truth ({b['run']}, epoch "
        f"{b['epoch']:g}), {o['accuracy']:.3f} observed ({o['run']}, epoch {o['epoch']:g}).",
        "",
        "Finished runs against the 1-epoch scalar RM of `configs/rm_scalar_full.yaml` (lr 2e-5, "
        "on the CPU: `pair_scores/scalar.csv`), accuracy against the truth on the same pairs, "
        "95% interval resampling the test prompts:",
        "",
        "| run (after its last epoch) | against the truth | minus the 1-epoch scalar RM's | "
        "contested AUROC minus the 1-epoch scalar RM's | … minus the scalar RM's of the same "
        "backbone rate, epochs and seed |",
        "|---|---|---|---|---|",
    ]

    def diff(d: list | None) -> str:  # [difference, lo, hi]
        return "–" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"

    for name, d in vs_base.items():
        lines.append(
            f"| {name} | {f3(d['accuracy_vs_truth_a'])} | "
            f"{diff([d['difference'], *d['difference_ci95']])} | "
            f"{diff(d.get('auroc_minus_1_epoch_scalar'))} | "
            f"{diff(d.get('auroc_minus_same_recipe_scalar'))} |"
        )
    lines += [
        "",
        "(The accuracy intervals resample the 80 test prompts; the AUROC ones resample pairs, "
        "as `eval.rm.compare_contested` does, and are likely too narrow.)",
    ]
    lines += [
        "",
        f"An ensemble of the {ens['runs']} finished runs (the mean of their margins, each "
        f"divided by its std) reads {ens['ensemble_accuracy_vs_truth']:.3f} against the truth "
        f"on the {ens['pairs']} pairs they all scored; the runs alone read "
        f"{ens['runs_accuracy_vs_truth_min']:.3f}–{ens['runs_accuracy_vs_truth_max']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def plot(runs: dict, goal: dict, baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["rate"] for r in runs.values()})
    colour = {rate: plt.cm.viridis(i / max(1, len(rates) - 1)) for i, rate in enumerate(rates)}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in runs.values():
        xs = [e["epoch"] for e in r["evaluations"]]
        ys = [e["accuracy_vs_truth"] for e in r["evaluations"]]
        scalar = r["head"] == "scalar"
        ax.plot(
            xs,
            ys,
            "-" if scalar else "--",
            marker="o" if scalar else "^",
            fillstyle="full" if r["epochs"] == 3 else "none",
            color=colour[r["rate"]],
            alpha=0.8,
            label=f"{r['head']} lr {r['rate_text']}, {r['epochs']} ep",
        )
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))  # one legend entry per recipe
    ax.axhline(goal["bayes_ceiling"], color="black", lw=1)
    ax.axhline(goal["goal"], color="black", ls="--", lw=1)
    ax.axhline(baseline, color="grey", ls=":", lw=1)
    ax.text(0.95, goal["bayes_ceiling"] + 0.001, "Bayes ceiling", fontsize=8, va="bottom")
    ax.text(0.95, goal["goal"] + 0.001, "goal", fontsize=8, va="bottom")
    ax.text(
        0.95,
        baseline + 0.001,
        "1-epoch scalar RM, lr 2e-5 (CPU)",
        fontsize=8,
        va="bottom",
        color="grey",
    )
    ax.set_xticks([1, 2, 3])
    ax.set_xlabel(
        "epochs done (circles: scalar, triangles: mixture; filled: 3-epoch decay, hollow: 2-epoch)"
    )
    ax.set_ylabel("held-out accuracy against the truth")
    ax.set_title("Reward models trained harder, one line per run (800 test pairs)", fontsize=10)
    ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("docs/results/level2/gpu_recipes"))
    ap.add_argument(
        "--baseline",
        type=Path,
        default=Path("docs/results/level2/pair_scores/scalar.csv"),
        help="the 1-epoch scalar RM's pair scores on the same test pairs",
    )
    ap.add_argument(
        "--steps-per-epoch",
        type=int,
        default=STEPS_PER_EPOCH,
        help="optimizer steps in one epoch (300: 2,400 pairs at batch 8)",
    )
    args = ap.parse_args()
    runs = read_runs(args.runs, args.steps_per_epoch)
    goal = best_and_goal(runs)
    recipes = by_recipe(runs)
    done = {n: r for n, r in runs.items() if r["finished"]}
    vs_base = {n: paired(args.runs / f"{n}_pair_scores.csv", args.baseline) for n in done}
    contested(args.runs, runs, args.baseline, vs_base)
    rows = {n: {"accuracy_vs_truth": r["final"]["accuracy_vs_truth"]} for n, r in done.items()}
    ens = ensemble_vs_truth(args.runs, rows)
    if not done:
        raise SystemExit(f"{args.runs}: no run finished (no RUN.json with its pair scores)")
    baseline = next(iter(vs_base.values()))["accuracy_vs_truth_b"]
    (args.runs / "summary.md").write_text(markdown(runs, goal, recipes, vs_base, ens))
    data = {
        "goal": goal,
        "by_recipe": recipes,
        "vs_1_epoch_scalar": vs_base,
        "ensemble": ens,
        "runs": runs,
    }
    (args.runs / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(runs, goal, baseline, args.runs / "recipes.png")
    print((args.runs / "summary.md").read_text())


if __name__ == "__main__":
    main()
