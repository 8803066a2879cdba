"""How a reward model's held-out accuracy grows with the number of training labels.

The gold benchmark's 2,400 training pairs come from 240 prompts (10 pairs each), in a file
grouped by kind of prompt. This script draws nested subsets of whole prompts at random
(seeded; all pairs of each prompt kept), so a smaller training set is a random sample of the
benchmark's prompts, not its first few kinds. The draw is not stratified: a small subset may
hold a kind of prompt more or less often than the full set. With the recipe's one epoch,
fewer pairs also means fewer optimiser steps, as it would for a user with less data.

    python scripts/rm_learning_curve.py subsets --out runs/lc --pairs 300 600 1200 --seeds 0 1
    distalign rm train configs/rm_scalar_full.yaml dataset_name=runs/lc/s0/train_600.jsonl \\
        eval_dataset_name=gold seed=0 output_dir=runs/lc/s0/rm_600
    distalign rm eval model_name_or_path=runs/full/rm_scalar/final max_length=384 \\
        output_file=runs/lc/rm_2400_s0_eval.json
    python scripts/rm_learning_curve.py summary --runs runs/lc \\
        --full 2400:runs/lc/rm_2400_s0_eval.json --out docs/results/level2/learning_curve.json

``summary`` reads every ``runs/lc/s*/rm_*/summary.json`` (and ``--full``, runs trained
elsewhere, such as the one on all 2,400 pairs) and fits accuracy against the truth
(``accuracy_vs_truth``: without the labels' draw noise) as a line in log₂(pairs), then says
how many pairs that line needs to reach the goal (the Bayes ceiling minus 0.03), with the
slope's standard error. That is an extrapolation, and likely an optimistic one: a curve that
flattens as it nears the ceiling needs more pairs than the line.

``paired A.csv B.csv`` compares two reward models on the same test pairs (``rm eval``'s
``…_pair_scores.csv``): the difference in accuracy against the truth, A − B, with a 95%
bootstrap interval that resamples test prompts (a prompt's ten pairs are not independent).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
from margin_attributes import (  # scripts/
    GOLD,
    accuracies,
    attribute_differences,
    fit_bradley_terry,
)

from distalign.gold.truth import read_jsonl_gz


def subsets(out: Path, pairs: list[int], seeds: list[int]) -> None:
    rows = read_jsonl_gz(GOLD / "train.jsonl.gz")
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt_id"]].append(row)
    keys = list(by_prompt)  # file order: grouped by kind of prompt
    per_prompt = len(rows) / len(keys)
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(keys))
        for n in sorted(pairs):
            n_prompts = round(n / per_prompt)
            if n_prompts * per_prompt != n or not 0 < n_prompts <= len(keys):
                raise SystemExit(
                    f"--pairs {n}: a multiple of {per_prompt:g} (pairs per prompt) "
                    f"up to {len(rows)}"
                )
            kept = [keys[i] for i in order[:n_prompts]]  # nested: a prefix of one order
            path = out / f"s{seed}" / f"train_{n}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for key in kept:
                    for row in by_prompt[key]:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(f"{path}: {n_prompts} prompts, {sum(len(by_prompt[k]) for k in kept)} pairs")


def read_run(path: Path) -> dict | None:
    """A run folder's held-out metrics (its ``summary.json``), or an ``rm eval`` JSON file."""
    if path.is_file():
        return json.loads(path.read_text())
    summary = path / "summary.json"
    return json.loads(summary.read_text())["eval"] if summary.exists() else None


