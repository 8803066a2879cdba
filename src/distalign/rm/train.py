"""Reward-model training loop (scalar Bradley–Terry; distributional heads share it).

    distalign rm train configs/rm_scalar_cpu.yaml
    distalign rm train configs/rm_scalar_cpu.yaml max_steps=50 use_peft=true
    distalign rm train --config configs/rm_scalar_cpu.yaml --learning_rate 2e-5
    accelerate launch -m distalign.cli rm train configs/rm_scalar_helpsteer2.yaml  # processes

``run`` reads top to bottom: config -> data (load, tokenise, length-grouped batches) -> model
(+LoRA) -> accelerate.prepare -> for each batch: pair scores (one forward for chosen and
rejected) -> loss -> backward/clip/step -> log; evaluate every ``eval_steps`` steps;
checkpoint the last and the best; resume with ``resume_from_checkpoint=true``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from distalign.checkpoint import count_nonfinite, resume_training, save_checkpoint
from distalign.config import (
    checkpoint_path,
    config_dict,
    report_to_list,
    require,
    resume_value,
)
from distalign.data.load import bayes_ceiling, load_preferences, p_chosen_by_group
from distalign.data.pairs import (
    PairCollator,
    SharedPrefixCollator,
    length_grouped_batches,
    prompt_grouped_batches,
    tokenize_pairs,
)
from distalign.distributed import full_optimizer_state, full_state_dict, is_sharded
from distalign.eval.rm import eval_file_name, evaluate_reward_model, save_eval
from distalign.gold.truth import pair_replies
from distalign.losses import (
    distributional_rm_loss,
    mixture_rm_loss,
    rating_nll,
    ratings_to_bins,
    reward_model_loss,
)
from distalign.models.heads import head_log_probs
from distalign.models.load import DEFAULT_MODEL, prefix_sharing_for
from distalign.models.lora import add_lora
from distalign.models.reward_model import (
    HEADS,
    PairScorer,
    build_reward_model,
    pair_scores,
    save_reward_model,
)
from distalign.optim import adamw
from distalign.tracking import (
    MetricsLog,
    end_run,
    peak_memory_gb,
    resolve_report_to,
    start_run,
    start_tracking,
)

log = logging.getLogger(__name__)
# settings of the scalar or bin heads' losses that a mixture head has no use for
MIXTURE_IGNORES = ("entropy_weight", "batch_entropy_weight", "smoothness_weight",
                   "rating_weight", "margin_scale")  # fmt: skip


@dataclass
class RMTrainConfig:
    """``distalign rm train``: fit a reward model on preference pairs."""

    model_name_or_path: str = DEFAULT_MODEL
    """Backbone: alias, local folder or hub id of a causal LM."""
    head: str = "scalar"
    """Reward head: scalar (Bradley–Terry) | categorical (n logits) | ordinal (discretised
    logistic: smooth and unimodal by construction) | mixture (K Bradley–Terry components,
    one latent annotator type per pair: the head whose spread tracks disagreement)."""
    n_bins: int = 10
    """Score bins 1..n of a categorical or ordinal head."""
    n_components: int = 2
    """Components K of a mixture head (equal shares)."""
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
    center_rewards_coefficient: float = 0.01
    """Reward-centering weight γ in γ·(r_w + r_l)² (scalar head)."""
    margin_scale: float = 0.0
    """Margin m = margin_scale · (chosen_score − rejected_score) when the data has ratings."""
    dataset_name: Any = "gold"
    """Training pairs: hub id, local file/folder, ``gold`` (the shipped benchmark), or a
    ``datasets.Dataset`` (Python API)."""
    dataset_config: str | None = None
    """Config (subset) of a hub data set, ``datasets.load_dataset``'s name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub data set (default: the latest)."""
    dataset_train_split: str = "train"
    """Training split."""
    eval_dataset_name: Any = None
    """Held-out pairs (default: ``dataset_name``)."""
    dataset_test_split: str = "test"
    """Held-out split."""
    format: str | None = None
    """Force a preference format (explicit | implicit | hh); detected when unset."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""
    max_train_samples: int = 0
    """Use the first N training pairs (0: all)."""
    max_eval_samples: int = 0
    """Use the first N held-out pairs (0: all)."""
    max_length: int = 512
    """Longest prompt + reply in tokens (truncation rules in ``distalign.data.pairs``)."""
    max_prompt_length: int = 256
    """Tokens kept for the prompt when prompt + reply is too long."""
    per_device_train_batch_size: int = 8
    """Pairs per micro-batch per process."""
    per_device_eval_batch_size: int = 16
    """Pairs per evaluation batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 1e-5
    """Peak learning rate (AdamW)."""
    head_learning_rate: float | None = None
    """Peak learning rate of the reward head (``score``) alone; None: ``learning_rate``. The
    head is one linear layer on features the backbone already has: a mixture's components
    part within an epoch only with a larger rate than the backbone's."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.05
    """Share of steps spent warming the learning rate up linearly."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate decay after warm-up (any transformers scheduler name)."""
    num_train_epochs: float = 1.0
    """Passes over the training pairs (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps (0: from num_train_epochs)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    max_nonfinite_steps: int = 3
    """A step with a non-finite loss or gradient is skipped; this many in a row stop the run."""
    use_peft: bool = False
    """Train LoRA adapters (+ the head) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more time."""
    bf16: bool = False
    """bfloat16 mixed precision (where the hardware has it)."""
    fp16: bool = False
    """float16 mixed precision. With neither, ``accelerate launch --mixed_precision`` decides."""
    prefix_sharing: bool = True
    """Encode each pair as one sequence prompt + chosen + rejected (exact, faster)."""
    attn_implementation: str = "sdpa"
    """Attention kernel, as transformers' from_pretrained takes it: sdpa | eager |
    flash_attention_2 (takes no 4-D mask: prefix_sharing is then off, with a warning)."""
    packing: bool = False
    """With prefix sharing: pack several pairs into one row instead of padding."""
    group_by_length: bool = True
    """Batch pairs of similar length (less padding)."""
    group_by_prompt: bool = False
    """Batch the pairs of a prompt together (instead of by length). With prefix sharing the
    prompt and each of its replies are then encoded once for all its pairs: the gold
    benchmark's 5 replies and 10 pairs per prompt cost at most 5 replies per batch, not 20.
    Batches hold fewer distinct prompts, so their gradients are noisier than random
    batches'."""
    eval_steps: int = 50
    """Evaluate on held-out pairs every N optimizer steps (0: only at the end)."""
    save_steps: int = 50
    """Write the resumable ``last`` checkpoint every N steps (0: only at the end)."""
    output_dir: str = "runs/rm"
    """Where checkpoints, the final model, logs and the resolved config go."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder to continue from, or true for ``output_dir/checkpoints/last``."""
    seed: int = 0
    """Seed of initialisation, batch order and dropout."""
    report_to: Any = field(default_factory=lambda: ["tensorboard"])
    """Trackers, a list or one name: tensorboard | wandb | trackio | mlflow | none (a JSONL
    log is always written)."""
    project: str = "distalign"
    """Project name in the tracker."""
    run_name: str | None = None
    """Run name in the tracker (default: the tracker's own)."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def __post_init__(self):
        self.report_to = report_to_list(self.report_to)
        resolve_report_to(self.report_to)  # a tracker that is not installed fails here, early
        self.resume_from_checkpoint = resume_value(self.resume_from_checkpoint)
        checks = [
            (
                self.head in HEADS,
                f"head: {' | '.join(HEADS)}, got {self.head!r}",
            ),
            (self.n_bins >= 2, "n_bins must be >= 2"),
            (self.n_components >= 1, "n_components must be >= 1"),
            (
                self.head != "mixture" or not any(getattr(self, k) for k in MIXTURE_IGNORES),
                f"head mixture takes none of {', '.join(MIXTURE_IGNORES)} (its loss is the "
                "mixture likelihood alone)",
            ),
            (self.ties in ("strict", "half"), "ties: strict | half"),
            (
                len(self.rating_range) == 2 and self.rating_range[0] < self.rating_range[1],
                "rating_range: [low, high]",
            ),
            (
                self.per_device_train_batch_size >= 1 and self.gradient_accumulation_steps >= 1,
                "per_device_train_batch_size and gradient_accumulation_steps must be >= 1",
            ),
            (self.center_rewards_coefficient >= 0, "center_rewards_coefficient must be >= 0"),
            (
                0 < self.max_prompt_length < self.max_length,
                "need 0 < max_prompt_length < max_length",
            ),
            (not (self.bf16 and self.fp16), "bf16 and fp16 exclude each other"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (
                self.head_learning_rate is None or self.head_learning_rate > 0,
                "head_learning_rate must be > 0 (or unset)",
            ),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1"),
            (
                self.num_train_epochs > 0 or self.max_steps > 0,
                "need num_train_epochs > 0 or max_steps > 0",
            ),
        ]
        require(checks)
        self.prefix_sharing = prefix_sharing_for(
            self.attn_implementation, self.prefix_sharing, "rm train"
        )


@dataclass
class TrainState:
    """What a checkpoint saves besides weights and optimizer: where training stands."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed (by all processes)
    best_accuracy: float = -1.0
    pairs: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_in_a_row: int = 0


