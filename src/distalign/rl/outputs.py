"""What an RL run writes: each step's metrics (the tracker and metrics.jsonl) and
completions (history.jsonl), the resumable checkpoint and the kept policies of the
over-optimisation curve (checkpoints/step_N), the final policy and summary.json. The loop that
calls these is ``rl/train.py``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object

from distalign.checkpoint import (
    kept_steps,
    optimizer_to_save,
    save_checkpoint,
    step_folder,
    whole_folder,
)
from distalign.distributed import EVERY_PROCESS, full_state_dict
from distalign.hub import policy_card, upload_when_done
from distalign.models.lora import merged_for_saving
from distalign.printing import print_completions
from distalign.tracking import nan_to_none, peak_memory_gb

if TYPE_CHECKING:
    from distalign.rl.config import RLTrainConfig
    from distalign.rl.rollouts import Rollouts
    from distalign.rl.train import Trainer, TrainState, Update

log = logging.getLogger(__name__)


def across_processes(
    accelerator, means: list[float], sums: list[float]
) -> tuple[list[float], list[float]]:
    """Per-process means and sums over all processes (each process has as many completions,
    so the global mean is the mean of the processes' means)."""
    if accelerator.num_processes == 1:
        return means, sums
    values = torch.tensor([*means, *sums], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(values, "sum").tolist()
    n = accelerator.num_processes
    return [x / n for x in total[: len(means)]], total[len(means) :]


def log_step(
    t: Trainer, state: TrainState, ro: Rollouts, scored, shaped, kl, adv, base, update: Update,
    times: list[float], cfg: RLTrainConfig,
):  # fmt: skip
    """Per-step metrics (tracker + metrics.jsonl) and every completion (history.jsonl), over
    all processes."""
    lengths = ro.mask.sum(-1)
    per_source = scored.per_source or {}
    # each source's sum, count and sum of squares over the replies it scored (None/NaN: not
    # scored by it)
    source_sums = [x for v in per_source.values() for x in (v.nansum().item(),
                   float((~v.isnan()).sum()), (v.double() ** 2).nansum().item())]  # fmt: skip
    clipping = list(update.clipping or ())  # num_iterations > 1: (clipped, counted) ratios
    # TRL's frac_reward_zero_std: the groups of shaped rewards (after the KL penalty) that tie,
    # among the replies some reward source scored (NaN: none did)
    groups = shaped.detach().double().reshape(-1, ro.k)
    spread = groups.nan_to_num(nan=-math.inf).amax(-1) - groups.nan_to_num(nan=math.inf).amin(-1)
    tied = torch.isclose(spread, torch.zeros_like(spread)) & ((~groups.isnan()).sum(-1) >= 2)
    zero_std = tied.double().mean().item()  # one scored reply has no std (TRL's nanstd: NaN)
    r = scored.rewards.detach().double()
    r = r[~r.isnan()]  # the scored replies' (NaN: no source scored it)
    s = shaped.detach().double()
    s = s[~s.isnan()]
    means, (entropy_sum, tokens, kl_sum, reply_tokens, r_sum, r_sq, n, s_sum, s_n,
            *rest) = across_processes(
        t.accelerator,
        [kl["k1"].mean().item(), kl["k3"].mean().item(), lengths.float().mean().item(),
         sum(ro.finished) / len(ro.finished), zero_std, update.loss],
        [update.entropy_sum, float(update.tokens), kl["k1"].sum().item(),
         lengths.sum().item(), r.sum().item(), (r * r).sum().item(), float(r.numel()),
         s.sum().item(), float(s.numel()), *clipping, *source_sums],
    )  # fmt: skip
    clipping, source_sums = rest[: len(clipping)], rest[len(clipping) :]
    reward_std = _std(r_sum, n, r_sq)  # TRL's: every process's rewards, before the KL penalty
    t0, t1, t2, t3 = times
    logged = {
        "train/reward": r_sum / n if n else None,  # over every process's scored replies
        **{
            # None (not 0) when the source scored none of the step's replies, as TRL's nanmean
            f"train/reward/{name}": source_sums[3 * i] / source_sums[3 * i + 1]
            if source_sums[3 * i + 1]
            else None
            for i, name in enumerate(per_source)
        },
        **{  # TRL's rewards/<name>/std: the unbiased std of the replies the source scored
            f"train/reward_std/{name}": _std(*source_sums[3 * i : 3 * i + 3])
            for i, name in enumerate(per_source)
        },
        "train/shaped_reward": s_sum / s_n if s_n else None,
        "train/kl": means[0],  # per reply, Σ_t: what β multiplies in R − β·KL
        "train/kl_per_token": kl_sum / max(reply_tokens, 1),  # TRL's logged kl
        "train/kl_k3": means[1],
        "train/reward_std": reward_std,
        "train/frac_reward_zero_std": means[4],
        "train/loss": means[5],
        "train/entropy": entropy_sum / max(tokens, 1),
        "train/length": means[2],
        "train/eos_rate": means[3],
        "train/baseline": base,
        "train/advantage_std": adv.std().item() if adv.numel() > 1 else 0.0,
        "train/grad_norm": update.grad_norm,
        "train/learning_rate": t.scheduler.get_last_lr()[0],
        "train/gen_tokens_per_s": lengths.sum().item() / max(t1 - t0, 1e-9),
        "time/generate_s": t1 - t0,
        "time/score_s": t2 - t1,
        "time/train_s": t3 - t2,
        "train/peak_mem_gb": peak_memory_gb(),
    }
    if clipping:  # every process's ratios (replies' or tokens')
        logged["train/clip_ratio"] = clipping[0] / max(clipping[1], 1.0)
    # what TRL reward functions logged with log_metric (this process's) and log_extra; a
    # name that is one of distalign's own goes under log_metric/ (log_extra/ in history rows)
    function_metrics, extra = t.reward.log.take() if hasattr(t.reward, "log") else ({}, {})
    for name, value in function_metrics.items():
        key = f"train/{name}"
        logged[f"train/log_metric/{name}" if key in logged else key] = value
    for column in [c for c, v in extra.items() if len(v) != len(ro.texts)]:
        log.warning("log_extra(%r): %d values for %d completions; not kept", column,
                    len(extra.pop(column)), len(ro.texts), extra=EVERY_PROCESS)  # fmt: skip
    t.log.add(state.step, logged)
    rows = []
    for i, text in enumerate(ro.texts):
        row = {
            "step": state.step, "prompt": ro.prompts[i // cfg.num_generations], "reply": text,
            "reward": nan_to_none(scored.rewards[i].item()),  # None: no source scored it
            "shaped_reward": nan_to_none(shaped[i].item()),
            "kl": kl["k1"][i].item(), "advantage": adv[i].item(),
            "length": int(lengths[i].item()), "finished": ro.finished[i],
        }  # fmt: skip
        if per_source:  # unweighted, None where a source did not score the reply
            row["rewards"] = {n: nan_to_none(v[i].item()) for n, v in per_source.items()}
        if scored.distributions is not None:
            row["distribution"] = [round(x, 5) for x in scored.distributions[i].tolist()]
        row |= {f"log_extra/{c}" if c in row else c: values[i] for c, values in extra.items()}
        rows.append(row)
    if t.accelerator.num_processes > 1:  # every process's completions, written once
        rows = gather_object(rows)
    if t.accelerator.is_main_process:
        with (t.out / "history.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        if cfg.log_completions and state.step % t.log.every == 0:
            print_completions(rows[: cfg.num_completions_to_print or len(rows)], state.step)
    return logged


def _std(total: float, count: float, squares: float) -> float | None:
    """The unbiased std of values from their sum, count and sum of squares (as torch.std);
    None below two values."""
    if count < 2:
        return None
    return math.sqrt(max(squares - total * total / count, 0.0) / (count - 1))


def save_policy(model, tokenizer, folder: Path, weights=None) -> None:
    """A policy loadable by path like any model (LoRA: the adapter folder); ``weights``: the
    state dict gathered from a sharded policy."""
    model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_state(t: Trainer, state: TrainState, cfg: RLTrainConfig, keep: bool) -> None:
    """The resumable ``checkpoints/last`` and, with ``keep``, the policy as ``step_N``.
    Sharded (FSDP, ZeRO-3): every process takes part in gathering the weights."""
    t.log.flush(state.step)  # a run resumed from here logs from the checkpoint on
    t.accelerator.wait_for_everyone()
    weights = full_state_dict(t.learner, "policy.", t.accelerator)
    optimizer, optim = optimizer_to_save(t.policy, t.optimizer, weights, not cfg.save_only_model)
    if not t.accelerator.is_main_process:
        return
    if keep:  # policy only: the points of the over-optimisation curve
        # written whole before ``last`` moves on: a kill in between leaves the step to run
        # again, and its policy to be written again
        with whole_folder(step_folder(t.out, state.step)) as tmp:
            save_policy(t.policy, t.tokenizer, tmp, weights)
        if cfg.save_total_limit:
            for _, old in kept_steps(t.out)[: -cfg.save_total_limit]:
                shutil.rmtree(old)
    save_checkpoint(t.out / "checkpoints" / "last", t.policy, t.tokenizer, optimizer,
                    t.scheduler, asdict(state), weights, optim)  # fmt: skip


def save_final(t: Trainer, state: TrainState, final: dict, cfg: RLTrainConfig, prompts: int):
    """``final/`` (and ``final_merged/``) and ``summary.json``; with ``push_to_hub``, on the
    main process, the upload of ``final/`` with a model card, to run once every process is
    done (``tracking.end_run``'s ``then``). ``prompts``: how many held-out prompts the
    evaluations read."""
    weights = full_state_dict(t.learner, "policy.", t.accelerator)  # collective when sharded
    if not t.accelerator.is_main_process:
        return None
    save_policy(t.policy, t.tokenizer, t.out / "final", weights)
    merged = merged_for_saving(t.policy, weights) if cfg.use_peft and cfg.merge_lora else None
    if merged is not None:
        save_policy(merged, t.tokenizer, t.out / "final_merged")
    summary = {"initial_eval": state.initial_eval, "final_eval": final, "steps": state.step,
               "eval_prompts": prompts}  # fmt: skip
    (t.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return upload_when_done(
        cfg, t.out, lambda repo_id: policy_card(cfg, repo_id, state.initial_eval, final, prompts),
        f"distalign rl train: policy after step {state.step}",
    )  # fmt: skip
