"""What the reward models' margins weigh, against what the gold judge weighs, on the test pairs.

    .venv/bin/python scripts/margin_attributes.py [--runs runs/full] [--out docs/results/level2]

The gold judge scores a reply by a weighted sum of six measured attributes (relevance,
completeness, repetition, length, structure, foreign text); each annotator has their own
weights. This script reads each reward model's per-pair margins (``rm eval``'s
``*_pair_scores.csv``: a distributional head's margin of expectations) and fits them by
least squares on the pairs' attribute differences: the fitted weights say what each RM
learned to reward (on the logit scale for a calibrated scalar RM, like the judge's ×SCALE),
R² how much of its margin the attributes explain at all (the rest is noise, as the judge
sees it). ``foreign`` barely varies between the replies of a prompt (std 0.006), so its
fitted weight is not to be read.

It also gives two references for the accuracy goal: the Bayes ceiling, and a Bradley–Terry
model that *knows* the six attributes and learns only their weights, by logistic regression,
from the same 2,400 training labels. If the latter reaches the ceiling, the RM's gap lies in
reading the attributes from text, not in the number of labels.
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

import numpy as np
import torch
from level2_summary import RM_FOLDERS  # scripts/, beside this one
from scipy.optimize import minimize

from distalign.eval.rm import margins_by_pair
from distalign.gold.judge import ATTRIBUTES, SCALE, annotator_weights
from distalign.gold.truth import read_jsonl_gz
from distalign.metrics import accuracy_vs_truth, bayes_accuracy, pairwise_accuracy

GOLD = Path(__file__).parents[1] / "src" / "distalign" / "gold" / "data"


@cache
def benchmark_replies() -> dict[tuple[str, int], dict]:
    """The shipped benchmark's replies by (prompt_id, reply_id), read once."""
    return {(r["prompt_id"], r["reply_id"]): r for r in read_jsonl_gz(GOLD / "replies.jsonl.gz")}


def attribute_differences(
    split: str, rows: list[dict] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_attr) chosen − rejected attributes of the split's pairs (or of ``rows``, pairs
    of the shipped benchmark), and P(chosen) (N,)."""
    replies = benchmark_replies()
    rows = read_jsonl_gz(GOLD / f"{split}.jsonl.gz") if rows is None else rows

    def attrs(row, side):
        reply = replies[(row["prompt_id"], row[f"{side}_reply_id"])]
        return [reply["attributes"][a] for a in ATTRIBUTES]

    d = np.array([np.subtract(attrs(r, "chosen"), attrs(r, "rejected")) for r in rows])
    return d, np.array([r["p_chosen"] for r in rows])


def fit_bradley_terry(d: np.ndarray) -> np.ndarray:
    """Weights w of P(chosen ≻ rejected) = σ(w·d) by maximum likelihood (no intercept: the
    order of a pair carries no information), for pairs written chosen-first."""

    def nll(w):
        z = d @ w
        return np.logaddexp(0.0, -z).sum(), -(d.T @ (1.0 / (1.0 + np.exp(z))))

    return minimize(nll, np.zeros(d.shape[1]), jac=True, method="L-BFGS-B").x


def accuracies(margin: np.ndarray, p_chosen: np.ndarray) -> dict[str, float]:
    """Accuracy of the margin's sign on the drawn labels (a test pair is written chosen
    first, so it is the share above 0; ties ½) and against the truth."""
    m, zero = torch.as_tensor(margin), torch.zeros(len(margin), dtype=torch.float64)
    return {"accuracy": pairwise_accuracy(m, zero),
            "accuracy_vs_truth": accuracy_vs_truth(m, zero, p_chosen)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/full")
    ap.add_argument("--out", default="docs/results/level2")
    args = ap.parse_args()
    test_d, p_test = attribute_differences("test")
    train_d, _ = attribute_differences("train")
    weights, _, prob = annotator_weights()
    population = SCALE * (prob @ weights)  # the mean annotator's weights, on the logit scale
    learned = fit_bradley_terry(train_d)
    out: dict = {
        "attributes": list(ATTRIBUTES),
        "judge_mean_annotator": population.tolist(),
        "test_pairs": len(test_d),
        "bayes_ceiling": bayes_accuracy(p_test),
        "attributes_known_weights_learned": {"weights": learned.tolist()}
        | accuracies(test_d @ learned, p_test),
        "reward_models": {},
    }
    for name, folder in RM_FOLDERS.items():
        path = Path(args.runs) / folder / "eval_gold_test_pair_scores.csv"
        if not path.is_file():
            continue
        margin = margins_by_pair(path, len(test_d))
        if np.isnan(margin).any():
            scored = int((~np.isnan(margin)).sum())
            raise SystemExit(f"{path}: scores {scored} of the {len(test_d)} test pairs")
        w, *_ = np.linalg.lstsq(test_d, margin, rcond=None)
        residual = margin - test_d @ w
        # R² of a fit without intercept, against the margins' own variance
        r2 = 1 - (residual**2).sum() / ((margin - margin.mean()) ** 2).sum()
        out["reward_models"][name] = {"weights": w.tolist(), "r2": float(r2)}
        out["reward_models"][name] |= accuracies(margin, p_test)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "margin_attributes.json").write_text(json.dumps(out, indent=2) + "\n")
    head = ("| weights on | " + " | ".join(ATTRIBUTES)
            + " | R² | accuracy of the margin's sign (against the truth) |")  # fmt: skip
    lines = [head, "|" + "---|" * (len(ATTRIBUTES) + 3)]
    k = out["attributes_known_weights_learned"]
    rows = [("judge, mean annotator (×SCALE)", population, None, None, None),
            ("attributes known, weights from 2,400 labels", learned, None, k["accuracy"],
             k["accuracy_vs_truth"])]  # fmt: skip
    rows += [(n, np.array(r["weights"]), r["r2"], r["accuracy"], r["accuracy_vs_truth"])
             for n, r in out["reward_models"].items()]  # fmt: skip
    for name, w, r2, acc, vs_truth in rows:
        cells = [f"{x:+.2f}" for x in w]
        cells += ["–" if r2 is None else f"{r2:.2f}",
                  "–" if acc is None else f"{acc:.3f} ({vs_truth:.3f})"]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nBayes ceiling {out['bayes_ceiling']:.3f} on {len(test_d)} test pairs.")
    text = "\n".join(lines) + "\n"
    (Path(args.out) / "margin_attributes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