def prepare_pairs(cfg: RMTrainConfig, tokenizer, source, split: str, limit: int, hub: dict):
    ds = load_preferences(
        source,
        split,
        format=cfg.format,
        skip_bad_rows=cfg.skip_bad_rows,
        limit=limit or None,
        **hub,
    )
    return tokenize_pairs(ds, tokenizer, cfg.max_length, cfg.max_prompt_length)


def load_pairs(cfg: RMTrainConfig, tokenizer):
    """Training and held-out pairs, tokenised (the config name and revision apply to the
    held-out set when it is the same hub data set)."""
    hub = {"name": cfg.dataset_config, "revision": cfg.dataset_revision}
    train = prepare_pairs(
        cfg, tokenizer, cfg.dataset_name, cfg.dataset_train_split, cfg.max_train_samples, hub
    )
    held_out_hub = hub if cfg.eval_dataset_name in (None, cfg.dataset_name) else {}
    held_out = prepare_pairs(
        cfg,
        tokenizer,
        cfg.eval_dataset_name or cfg.dataset_name,
        cfg.dataset_test_split,
        cfg.max_eval_samples,
        held_out_hub,
    )
    return train, held_out


def make_collator(cfg: RMTrainConfig, tokenizer):
    if cfg.prefix_sharing:
        inner = SharedPrefixCollator(tokenizer.pad_token_id, packing=cfg.packing)
    else:
        inner = PairCollator(tokenizer.pad_token_id)
    return _RatingCollator(inner, cfg.margin_scale)


