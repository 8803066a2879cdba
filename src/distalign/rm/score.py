"""Score prompt/reply files with a saved reward model.

distalign rm score --model runs/rm/final --input replies.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

from distalign.data.load import read_prompt_replies
from distalign.models.reward_model import load_reward_model, score_replies


def score_file(
    model_dir: str, input_path: str, output: str | None, max_length: int = 512, batch_size: int = 16
):
    model, tokenizer, _ = load_reward_model(model_dir)
    rows, prompts, replies = read_prompt_replies(input_path)
    scores = score_replies(model, tokenizer, prompts, replies, max_length, batch_size=batch_size)
    out = Path(output) if output else Path(input_path).with_suffix("").with_suffix(".scored.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for row, s in zip(rows, scores, strict=True):
            f.write(json.dumps({**row, "reward": float(s[0])}, ensure_ascii=False) + "\n")
    return out, len(rows)
