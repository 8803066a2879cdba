"""Prompt sources: the one place ``rl train``, ``generate``, ``eval compare`` and the gold
benchmark read chat prompts from.

    load_prompts("gold", "test")                     # the benchmark's held-out instructions
    load_prompts("questions.txt")                    # one prompt per line
    load_prompts("prompts.jsonl")                    # prompt-only rows: {"prompt": str | messages}
    load_prompts("pairs.jsonl.gz")                   # a preference source: its prompts, once each
    load_prompts(datasets.Dataset.from_list(rows))   # the same, from Python

A prompt is a list of ``{"role", "content"}`` messages ending with a user turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distalign.data.formats import PreferenceFormatError, parse_messages
from distalign.data.load import DATA_ALIASES, iter_source_rows, load_preferences

Chat = list[dict[str, str]]


def _gold_prompts(split: str) -> list[Chat]:
    rows = [
        json.loads(line)
        for line in (DATA_ALIASES["gold"] / "prompts.jsonl").read_text().splitlines()
        if line
    ]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows if r["split"] == split]


def _is_prompt_only(row: Any) -> bool:
    return isinstance(row, dict) and "prompt" in row and "chosen" not in row


def _unique(prompts: list[Chat]) -> list[Chat]:
    """Prompts in first-seen order, each once (a preference set repeats a prompt per pair)."""
    seen, out = set(), []
    for prompt in prompts:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def load_prompts(source: Any, split: str | None = "train") -> list[Chat]:
    """Chat prompts of ``source``: ``gold``, a ``.txt`` file, a prompt-only or preference data
    set (hub id, local file or ``datasets.Dataset``). Preference sources give each prompt once."""
    if isinstance(source, str):
        path = Path(source).expanduser()
        if source == "gold" and not path.exists():
            return _gold_prompts(split or "train")
        if path.suffix == ".txt":
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [[{"role": "user", "content": line}] for line in lines if line.strip()]
    rows = iter_source_rows(source, split)
    first = next(rows, None)
    if first is None:
        raise PreferenceFormatError(str(source), None, "no rows")
    where, row = first
    if not _is_prompt_only(row):
        return _unique(list(load_preferences(source, split)["prompt"]))
    prompts = []
    for where, row in [first, *rows]:
        if isinstance(row, Exception):
            raise row
        if not isinstance(row, dict) or row.get("prompt") is None:
            raise PreferenceFormatError(where, "prompt", "missing")
        prompt = parse_messages(row["prompt"], where, "prompt")
        if prompt[-1]["role"] != "user":
            raise PreferenceFormatError(where, "prompt", "expected the last turn to be the user's")
        prompts.append(prompt)
    return prompts
