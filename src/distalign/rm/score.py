"""Score prompt/reply files with a saved reward model.

    distalign rm score --model_name_or_path runs/rm/final --input_file replies.jsonl

On a GPU the model runs there in bfloat16 (``device``/``dtype`` auto, docs/gpu.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distalign import functionals as fn
from distalign.data.load import read_prompt_replies
from distalign.models.heads import head_log_probs
from distalign.models.load import resolve_device_dtype
from distalign.models.reward_model import load_reward_model, score_replies


def distribution_columns(logp: torch.Tensor, kappa: float = 1.0, alpha: float = 0.25) -> list[dict]:
    """Per row: the distribution over scores 1..n and the reward functionals of it."""
    p = logp.exp()
    cols = {
        "expectation": fn.expectation(p),
        "std": fn.std(p),
        "mean_minus_std": fn.mean_minus_std(p, kappa),
        "cvar": fn.cvar(p, alpha),
        "median": fn.quantile(p, 0.5),
    }
    return [
        {
            "distribution": [round(x, 6) for x in p[i].tolist()],
            **{k: float(v[i]) for k, v in cols.items()},
        }
        for i in range(p.shape[0])
    ]


def score_file(
    model_dir: str,
    input_path: str,
    output: str | None,
    max_length: int = 512,
    batch_size: int = 16,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
):
    """Score rows; scalar models add ``reward``, distributional ones the distribution and
    its functionals (``reward`` is then the expectation)."""
    place, torch_dtype = resolve_device_dtype(device, dtype)
    model, tokenizer, meta = load_reward_model(
        model_dir, device=place, dtype=torch_dtype, attn_implementation=attn_implementation
    )
    rows, prompts, replies = read_prompt_replies(input_path)
    scores = score_replies(model, tokenizer, prompts, replies, max_length, batch_size=batch_size)
    head = meta.get("head", "scalar")
    if head == "scalar":
        extra = [{"reward": float(s[0])} for s in scores]
    else:
        extra = distribution_columns(head_log_probs(head, scores, meta.get("n_bins", 10)))
        for e in extra:
            e["reward"] = e["expectation"]
    out = Path(output) if output else Path(input_path).with_suffix("").with_suffix(".scored.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for row, e in zip(rows, extra, strict=True):
            f.write(json.dumps({**row, **e}, ensure_ascii=False) + "\n")
    return out, len(rows)
