"""Score prompt/reply files with a saved reward model.

    distalign rm score --model_name_or_path runs/rm/final --input_file replies.jsonl
    distalign rm score model_name_or_path=Skywork/Skywork-Reward-V2-Qwen3-0.6B input_file=r.jsonl

On a GPU the model runs there in bfloat16 (``device``/``dtype`` auto, docs/gpu.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from distalign import functionals as fn
from distalign.data.load import LoadReport, read_prompt_replies

log = logging.getLogger(__name__)


def distribution_columns(
    p: torch.Tensor, kappa: float = 1.0, alpha: float = 0.25, values: torch.Tensor | None = None
) -> list[dict]:
    """Per row: the distribution ``p`` (B, n) over scores 1..n and the reward functionals of
    it. With per-row atoms ``values`` (B, K), a mixture head's components: the components and
    their mean only, since each component is fixed only up to its own constant (what its
    spread or lower tail means needs a reference reply: ``rl train`` reads gains over one)."""
    if values is not None:
        cols = {"expectation": fn.expectation(p, values)}
    else:
        cols = {
            "expectation": fn.expectation(p),
            "std": fn.std(p),
            "mean_minus_std": fn.mean_minus_std(p, kappa),
            "cvar": fn.cvar(p, alpha),
            "median": fn.quantile(p, 0.5),
        }
    shown = ("distribution", p) if values is None else ("components", values)
    return [
        {
            shown[0]: [round(x, 6) for x in shown[1][i].tolist()],
            **{k: float(v[i]) for k, v in cols.items()},
        }
        for i in range(p.shape[0])
    ]


def score_file(
    model_dir: str,
    input_path: str,
    output: str | None,
    max_length: int | None = None,
    batch_size: int = 16,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    skip_bad_rows: bool = False,
):
    """Score rows with any reward model ``rl train`` takes (``RewardModelSource``: a distalign
    RM at the lengths it was trained with, or any one-label sequence classifier with its own
    tokenizer and chat template). Scalar models add ``reward``; distributional ones the
    distribution and its functionals (``reward`` is then the expectation). ``skip_bad_rows``:
    malformed rows are counted, said and left out of the output."""
    from distalign.rl.rewards import RewardModelSource

    source = RewardModelSource(
        model_dir,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        chat_template=chat_template,
    )
    report = LoadReport(source=str(input_path))
    rows, prompts, replies = read_prompt_replies(input_path, report, skip_bad_rows=skip_bad_rows)
    source.fit_rendering(report, input_path)
    if source.distributional:
        p, values = source.probs_values(source.distributions(prompts, replies))
        extra = distribution_columns(p, values=values)
        for e in extra:
            e["reward"] = e["expectation"]
    else:
        extra = [{"reward": float(r)} for r in source(prompts, replies).rewards]
    cut = source.rows_cut(prompts, replies)
    if cut:
        log.warning("%s: %d of %d rows are longer than max_length=%d tokens and were scored "
                    "cut (the oldest turns, the prompt's start, the reply's end, as the model "
                    "was trained); max_length=N reads more of them", input_path, cut, len(rows),
                    source.max_length)  # fmt: skip
    replaced = sorted({k for row, e in zip(rows, extra, strict=True) for k in e if k in row})
    if replaced:
        log.warning("%s: its column(s) %s are replaced by this model's scores in the output",
                    input_path, ", ".join(replaced))  # fmt: skip
    out = Path(output) if output else _scored_name(Path(input_path))
    with open(out, "w", encoding="utf-8") as f:
        for row, e in zip(rows, extra, strict=True):
            f.write(json.dumps({**row, **e}, ensure_ascii=False, default=str) + "\n")
    return out, len(rows)


def _scored_name(path: Path) -> Path:
    """INPUT.scored.jsonl beside the input, its name kept whole but for its file type
    (``my.data.jsonl.gz`` -> ``my.data.scored.jsonl``)."""
    name = path.name.removesuffix(".gz")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return path.with_name(stem + ".scored.jsonl")