def summary(runs: Path, full: list[Path], out: Path | None) -> dict:
    points = []
    for run in sorted(runs.glob("s*/rm_*")):
        seed = re.fullmatch(r"s(\d+)", run.parent.name)
        n = re.fullmatch(r"rm_(\d+)", run.name)
        ev = read_run(run)
        if seed and n and ev:
            subset = run.parent / f"train_{n[1]}.jsonl"
            rows = [json.loads(line) for line in subset.open(encoding="utf-8")]
            points.append(
                {"run": str(run), "pairs": int(n[1]), "seed": int(seed[1]), **pick(ev)}
                | {"attributes_known_vs_truth": attributes_known(rows)}
            )
    for spec in full:
        n, _, run = spec.partition(":")
        ev = read_run(Path(run))
        if ev:
            points.append(
                {"run": run, "pairs": int(n), "seed": 0, **pick(ev)}
                | {"attributes_known_vs_truth": attributes_known(None)}
            )
    if not points:
        raise SystemExit(f"no finished runs under {runs}")
    points.sort(key=lambda p: p["pairs"])
    ceiling = points[0]["bayes_ceiling"]
    if any(abs(p["bayes_ceiling"] - ceiling) > 1e-9 for p in points):
        raise SystemExit("the runs were evaluated on different pairs (their ceilings differ)")
    goal = ceiling - 0.03
    x = np.log2([p["pairs"] for p in points])
    result: dict = {"points": points, "bayes_ceiling": ceiling, "goal": goal}
    for key in ("accuracy_vs_truth", "accuracy"):
        y = np.array([p[key] for p in points])
        if len(set(x)) < 2:
            continue
        (slope, intercept), cov = (
            np.polyfit(x, y, 1, cov=True) if len(x) > 3 else (np.polyfit(x, y, 1), None)
        )
        fit = {
            "per_doubling": float(slope),
            "per_doubling_se": float(np.sqrt(cov[0, 0])) if cov is not None else None,
            "intercept": float(intercept),
            "fitted_pairs": [int(min(2**x)), int(max(2**x))],
        }
        if slope > 0 and (goal - intercept) / slope < 60:  # else: beyond any data set
            fit["pairs_for_goal_extrapolated"] = float(2 ** ((goal - intercept) / slope))
        result[f"fit_{key}"] = fit
    print(f"Bayes ceiling {ceiling:.3f}; goal {goal:.3f}")
    print(
        "| pairs | seed | accuracy | accuracy against the truth | ECE | "
        "attributes known, same pairs (against the truth) |"
    )
    print("|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p['pairs']} | {p['seed']} | {p['accuracy']:.3f} | "
            f"{p['accuracy_vs_truth']:.3f} | {p['ece']:.3f} | "
            f"{p['attributes_known_vs_truth']:.3f} |"
        )
    for key in ("accuracy_vs_truth", "accuracy"):
        fit = result.get(f"fit_{key}")
        if fit:
            se = fit["per_doubling_se"]
            slope = f"{fit['per_doubling']:+.4f}" + (f" ± {se:.4f}" if se is not None else "")
            need = fit.get("pairs_for_goal_extrapolated")
            print(
                f"{key}: {slope} per doubling of the pairs; extrapolated, the line reaches the "
                f"goal at {need:,.0f} pairs (likely an underestimate)"
                if need
                else f"{key}: {slope} per doubling (does not reach the goal)"
            )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out.with_suffix(".png"))
    return result


@cache
def test_attribute_differences() -> tuple[np.ndarray, np.ndarray]:
    return attribute_differences("test")


def attributes_known(rows: list[dict] | None) -> float:
    """Accuracy against the truth, on the test pairs, of a Bradley–Terry model that knows the
    judge's six attributes and learns only their weights from ``rows`` (None: all training
    pairs): what the same labels give a model that need not learn to read the text."""
    test_d, p_test = test_attribute_differences()
    weights = fit_bradley_terry(attribute_differences("train", rows)[0])
    return accuracies(test_d @ weights, p_test)["accuracy_vs_truth"]


