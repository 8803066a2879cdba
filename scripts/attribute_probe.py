"""How much of the gold judge's attributes a reward model's features can be made to read.

    python scripts/spread_search.py extract --model runs/full/rm_scalar/final   # features.npz
    python scripts/attribute_probe.py --features runs/full/features.npz \\
        --out docs/results/level2/attribute_probe.json

The features are each benchmark reply's last hidden state under a trained reward model's
backbone (the vector its head reads). For each of the judge's six attributes, a ridge
regression from the features to the attribute's value is fitted on the training replies, with
both centred within each prompt (a pairwise label only ever sees differences between replies
of one prompt); the ridge strength is chosen by 5-fold cross-validation over training prompts,
so the test replies choose nothing. The script reports each attribute's R² on the test replies.

It then scores the test pairs with the judge's structure made up of those read-outs: the
margin is the Bradley–Terry weights that a model knowing the true attributes learns from the
2,400 training labels (``margin_attributes.py``), applied to the pairs' *read* attribute
differences. The read-outs are trained on the exact attribute values of 1,200 replies, which
no preference data set gives: an optimistic reference for what these features carry of the
attributes, not a bound (the weights are not refitted to the noisy read-outs, and a head
trained on the features directly may use more than the attributes) and not a reward model to
ship. Last, each attribute in turn is read exactly (its true difference, the others as read):
the accuracy that brings says which read-out's error costs most. ``foreign`` barely varies
within a prompt, so its weight, and its line there, are not to be read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from margin_attributes import (  # scripts/
    GOLD,
    accuracies,
    attribute_differences,
    benchmark_replies,
    fit_bradley_terry,
)

from distalign.gold.judge import ATTRIBUTES
from distalign.gold.truth import read_jsonl_gz

RIDGE = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def centre_within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rows minus the mean of their group's rows, (N, D)."""
    out = values.astype(np.float64, copy=True)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] -= out[rows].mean(axis=0)
    return out


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Weights (D,) minimising |x w − y|² + lam |w|²."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def group_folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """Each row's fold, 0 .. folds-1, whole groups (prompts) together, groups shuffled with
    a fixed seed."""
    order = np.random.default_rng(0).permutation(np.unique(groups))
    fold_of = {g: i % folds for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def choose_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """The ridge strength in ``RIDGE`` with the least held-out squared error over ``folds``
    folds of whole groups (prompts)."""
    fold = group_folds(groups, folds)
    errors = []
    for lam in RIDGE:
        err = 0.0
        for k in range(folds):
            fit, held = fold != k, fold == k
            err += float(((x[held] @ ridge(x[fit], y[fit], lam) - y[held]) ** 2).sum())
        errors.append(err)
    return RIDGE[int(np.argmin(errors))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=Path, default=Path("runs/full/features.npz"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    data = np.load(args.features, allow_pickle=False)
    keys = [(str(p), int(r)) for p, r in zip(data["prompt_id"], data["reply_id"], strict=True)]
    replies = benchmark_replies()
    attrs = np.array([[replies[k]["attributes"][a] for a in ATTRIBUTES] for k in keys])
    prompt = np.array([p for p, _ in keys])
    rows = read_jsonl_gz(GOLD / "test.jsonl.gz")
    test_prompts = {r["prompt_id"] for r in rows}
    test = np.array([p in test_prompts for p in prompt])

    x = centre_within(data["features"], prompt)
    x = (x - x[~test].mean(axis=0)) / (x[~test].std(axis=0) + 1e-6)
    y = centre_within(attrs, prompt)
    read = np.zeros_like(y)
    per_attribute = {}
    for j, name in enumerate(ATTRIBUTES):
        lam = choose_ridge(x[~test], y[~test, j], prompt[~test])
        read[:, j] = x @ ridge(x[~test], y[~test, j], lam)
        per_attribute[name] = {"r2_test": r_squared(y[test, j], read[test, j]), "ridge": lam}

    index = {k: i for i, k in enumerate(keys)}
    read_diff = np.array(
        [
            read[index[(r["prompt_id"], r["chosen_reply_id"])]]
            - read[index[(r["prompt_id"], r["rejected_reply_id"])]]
            for r in rows
        ]
    )
    test_diff, p_chosen = attribute_differences("test", rows)
    weights = fit_bradley_terry(attribute_differences("train")[0])
    result = {
        "features": str(args.features),
        "model": str(data["model"]) if "model" in data.files else None,
        "train_replies": int((~test).sum()),
        "test_replies": int(test.sum()),
        "attributes": per_attribute,
        "read_attributes": accuracies(read_diff @ weights, p_chosen),
        "true_attributes": accuracies(test_diff @ weights, p_chosen),
        # which read-out's error costs most: that one attribute read exactly, the rest as read
        "one_read_exactly": {
            name: accuracies(
                np.where(np.arange(len(ATTRIBUTES)) == j, test_diff, read_diff) @ weights, p_chosen
            )["accuracy_vs_truth"]
            for j, name in enumerate(ATTRIBUTES)
        },
    }
    print(f"{args.features}: {result['train_replies']} training, {result['test_replies']} test")
    print("R² on test replies (centred within prompt): " + ", ".join(
        f"{a} {v['r2_test']:.2f}" for a, v in per_attribute.items()))  # fmt: skip
    for key in ("read_attributes", "true_attributes"):
        acc = result[key]
        print(
            f"{key}: accuracy {acc['accuracy']:.3f}, "
            f"against the truth {acc['accuracy_vs_truth']:.3f}"
        )
    print("against the truth with one attribute read exactly: " + ", ".join(
        f"{a} {v:.3f}" for a, v in result["one_read_exactly"].items()))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