def epoch_batches(ds, cfg: RMTrainConfig, epoch: int) -> list[list[int]]:
    """The batches of one epoch: deterministic in (seed, epoch), so resume can skip ahead."""
    size = cfg.per_device_train_batch_size
    if cfg.group_by_prompt:
        prompts = [tuple(p) for p in ds["prompt_ids"]]
        return prompt_grouped_batches(prompts, size, seed=cfg.seed + epoch)
    if cfg.group_by_length:
        return length_grouped_batches(ds["length"], size, seed=cfg.seed + epoch)
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    order = torch.randperm(len(ds), generator=g).tolist()
    return [order[i : i + size] for i in range(0, len(order), size)]


def batch_loss(model, batch, cfg: RMTrainConfig):
    """Loss and metrics of one micro-batch of pairs."""
    chosen, rejected = pair_scores(model, batch)
    if cfg.head == "scalar":
        margin = batch.get("margin", 0.0)
        return reward_model_loss(
            chosen[:, 0].float(), rejected[:, 0].float(), cfg.center_rewards_coefficient, margin
        )
    if cfg.head == "mixture":
        return mixture_rm_loss(chosen.float(), rejected.float())
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


def build_model(cfg: RMTrainConfig):
    """Backbone + reward head (+ gradient checkpointing, + LoRA) and its tokenizer."""
    model, tokenizer = build_reward_model(
        cfg.model_name_or_path,
        cfg.head,
        cfg.n_bins,
        cfg.n_components,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.use_peft:
        model = add_lora(model, "SEQ_CLS", cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return model, tokenizer


def optimizer_and_schedule(
    model, cfg: RMTrainConfig, n_pairs: int, processes: int, sharded: bool = False
):
    """AdamW over the trainable weights, the learning-rate schedule, and the step count."""
    per_epoch = math.ceil(
        math.ceil(n_pairs / cfg.per_device_train_batch_size)
        / (cfg.gradient_accumulation_steps * processes)
    )
    total_steps = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.num_train_epochs))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params: list = [p for _, p in named]
    if cfg.head_learning_rate is not None:  # two groups: the backbone and the score head
        head = [p for n, p in named if "score." in n]
        if not head:
            raise ValueError("head_learning_rate: no trainable reward head (score) found")
        body = [p for n, p in named if "score." not in n]
        params = [{"params": body}, {"params": head, "lr": cfg.head_learning_rate}]
    optimizer = adamw(params, cfg.learning_rate, cfg.weight_decay, sharded=sharded)
    # accelerate steps a prepared scheduler once per process for every optimizer step, so
    # its horizon is counted in process-steps
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps) * processes,
        num_training_steps=total_steps * processes,
    )
    return optimizer, scheduler, total_steps


