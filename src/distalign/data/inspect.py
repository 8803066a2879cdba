"""What a preference source holds: format, counts, skipped rows, token lengths, an example.

distalign data inspect pairs.jsonl.gz
distalign data inspect esfrankel17/HelpSteer2_binarized --split average_rating_split
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distalign.data.load import LoadReport, load_preferences, resolve_source
from distalign.data.pairs import render_prompt_ids, render_reply_ids

PERCENTILES = (50, 90, 99, 100)


@dataclass
class Inspection:
    report: LoadReport
    scored_pairs: int = 0
    lengths: dict[str, dict[int, int]] = field(default_factory=dict)  # column -> pct -> tokens
    example: str = ""
    metadata: dict[str, Any] | None = None  # a metadata JSON shipped beside the file, if any


def _metadata_beside(source: str) -> dict[str, Any] | None:
    path = Path(resolve_source(source))
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    meta = folder / "metadata.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def inspect_source(
    source: str,
    tokenizer,
    split: str | None = None,
    format: str | None = None,
    skip_bad_rows: bool = False,
    max_rows_for_lengths: int = 2000,
) -> Inspection:
    """Load ``source`` and measure it. Token lengths use at most ``max_rows_for_lengths`` pairs."""
    report = LoadReport(source=source)
    ds = load_preferences(source, split, format=format, skip_bad_rows=skip_bad_rows, report=report)
    out = Inspection(report=report, metadata=_metadata_beside(source))
    out.scored_pairs = sum(1 for s in ds["chosen_score"] if s is not None) if len(ds) else 0
    if len(ds) == 0:
        return out
    sample = ds.select(range(min(len(ds), max_rows_for_lengths)))
    cols: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    for row in sample:
        cols["prompt"].append(len(render_prompt_ids(tokenizer, row["prompt"])))
        cols["chosen"].append(len(render_reply_ids(tokenizer, row["prompt"], row["chosen"])))
        cols["rejected"].append(len(render_reply_ids(tokenizer, row["prompt"], row["rejected"])))
    out.lengths = {
        name: {p: int(np.percentile(v, p)) for p in PERCENTILES} for name, v in cols.items()
    }
    first = ds[0]
    out.example = tokenizer.apply_chat_template(
        [*first["prompt"], {"role": "assistant", "content": first["chosen"]}], tokenize=False
    )
    return out
