"""What a data source holds: format, counts, skipped rows, token lengths, an example.

distalign data inspect pairs.jsonl.gz
distalign data inspect esfrankel17/HelpSteer2_binarized --split average_rating_split
distalign data inspect HuggingFaceH4/ultrafeedback_binarized dataset_split=test_prefs
distalign data inspect examples/prompts.jsonl       # prompt-only: counts prompts instead

A preference source is counted in pairs (identical pairs dropped, empty replies kept); a
prompt-only source (TRL's ``prompt`` column, ShareGPT conversations (an SFT file too), a
``.txt`` file) in prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distalign.data.formats import joined_prompt, row_reply, row_template_kwargs, shape_hint
from distalign.data.load import LoadReport, iter_source_rows, load_preferences, resolve_source
from distalign.data.pairs import (
    render_pair_ids,
    render_prompt_ids,
    render_text,
    silent_template_inputs,
    templated_text,
)
from distalign.data.prompts import is_prompt_only, load_prompts
from distalign.models.templates import fit_rendering

PERCENTILES = (50, 90, 99, 100)
PAIR = "prompt + longer reply"  # the length rm train's max_length bounds


@dataclass
class Inspection:
    report: LoadReport
    scored_pairs: int = 0
    prompt_only: bool = False  # rows without replies: prompts for RLOO/GRPO-style training
    prompts: int = 0  # prompts read from a prompt-only source
    lengths: dict[str, dict[int, int]] = field(default_factory=dict)  # column -> pct -> tokens
    measured: int = 0  # pairs (or prompts) the lengths were measured on
    max_length: int | None = None  # rm train's max_length the pairs were measured against
    too_long: int = 0  # measured pairs whose prompt + longer reply exceeds max_length
    example: str = ""
    silent: list[str] = field(default_factory=list)  # template inputs the template ignores
    templated: str | None = None  # a template marker the text already holds (templated_text)
    metadata: dict[str, Any] | None = None  # a metadata JSON shipped beside the file, if any
    metadata_path: str | None = None
    not_pairs: str | None = None  # a prompt-only source's rows hold replies of another shape


def _metadata_beside(source: str) -> Path | None:
    path = Path(resolve_source(source))
    if not path.exists():
        return None
    meta = (path if path.is_dir() else path.parent) / "metadata.json"
    return meta if meta.is_file() else None


def _is_prompt_source(source: str, split, name, revision) -> bool:
    if Path(source).suffix == ".txt":
        return True
    rows = iter_source_rows(source, split, name=name, revision=revision)
    try:
        return is_prompt_only(next(rows)[1])  # a source without rows raises here
    finally:
        rows.close()  # closes the file the reader holds open


def _percentiles(values: list[int]) -> dict[int, int]:
    return {p: int(np.percentile(values, p)) for p in PERCENTILES}


def _measure_prompts(out: Inspection, prompts: list, tokenizer, max_rows: int) -> Inspection:
    out.prompt_only, out.prompts = True, len(prompts)
    if prompts:  # rated replies read as prompts: right for rl train, not for rm train
        out.not_pairs = shape_hint(getattr(prompts[0], "columns", {}))
        lengths = [len(render_prompt_ids(tokenizer, p)) for p in prompts[:max_rows]]
        out.measured = len(lengths)
        out.lengths = {"prompt": _percentiles(lengths)}
        out.example = render_text(tokenizer, prompts[0])
        out.templated = templated_text(tokenizer, [{"prompt": p} for p in prompts])
    return out


def inspect_source(
    source: str,
    tokenizer,
    split: str | None = None,
    format: str | None = None,
    skip_bad_rows: bool = False,
    max_rows_for_lengths: int = 2000,
    *,
    name: str | None = None,
    revision: str | None = None,
    max_length: int | None = None,
) -> Inspection:
    """Load ``source`` and measure it. Token lengths use at most ``max_rows_for_lengths`` pairs
    (or prompts). ``name`` and ``revision`` pick a hub dataset's config and commit. A
    prompt-only source (detected from the first row, unless ``format`` forces a preference
    format) is counted in prompts. With ``max_length``, the measured pairs whose prompt and
    longer reply exceed it are counted (``rm train`` cuts them to fit; TRL's
    ``RewardTrainer`` drops them)."""
    report = LoadReport(source=source)
    meta = _metadata_beside(source)
    out = Inspection(
        report=report,
        metadata=json.loads(meta.read_text(encoding="utf-8")) if meta else None,
        metadata_path=str(meta) if meta else None,
    )
    if format is None and _is_prompt_source(source, split, name, revision):
        prompts = load_prompts(
            source, split, name=name, revision=revision, skip_bad_rows=skip_bad_rows, report=report
        )
        fit_rendering(tokenizer, report, source)
        return _measure_prompts(out, prompts, tokenizer, max_rows_for_lengths)
    ds = load_preferences(
        source,
        split,
        name=name,
        revision=revision,
        format=format,
        skip_bad_rows=skip_bad_rows,
        report=report,
    )
    fit_rendering(tokenizer, report, source)
    out.scored_pairs = sum(1 for s in ds["chosen_score"] if s is not None) if len(ds) else 0
    if len(ds) == 0:
        return out
    sample = ds.select(range(min(len(ds), max_rows_for_lengths)))
    cols: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": [], PAIR: []}
    for row in sample:
        prompt, (chosen, rejected) = render_pair_ids(
            tokenizer, joined_prompt(row), (row_reply(row, "chosen"), row_reply(row, "rejected")),
            row_template_kwargs(row),
        )  # fmt: skip
        pair = len(prompt) + max(len(chosen), len(rejected))  # what max_length bounds
        for part, n in zip(cols, (len(prompt), len(chosen), len(rejected), pair), strict=True):
            cols[part].append(n)
    out.lengths = {part: _percentiles(v) for part, v in cols.items()}
    out.measured, out.max_length = len(sample), max_length
    if max_length is not None:
        out.too_long = sum(n > max_length for n in cols[PAIR])
    out.silent = silent_template_inputs(tokenizer, ds)
    out.templated = templated_text(tokenizer, ds)
    first = ds[0]
    out.example = render_text(
        tokenizer, joined_prompt(first), row_reply(first, "chosen"), row_template_kwargs(first)
    )
    return out