@dataclass
class Trainer:
    """The prepared pieces a step, an evaluation and a checkpoint need (values, no logic)."""

    accelerator: Accelerator
    model: PairScorer  # prepared: DDP/FSDP-wrapped, autocast
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    eval_loader: DataLoader
    out: Path
    log: MetricsLog
    ceiling: float | None  # Bayes ceiling of the held-out pairs, when the data knows it
    p_by_group: Any  # (N, G) per-group P(chosen wins) of the held-out pairs, or None
    truth: Any = None  # gold.truth.PairReplies of the held-out pairs (distributional heads)


def train_step(t: Trainer, batch, cfg: RMTrainConfig) -> dict[str, float]:
    """Forward, backward and (at the end of an accumulation window) clip + optimizer step.
    A non-finite gradient norm skips the update (``nonfinite`` = 1)."""
    with t.accelerator.accumulate(t.model):
        loss, metrics = batch_loss(t.model, batch, cfg)
        t.accelerator.backward(loss)
        finite = True
        if t.accelerator.sync_gradients:
            # the norm is needed even without clipping (inf clips nothing): a NaN or inf in
            # any gradient makes it non-finite, and such an update would ruin the weights
            norm = t.accelerator.clip_grad_norm_(
                t.model.parameters(), cfg.max_grad_norm or math.inf
            )
            finite = bool(torch.isfinite(norm))
            metrics["nonfinite"] = 0.0 if finite else 1.0
            if cfg.max_grad_norm:
                metrics["grad_norm"] = norm
        if finite:
            t.optimizer.step()
            t.scheduler.step()
        t.optimizer.zero_grad()
    return {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}


def pairs_in(batch) -> int:
    if "chosen_index" in batch:  # shared-prefix rows hold several pairs each
        return batch["chosen_index"].numel()
    return batch["input_ids"].shape[0] // 2


def train_metrics(window: list[dict], t: Trainer, state: TrainState, seconds: float, start_pairs):
    """The logged means of the micro-batches of one optimizer step, and throughput."""
    logged = {
        f"train/{k}": sum(w[k] for w in window if k in w) / sum(k in w for w in window)
        for k in window[-1]
    }
    logged["train/lr"] = t.scheduler.get_last_lr()[0]
    logged["train/pairs_per_s"] = (state.pairs - start_pairs) / max(seconds, 1e-9)
    logged["train/peak_mem_gb"] = peak_memory_gb()
    logged["train/elapsed_s"] = seconds
    logged["train/pairs_seen"] = state.pairs
    return logged


def save_state(t: Trainer, state: TrainState, name: str) -> None:
    """Sharded (FSDP, ZeRO-3): every process takes part in gathering the weights."""
    t.accelerator.wait_for_everyone()
    model = t.accelerator.unwrap_model(t.model).model
    weights = full_state_dict(t.model, "model.", t.accelerator)
    optim = None if weights is None else full_optimizer_state(model, t.optimizer)
    if t.accelerator.is_main_process:
        path = t.out / "checkpoints" / name
        save_checkpoint(path, model, t.tokenizer, t.optimizer, t.scheduler, asdict(state),
                        weights, optim)  # fmt: skip


def evaluate(t: Trainer, state: TrainState, cfg: RMTrainConfig) -> tuple[dict, dict]:
    """Held-out metrics (and raw outputs, for the final plots); keeps the best checkpoint."""
    outputs: dict = {}
    result = evaluate_reward_model(
        t.model,
        t.eval_loader,
        t.accelerator,
        cfg.head,
        cfg.n_bins,
        outputs,
        t.p_by_group,
        truth=t.truth,
    )
    if t.ceiling is not None:  # the best accuracy possible on these pairs
        result["bayes_ceiling"] = t.ceiling
    t.log.write(state.step, {f"eval/{k}": v for k, v in result.items()})
    if result["accuracy"] > state.best_accuracy:
        state.best_accuracy = result["accuracy"]
        save_state(t, state, "best")
    return result, outputs


