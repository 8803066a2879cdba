"""Reward-model evaluation on held-out pairs.

distalign rm eval --model runs/rm/final --data gold --split test
"""

from __future__ import annotations

import torch

from distalign.metrics import reward_summary
from distalign.models.reward_model import pair_scores


@torch.no_grad()
def collect_pair_scores(model, loader, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs (N, num_labels) for chosen and rejected over a loader of pair batches."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for batch in loader:
        c, r = pair_scores(model, batch)
        if accelerator is not None:
            c, r = accelerator.gather_for_metrics((c.contiguous(), r.contiguous()))
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    model.train(was_training)
    if not chosen:
        return torch.zeros(0, 1), torch.zeros(0, 1)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_reward_model(
    model, loader, accelerator=None, head: str = "scalar"
) -> dict[str, float]:
    """Pairwise accuracy, mean margin, reward mean/std and ECE on the loader's pairs."""
    chosen, rejected = collect_pair_scores(model, loader, accelerator)
    if head != "scalar":
        raise ValueError(f"unknown head {head!r}")
    return reward_summary(chosen[:, 0], rejected[:, 0])


def run_rm_eval(
    model_dir: str,
    data: str = "gold",
    split: str = "test",
    max_length: int = 512,
    batch_size: int = 16,
    limit: int = 0,
    output: str | None = None,
) -> dict[str, float]:
    """Load a saved reward model, score held-out pairs, write the metrics as JSON."""
    import json
    from pathlib import Path

    from torch.utils.data import DataLoader

    from distalign.data.load import load_preferences
    from distalign.data.pairs import SharedPrefixCollator, tokenize_pairs
    from distalign.models.reward_model import load_reward_model

    model, tokenizer, meta = load_reward_model(model_dir)
    ds = tokenize_pairs(load_preferences(data, split, limit=limit or None), tokenizer, max_length)
    loader = DataLoader(
        ds, batch_size=batch_size, collate_fn=SharedPrefixCollator(tokenizer.pad_token_id)
    )
    result = evaluate_reward_model(model, loader, None, meta.get("head", "scalar"))
    result.update({"data": data, "split": split, "model": str(model_dir)})
    path = Path(output) if output else Path(model_dir) / f"eval_{Path(data).name}_{split}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["written_to"] = str(path)
    return result
