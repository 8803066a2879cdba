"""Does the gold judge agree with the off-prompt pairs that ``off_prompt_pairs`` adds?

    .venv/bin/python scripts/off_prompt_check.py [--ratio 1.0] [--seed 0] \\
        [--out docs/results/level2/off_prompt_check.json]

``rm train off_prompt_pairs=R`` adds pairs in which one of a prompt's own replies is taken to
beat a reply written for another prompt, without asking anyone. This script draws the same
pairs as training does on the benchmark's training split (the same rows, ratio and seed; the
draws depend only on which prompts and which replies are equal, so they are drawn here on
the texts) and asks the gold judge what it thinks of them: the share the judge's population
prefers the own reply, how sure it is, and the same for the labelled pairs beside them. The
judge referees the assumption here; it trains nothing. A minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from distalign.data.load import load_preferences
from distalign.data.pairs import off_prompt_pairs
from distalign.gold.judge import ATTRIBUTES, attributes, preference_probabilities, prompt_text
from distalign.rm.config import RMTrainConfig


def draws(ds, ratio: float, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, own reply, other prompt's reply) of each off-prompt pair training draws."""
    prompt_ids: dict[str, int] = {}  # prompt -> its id, in first-seen order
    reply_ids: dict[str, int] = {}
    rows = []
    for r in ds:
        key = prompt_text(r["prompt"])
        prompt = [prompt_ids.setdefault(key, len(prompt_ids))]
        chosen = [reply_ids.setdefault(r["chosen"], len(reply_ids))]
        rejected = [reply_ids.setdefault(r["rejected"], len(reply_ids))]
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    prompts, replies = list(prompt_ids), list(reply_ids)  # id -> text
    # one id per prompt and reply: truncation never applies (1 + 1 <= 2)
    extra = off_prompt_pairs(rows, round(ratio * len(rows)), seed, 2, 1)
    return [(prompts[e["prompt_ids"][0]], replies[e["chosen_ids"][0]],
             replies[e["rejected_ids"][0]]) for e in extra]  # fmt: skip


def summary(p: np.ndarray) -> dict[str, float]:
    """How a set of pairs reads to the judge: P(first ≻ second) per pair (N,)."""
    return {
        "pairs": len(p),
        "share_first_preferred": float((p > 0.5).mean()),
        "mean_p_first": float(p.mean()),
        "mean_confidence": float(np.maximum(p, 1 - p).mean()),
        "p_first_quantiles_5_25_50": np.quantile(p, [0.05, 0.25, 0.5]).round(4).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=RMTrainConfig.seed)
    ap.add_argument("--out", default="docs/results/level2/off_prompt_check.json")
    args = ap.parse_args()
    ds = load_preferences("gold", "train")
    pairs = draws(ds, args.ratio, args.seed)
    prompts, own_replies, other_replies = map(list, zip(*pairs, strict=True))
    own = attributes(prompts, own_replies)
    other = attributes(prompts, other_replies)
    p, by_group = preference_probabilities(own, other)
    difference = dict(zip(ATTRIBUTES, (own - other).mean(0).round(4).tolist(), strict=True))
    out = {
        "ratio": args.ratio,
        "seed": args.seed,
        "off_prompt": summary(p)
        | {f"share_own_preferred_{g}": float((q > 0.5).mean()) for g, q in by_group.items()}
        | {"mean_difference": difference},
        "labelled": summary(np.array(ds["p_chosen"])),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
