"""Reward-model training loop (scalar Bradley–Terry; distributional heads share it).

    distalign rm train configs/rm_scalar_cpu.yaml
    distalign rm train configs/rm_scalar_cpu.yaml max_steps=50 lora=true
    accelerate launch -m distalign.cli rm train configs/rm_scalar.yaml   # several processes

Reads top to bottom: config -> data (load, tokenise, length-grouped batches) -> model (+LoRA)
-> accelerate.prepare -> for each step: pair scores (one forward for chosen and rejected) ->
loss -> backward/clip/step -> log; evaluate every ``eval_every`` steps; checkpoint the last
and the best; resume from the last with ``resume=true``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from distalign.gold.build import bayes_ceiling_of
from distalign.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from distalign.config import require, save_config
from distalign.data.load import load_preferences
from distalign.data.pairs import (
    PairCollator,
    SharedPrefixCollator,
    length_grouped_batches,
    tokenize_pairs,
)
from distalign.eval.rm import eval_file_name, evaluate_reward_model, save_eval
from distalign.losses import distributional_rm_loss, rating_nll, ratings_to_bins, reward_model_loss
from distalign.models.heads import head_log_probs
from distalign.models.load import DEFAULT_MODEL
from distalign.models.reward_model import (
    PairScorer,
    build_reward_model,
    pair_scores,
    save_reward_model,
)
from distalign.tracking import MetricsLog, peak_memory_gb

log = logging.getLogger(__name__)


@dataclass
class RMTrainConfig:
    """``distalign rm train``: fit a reward model on preference pairs."""

    model: str = DEFAULT_MODEL
    """Backbone: alias, local folder or hub id of a causal LM."""
    head: str = "scalar"
    """Reward head: scalar (Bradley–Terry) | categorical (n logits) | ordinal (discretised
    logistic: smooth and unimodal by construction)."""
    n_bins: int = 10
    """Score bins 1..n of a distributional head."""
    ties: str = "strict"
    """Distributional loss: strict −log P(R_w > R_l) | half (ties count ½)."""
    entropy_weight: float = 0.0
    """λ of the entropy bonus −λ·(H(p_w) + H(p_l)) (raises each reply's entropy)."""
    batch_entropy_weight: float = 0.0
    """λ of the DPL bonus −λ·H(batch-mean p) (spreads mass across the batch)."""
    smoothness_weight: float = 0.0
    """λ of the adjacent-bin smoothness penalty Σ (p(i+1) − p(i))²."""
    rating_weight: float = 0.0
    """Weight of the pointwise term −log p(bin of the rating) when the data has ratings."""
    rating_range: list[float] = field(default_factory=lambda: [0.0, 4.0])
    """Rating scale [low, high] mapped onto the bins (HelpSteer2: 0–4)."""
    data: str = "gold"
    """Training pairs: hub id, local file/folder, or ``gold`` (the shipped benchmark)."""
    split: str = "train"
    """Training split."""
    eval_data: str | None = None
    """Held-out pairs (default: ``data``)."""
    eval_split: str = "test"
    """Held-out split."""
    format: str | None = None
    """Force a preference format (explicit | implicit | hh); detected when unset."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""
    limit_train: int = 0
    """Use the first N training pairs (0: all)."""
    limit_eval: int = 0
    """Use the first N held-out pairs (0: all)."""
    max_length: int = 512
    """Longest prompt + reply in tokens (truncation rules in ``distalign.data.pairs``)."""
    max_prompt_length: int = 256
    """Tokens kept for the prompt when prompt + reply is too long."""
    batch_size: int = 8
    """Pairs per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.05
    """Share of steps spent warming the learning rate up linearly."""
    scheduler: str = "cosine"
    """Learning-rate decay after warm-up (any transformers scheduler name)."""
    epochs: float = 1.0
    """Passes over the training pairs (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps (0: from epochs)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    gamma: float = 0.01
    """Reward-centering weight γ in γ·(r_w + r_l)²."""
    margin_scale: float = 0.0
    """Margin m = margin_scale · (chosen_score − rejected_score) when the data has ratings."""
    lora: bool = False
    """Train LoRA adapters (+ the head) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more time."""
    mixed_precision: str = "no"
    """no | bf16 | fp16 (accelerate autocast; use where the hardware has it)."""
    prefix_sharing: bool = True
    """Encode each pair as one sequence prompt + chosen + rejected (exact, faster)."""
    packing: bool = False
    """With prefix sharing: pack several pairs into one row instead of padding."""
    group_by_length: bool = True
    """Batch pairs of similar length (less padding)."""
    eval_every: int = 50
    """Evaluate on held-out pairs every N optimizer steps (0: only at the end)."""
    eval_batch_size: int = 16
    """Pairs per evaluation batch."""
    save_every: int = 50
    """Write the resumable ``last`` checkpoint every N steps."""
    output_dir: str = "runs/rm"
    """Where checkpoints, the final model, logs and the resolved config go."""
    resume: bool = False
    """Continue from ``output_dir/checkpoints/last``."""
    seed: int = 0
    """Seed of initialisation, batch order and dropout."""
    tracker: str = "tensorboard"
    """tensorboard | wandb | trackio | none (a JSONL log is always written)."""
    dtype: str = "float32"
    """Weights dtype."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def __post_init__(self):
        if str(self.mixed_precision).lower() in ("false", "none", "off"):
            self.mixed_precision = "no"  # YAML reads a bare `no` as false
        checks = [
            (
                self.head in ("scalar", "categorical", "ordinal"),
                f"head: scalar | categorical | ordinal, got {self.head!r}",
            ),
            (self.n_bins >= 2, "n_bins must be >= 2"),
            (self.ties in ("strict", "half"), "ties: strict | half"),
            (
                len(self.rating_range) == 2 and self.rating_range[0] < self.rating_range[1],
                "rating_range: [low, high]",
            ),
            (
                self.batch_size >= 1 and self.grad_accum >= 1,
                "batch_size and grad_accum must be >= 1",
            ),
            (self.gamma >= 0, "gamma must be >= 0"),
            (
                0 < self.max_prompt_length < self.max_length,
                "need 0 < max_prompt_length < max_length",
            ),
            (self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision: no | bf16 | fp16"),
            (
                self.tracker in ("tensorboard", "wandb", "trackio", "none"),
                "tracker: tensorboard | wandb | trackio | none",
            ),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "need epochs > 0 or max_steps > 0"),
        ]
        require(checks)


def prepare_pairs(cfg: RMTrainConfig, tokenizer, source: str, split: str, limit: int):
    ds = load_preferences(
        source, split, format=cfg.format, skip_bad_rows=cfg.skip_bad_rows, limit=limit or None
    )
    return tokenize_pairs(ds, tokenizer, cfg.max_length, cfg.max_prompt_length)


def make_collator(cfg: RMTrainConfig, tokenizer):
    if cfg.prefix_sharing:
        return SharedPrefixCollator(tokenizer.pad_token_id, packing=cfg.packing)
    return PairCollator(tokenizer.pad_token_id)


def epoch_batches(ds, cfg: RMTrainConfig, epoch: int) -> list[list[int]]:
    """The batches of one epoch: deterministic in (seed, epoch), so resume can skip ahead."""
    if cfg.group_by_length:
        return length_grouped_batches(ds["length"], cfg.batch_size, seed=cfg.seed + epoch)
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    order = torch.randperm(len(ds), generator=g).tolist()
    return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]