def paired(a: Path, b: Path, n: int = 2000) -> dict:
    """Accuracy against the truth of A minus B on the gold test pairs both score."""
    import torch

    from distalign.eval.rm import margins_by_pair
    from distalign.metrics import bootstrap_interval, expected_correct

    rows = read_jsonl_gz(GOLD / "test.jsonl.gz")
    p = np.array([r["p_chosen"] for r in rows])
    prompt = np.array([r["prompt_id"] for r in rows])
    ma, mb = margins_by_pair(a, len(rows)), margins_by_pair(b, len(rows))
    both = ~np.isnan(ma) & ~np.isnan(mb)

    def right(margin: np.ndarray) -> np.ndarray:  # each scored pair's accuracy vs the truth
        m = torch.as_tensor(margin[both])
        return expected_correct(m, torch.zeros_like(m), p[both]).numpy()

    right_a, right_b = right(ma), right(mb)
    diff = right_a - right_b
    prompts = prompt[both]
    per_prompt = np.array([diff[prompts == q].mean() for q in np.unique(prompts)])
    lo, hi = bootstrap_interval(per_prompt, n)
    result = {
        "a": str(a),
        "b": str(b),
        "pairs": int(both.sum()),
        "prompts": len(per_prompt),
        "accuracy_vs_truth_a": float(right_a.mean()),
        "accuracy_vs_truth_b": float(right_b.mean()),
        "difference": float(diff.mean()),
        "difference_ci95": [lo, hi],
    }
    print(
        f"accuracy against the truth on {result['pairs']} pairs: "
        f"{result['accuracy_vs_truth_a']:.3f} − {result['accuracy_vs_truth_b']:.3f} = "
        f"{result['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (resampling "
        f"{result['prompts']} prompts)"
    )
    return result


def pick(ev: dict) -> dict:
    return {k: ev[k] for k in ("accuracy", "accuracy_vs_truth", "ece", "bayes_ceiling")}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.8))
    pts = result["points"]
    pairs = [p["pairs"] for p in pts]
    ax.scatter(pairs, [p["accuracy_vs_truth"] for p in pts], label="scalar RM (135M, end to end)")
    ax.scatter(
        pairs,
        [p["attributes_known_vs_truth"] for p in pts],
        marker="x",
        label="BT on the six attributes, same pairs",
    )
    fit = result.get("fit_accuracy_vs_truth")
    if fit:
        xs = np.geomspace(min(pairs), 2 * max(pairs), 50)
        ax.plot(
            xs,
            fit["intercept"] + fit["per_doubling"] * np.log2(xs),
            "--",
            label="line in log(pairs), extended 2×",
        )
    ax.axhline(result["bayes_ceiling"], color="k", lw=1, label="Bayes ceiling")
    ax.axhline(result["goal"], color="r", lw=1, ls=":", label="goal (ceiling − 0.03)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(pairs)), [str(n) for n in sorted(set(pairs))])
    ax.set_xlabel("training pairs")
    ax.set_ylabel("held-out accuracy against the truth")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subsets", help="write nested prompt subsets of the training pairs")
    s.add_argument("--out", type=Path, default=Path("runs/lc"))
    s.add_argument("--pairs", type=int, nargs="+", default=[300, 600, 1200])
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    m = sub.add_parser("summary", help="table and log-linear fit of finished runs")
    m.add_argument("--runs", type=Path, default=Path("runs/lc"))
    m.add_argument(
        "--full",
        nargs="*",
        default=["2400:runs/lc/rm_2400_s0_eval.json"],
        help="PAIRS:PATH of runs trained elsewhere (a run folder or an rm eval JSON)",
    )
    m.add_argument("--out", type=Path, default=None, help="JSON (and a PNG beside it)")
    c = sub.add_parser("paired", help="A − B in accuracy against the truth, same test pairs")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.cmd == "paired":
        result = paired(args.a, args.b)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    elif args.cmd == "subsets":
        subsets(args.out, args.pairs, args.seeds)
    else:
        summary(args.runs, args.full, args.out)


if __name__ == "__main__":
    main()