def save_final(t: Trainer, cfg: RMTrainConfig, state: TrainState, result, outputs, summary):
    """``final/`` (the model, loadable with AutoModelForSequenceClassification), its
    evaluation and plots, and ``summary.json``."""
    weights = full_state_dict(t.model, "model.", t.accelerator)  # collective when sharded
    if not t.accelerator.is_main_process:
        return
    held_out = cfg.eval_dataset_name or cfg.dataset_name
    meta = {
        "head": cfg.head,
        "n_bins": cfg.n_bins,
        "n_components": cfg.n_components,
        "backbone": cfg.model_name_or_path,
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "steps": state.step,
        "eval": result,
        "config": config_dict(cfg),
    }
    final = t.out / "final"
    model = t.accelerator.unwrap_model(t.model).model
    save_reward_model(model, t.tokenizer, final, meta, state_dict=weights)
    name = held_out if isinstance(held_out, str) else "dataset"
    where = {"data": name, "split": cfg.dataset_test_split, "head": cfg.head}
    save_eval(result | where, outputs, final / eval_file_name(name, cfg.dataset_test_split))
    summary = {"eval": result, "steps": state.step, **summary}
    (t.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(cfg: RMTrainConfig) -> dict[str, Any]:
    """Train; return the final held-out metrics. Writes ``output_dir/final`` (the model)."""
    out = Path(cfg.output_dir)
    accelerator = start_run(cfg, out, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    model, tokenizer = build_model(cfg)
    with accelerator.main_process_first():  # tokenise once, other processes hit the cache
        train, held_out = load_pairs(cfg, tokenizer)
    n = accelerator.num_processes
    optimizer, scheduler, total_steps = optimizer_and_schedule(
        model, cfg, len(train), n, sharded=is_sharded(accelerator)
    )
    # scoring as the forward of one module, so DDP's gradient hooks and autocast apply
    scorer, optimizer, scheduler = accelerator.prepare(PairScorer(model), optimizer, scheduler)
    collate = make_collator(cfg, tokenizer)
    eval_loader = accelerator.prepare(
        DataLoader(held_out, batch_size=cfg.per_device_eval_batch_size, collate_fn=collate)
    )
    log_ = MetricsLog(out / "metrics.jsonl", accelerator)
    t = Trainer(accelerator, scorer, tokenizer, optimizer, scheduler, eval_loader, out, log_,
                bayes_ceiling(held_out), p_chosen_by_group(held_out))  # fmt: skip
    if cfg.head != "scalar":  # the annotators' disagreement about each held-out reply
        source = cfg.eval_dataset_name or cfg.dataset_name
        t.truth = pair_replies(source, cfg.dataset_test_split, held_out["source_row"])
    state = TrainState()
    if cfg.resume_from_checkpoint:  # an error when there is nothing to resume from
        path, logs = checkpoint_path(cfg.resume_from_checkpoint, out), [out / "metrics.jsonl"]
        state = TrainState(**resume_training(path, model, optimizer, scheduler, logs,
                                             accelerator.is_main_process))  # fmt: skip
    start_tracking(accelerator, cfg.project, cfg.run_name, cfg)

    bar = tqdm(total=total_steps, initial=state.step, desc="rm train",
               disable=not accelerator.is_local_main_process)  # fmt: skip
    window, result, outputs, evaluated_at = [], {}, {}, -1
    start, start_pairs = time.perf_counter(), state.pairs
    scorer.train()
    while state.step < total_steps:
        batches = epoch_batches(train, cfg, state.epoch)[state.batch_in_epoch :]
        loader = DataLoader(train, batch_sampler=batches, collate_fn=collate)
        for batch in accelerator.prepare(loader):
            window.append(train_step(t, batch, cfg))
            state.batch_in_epoch += n
            state.pairs += pairs_in(batch) * n
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            count_nonfinite(state, not window[-1].get("nonfinite"), cfg.max_nonfinite_steps)
            seconds = time.perf_counter() - start
            log_.write(state.step, train_metrics(window, t, state, seconds, start_pairs))
            window = []
            bar.update(1)
            if cfg.eval_steps and state.step % cfg.eval_steps == 0:
                (result, outputs), evaluated_at = evaluate(t, state, cfg), state.step
                scorer.train()
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                save_state(t, state, "last")
            if state.step >= total_steps:
                break
        else:  # the epoch ran out
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    bar.close()
    seconds = time.perf_counter() - start
    if evaluated_at != state.step:
        result, outputs = evaluate(t, state, cfg)
    save_state(t, state, "last")
    speed = {"train_seconds": seconds, "pairs_per_s": (state.pairs - start_pairs) / seconds,
             "peak_mem_gb": peak_memory_gb()}  # fmt: skip
    save_final(t, cfg, state, result, outputs, speed)
    end_run(accelerator)
    return result
