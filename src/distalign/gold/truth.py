"""What the benchmark knows about the replies behind a split's pairs.

A pair's label says which reply one annotator preferred; measures of disagreement need more:
which replies each pair compares, and every annotator's reward for each reply. A benchmark
folder (the shipped ``gold`` one, or one made by ``distalign gold make``) keeps both: its
split files name each pair's ``prompt_id``, ``chosen_reply_id`` and ``rejected_reply_id``, and
``replies.jsonl.gz`` holds each reply's judged attributes and token count.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PairReplies:
    """The distinct replies of some pairs and the truth about each."""

    chosen: np.ndarray  # (N,) index of each pair's chosen reply among the R below
    rejected: np.ndarray  # (N,) index of its rejected reply
    prompt_ids: np.ndarray  # (R,) each reply's prompt
    annotator_rewards: np.ndarray  # (A, R) every annotator's reward for every reply
    weights: np.ndarray  # (A,) each annotator's probability of being drawn
    lengths: np.ndarray  # (R,) reply length in tokens


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pair_replies(source, split: str, source_rows) -> PairReplies | None:
    """The truth for the pairs at rows ``source_rows`` (a tokenised data set's
    ``source_row`` column) of ``split`` in the benchmark folder ``source`` (or the alias
    ``gold``). None when ``source`` is not such a folder, or a pair's replies are not in it:
    other data sets know no annotators."""
    from distalign.data.load import resolve_source, slicing, split_rows

    if not isinstance(source, str):
        return None
    folder = Path(resolve_source(source))
    replies_file = folder / "replies.jsonl.gz"
    if not (folder.is_dir() and replies_file.is_file()):
        return None

    def read(name: str) -> list:  # a split's file, whole
        return read_jsonl_gz(folder / f"{name}.jsonl.gz")

    try:  # a split spec (test[:50%]): the rows it cuts, as the pairs were read
        rows = split_rows(split, read, str(folder)) if slicing(split) else read(split)
    except FileNotFoundError:
        return None
    replies = {(r["prompt_id"], r["reply_id"]): r for r in read_jsonl_gz(replies_file)}
    index: dict[tuple, int] = {}
    chosen, rejected = [], []
    for s in source_rows:
        row = rows[s] if 0 <= s < len(rows) else {}
        keys = [
            (row.get("prompt_id"), row.get(f"{side}_reply_id")) for side in ("chosen", "rejected")
        ]
        if any(k not in replies for k in keys):
            return None
        for key, out in zip(keys, (chosen, rejected), strict=True):
            out.append(index.setdefault(key, len(index)))
    return PairReplies(
        chosen=np.array(chosen, dtype=np.int64),
        rejected=np.array(rejected, dtype=np.int64),
        **reply_truth(replies, list(index)),
    )


def reply_truth(replies: dict[tuple, dict], keys: list[tuple]) -> dict[str, np.ndarray]:
    """For the replies ``keys`` ((prompt_id, reply_id), rows of ``replies.jsonl.gz`` by key):
    ``prompt_ids`` (R,), ``annotator_rewards`` (A, R) from their judged attributes,
    ``weights`` (A,) and ``lengths`` (R,) in tokens."""
    from distalign.gold.judge import ATTRIBUTES, annotator_rewards, annotator_weights

    attrs = np.array([[replies[k]["attributes"][a] for a in ATTRIBUTES] for k in keys])
    return {
        "prompt_ids": np.array([k[0] for k in keys]),
        "annotator_rewards": annotator_rewards(attrs.reshape(len(keys), len(ATTRIBUTES))).T,
        "weights": annotator_weights()[2],
        "lengths": np.array([replies[k]["tokens"] for k in keys], dtype=np.float64),
    }