def add_lora(model, cfg: RMTrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps the new head fully trainable (modules_to_save)
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


def batch_loss(model, batch, cfg: RMTrainConfig):
    """Loss and metrics of one micro-batch of pairs."""
    chosen, rejected = pair_scores(model, batch)
    if cfg.head == "scalar":
        margin = batch.get("margin", 0.0)
        return reward_model_loss(chosen[:, 0].float(), rejected[:, 0].float(), cfg.gamma, margin)
    logp_w = head_log_probs(cfg.head, chosen, cfg.n_bins)
    logp_l = head_log_probs(cfg.head, rejected, cfg.n_bins)
    loss, metrics = distributional_rm_loss(
        logp_w,
        logp_l,
        cfg.ties,
        cfg.entropy_weight,
        cfg.batch_entropy_weight,
        cfg.smoothness_weight,
    )
    if cfg.rating_weight and "rated" in batch and batch["rated"].any():
        low, high = cfg.rating_range
        rated = batch["rated"]
        bins_w = ratings_to_bins(batch["chosen_rating"][rated], low, high, cfg.n_bins)
        bins_l = ratings_to_bins(batch["rejected_rating"][rated], low, high, cfg.n_bins)
        pointwise = (
            rating_nll(logp_w[rated], bins_w) + rating_nll(logp_l[rated], bins_l)
        ).mean() / 2
        loss = loss + cfg.rating_weight * pointwise
        metrics["rating_nll"] = pointwise.detach()
    return loss, metrics


class _RatingCollator:
    """Adds ratings to the pair batch: ``margin`` (N,) from rating differences for the scalar
    loss, and ``rated``/``chosen_rating``/``rejected_rating`` (N,) for the pointwise term."""

    def __init__(self, inner, scale: float):
        self.inner, self.scale = inner, scale

    def __call__(self, features):
        batch = self.inner(features)
        rated = [
            f["chosen_score"] is not None and f["rejected_score"] is not None for f in features
        ]
        batch["rated"] = torch.tensor(rated)
        batch["chosen_rating"] = torch.tensor([f["chosen_score"] or 0.0 for f in features])
        batch["rejected_rating"] = torch.tensor([f["rejected_score"] or 0.0 for f in features])
        if self.scale:
            diffs = [
                (f["chosen_score"] - f["rejected_score"]) if f["chosen_score"] is not None else 0.0
                for f in features
            ]
            batch["margin"] = self.scale * torch.tensor(diffs, dtype=torch.float32).clamp(min=0)
        return batch


def run(cfg: RMTrainConfig) -> dict[str, Any]:
    """Train; return the final held-out metrics. Writes ``output_dir/final`` (the model)."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=str(out),
    )
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        save_config(cfg, out)

    model, tokenizer = build_reward_model(
        cfg.model, cfg.head, cfg.n_bins, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
    )
    eval_source = cfg.eval_data or cfg.data
    with accelerator.main_process_first():  # tokenise once, other processes hit the cache
        train = prepare_pairs(cfg, tokenizer, cfg.data, cfg.split, cfg.limit_train)
        held_out = prepare_pairs(cfg, tokenizer, eval_source, cfg.eval_split, cfg.limit_eval)
    ceiling = bayes_ceiling_of(eval_source, cfg.eval_split, held_out["source_row"])
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora:
        model = add_lora(model, cfg)

    steps_per_epoch = math.ceil(
        math.ceil(len(train) / cfg.batch_size) / (cfg.grad_accum * accelerator.num_processes)
    )
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # accelerate steps a prepared scheduler once per process for every optimizer step, so
    # its horizon is counted in process-steps
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    # scoring as the forward of one module, so DDP's gradient hooks and autocast apply
    model, optimizer, scheduler = accelerator.prepare(PairScorer(model), optimizer, scheduler)
    collate = _RatingCollator(make_collator(cfg, tokenizer), cfg.margin_scale)
    eval_loader = accelerator.prepare(
        DataLoader(held_out, batch_size=cfg.eval_batch_size, collate_fn=collate)
    )

    state = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best_accuracy": -1.0,
        "tokens": 0,
        "pairs": 0,
    }
    last_ckpt = out / "checkpoints" / "last"
    if cfg.resume:  # an error when there is nothing to resume from
        resume_from = resolve_resume(last_ckpt)
        state = load_checkpoint(
            resume_from, accelerator.unwrap_model(model).model, optimizer, scheduler
        )
        log.info("resumed from %s at step %d", last_ckpt, state["step"])
    if accelerator.is_main_process and cfg.tracker != "none":
        accelerator.init_trackers(
            "rm", config={k: v for k, v in vars(cfg).items() if not isinstance(v, list)}
        )
    metrics_log = MetricsLog(out / "metrics.jsonl", accelerator)

    def checkpoint(path: Path):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(
                path, accelerator.unwrap_model(model).model, tokenizer, optimizer, scheduler, state
            )

    last_outputs: dict = {}  # raw scores of the latest evaluation, for the final plots

    def evaluate() -> dict[str, float]:
        last_outputs.clear()
        result = evaluate_reward_model(
            model, eval_loader, accelerator, cfg.head, cfg.n_bins, last_outputs
        )
        if ceiling is not None:  # the best accuracy possible on these pairs
            result["bayes_ceiling"] = ceiling
        state["last_eval_step"], state["last_eval"] = state["step"], result
        metrics_log.write(state["step"], {f"eval/{k}": v for k, v in result.items()})
        if result["accuracy"] > state["best_accuracy"]:
            state["best_accuracy"] = result["accuracy"]
            checkpoint(out / "checkpoints" / "best")
        return result

    model.train()
    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        desc="rm train",
        disable=not accelerator.is_local_main_process,
    )
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    start_pairs = state["pairs"]
    while state["step"] < total_steps:
        batches = epoch_batches(train, cfg, state["epoch"])
        loader = DataLoader(
            train, batch_sampler=batches[state["batch_in_epoch"] :], collate_fn=collate
        )
        for batch in accelerator.prepare(loader):
            with accelerator.accumulate(model):
                loss, metrics = batch_loss(model, batch, cfg)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    metrics["grad_norm"] = accelerator.clip_grad_norm_(
                        model.parameters(), cfg.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += accelerator.num_processes
            n_pairs = (
                batch["chosen_index"].numel()
                if "chosen_index" in batch
                else batch["input_ids"].shape[0] // 2
            )
            state["pairs"] += n_pairs * accelerator.num_processes
            window.append({"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}})
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            elapsed = time.perf_counter() - start
            logged = {
                f"train/{k}": sum(w[k] for w in window if k in w) / sum(k in w for w in window)
                for k in window[-1]
            }
            logged["train/lr"] = scheduler.get_last_lr()[0]
            logged["train/pairs_per_s"] = (state["pairs"] - start_pairs) / max(elapsed, 1e-9)
            logged["train/peak_mem_gb"] = peak_memory_gb()
            logged["train/elapsed_s"] = elapsed
            logged["train/pairs_seen"] = state["pairs"]
            window = []
            metrics_log.write(state["step"], logged)
            bar.update(1)
            bar.set_postfix(
                loss=f"{logged['train/loss']:.3f}", acc=f"{logged['train/accuracy']:.2f}"
            )
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                evaluate()
                model.train()
            if cfg.save_every and state["step"] % cfg.save_every == 0:
                checkpoint(last_ckpt)
            if state["step"] >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    train_seconds = time.perf_counter() - start

    evaluated = state.get("last_eval_step") == state["step"] and last_outputs
    final = state["last_eval"] if evaluated else evaluate()
    checkpoint(last_ckpt)
    if accelerator.is_main_process:
        meta = {
            "head": cfg.head,
            "n_bins": cfg.n_bins,
            "backbone": cfg.model,
            "train_pairs": len(train),
            "steps": state["step"],
            "eval": final,
            "config": vars(cfg),
        }
        save_reward_model(accelerator.unwrap_model(model).model, tokenizer, out / "final", meta)
        eval_data = {"data": eval_source, "split": cfg.eval_split, "head": cfg.head}
        save_eval(
            final | eval_data,
            last_outputs,
            out / "final" / eval_file_name(eval_source, cfg.eval_split),
        )
        summary = {
            "eval": final,
            "steps": state["step"],
            "train_seconds": train_seconds,
            "pairs_per_s": (state["pairs"] - start_pairs) / max(train_seconds, 1e-9),
            "peak_mem_gb": peak_memory_gb(),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return final
