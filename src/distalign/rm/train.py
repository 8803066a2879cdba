"""Reward-model training loop (scalar Bradley–Terry; distributional heads share it).

    distalign rm train configs/rm_scalar_cpu.yaml
    distalign rm train configs/rm_scalar_cpu.yaml max_steps=50 use_peft=true
    distalign rm train --config configs/rm_scalar_cpu.yaml --learning_rate 2e-5
    accelerate launch -m distalign.cli rm train configs/rm_scalar_helpsteer2.yaml  # processes

``run`` reads top to bottom: config -> data (``rm/data.py``: load, tokenise, batches) -> model
(+LoRA) -> accelerate.prepare -> for each batch: pair scores (one forward for chosen and
rejected) -> loss -> backward/clip/step -> log; evaluate every ``eval_steps`` steps;
checkpoint the last and the best; resume with ``resume_from_checkpoint=true``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.data import DataLoader
from transformers import get_scheduler

from distalign.cadence import Cadence, steps_of
from distalign.checkpoint import (
    count_nonfinite,
    finished_summary,
    load_model_weights,
    optimizer_to_save,
    resume_training,
    same_precision,
    save_checkpoint,
    write_state,
)
from distalign.config import (
    ConfigError,
    checkpoint_path,
    config_dict,
)
from distalign.data.load import (
    held_out_split,
    keep_held_out_split,
    known_p_chosen,
    p_chosen_by_group,
    warn_if_evaluating_on_training_data,
)
from distalign.distributed import full_state_dict, is_sharded
from distalign.eval.rm import eval_file_name, evaluate_reward_model, save_eval
from distalign.gold.truth import pair_replies
from distalign.hub import reward_model_card, upload_when_done
from distalign.losses import (
    distributional_rm_loss,
    mixture_rm_loss,
    rating_nll,
    ratings_to_bins,
    reward_model_loss,
)
from distalign.models.classifier import model_max_length
from distalign.models.heads import head_log_probs
from distalign.models.load import prefix_sharing_for
from distalign.models.lora import add_lora, merged_for_saving
from distalign.models.options import disable_dropout
from distalign.models.reward_model import (
    META_FILE,
    PairScorer,
    build_reward_model,
    name_outputs,
    pair_scores,
    reward_meta_text,
    save_reward_model,
)
from distalign.optim import adamw
from distalign.rm.config import RMTrainConfig
from distalign.rm.data import epoch_batches, load_pairs, make_collator
from distalign.tracking import (
    MetricsLog,
    closes_trackers_on_error,
    end_run,
    peak_memory_gb,
    progress_bar,
    start_run,
    start_tracking,
    truncate_log,
)

log = logging.getLogger(__name__)


# what training reads of a tokenised pair (the collator's and the batch sampler's columns)
@dataclass
class TrainState:
    """What a checkpoint saves besides weights and optimizer: where training stands."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed (by all processes)
    best_metric: float | None = None  # the best held-out value of the metric named by best_by
    best_by: str = ""  # the metric checkpoints/best was chosen by (cfg.best_metric)
    pairs: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_in_a_row: int = 0
    # the batching the steps were counted in (0: a checkpoint written before these were kept)
    per_device_batch: int = 0
    batches_per_step: int = 0  # processes × gradient_accumulation_steps
    processes: int = 0
    mixed_precision: str | None = None  # accelerate's, as the steps were computed in


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


def build_model(cfg: RMTrainConfig):
    """Backbone + reward head (+ gradient checkpointing, + LoRA) and its tokenizer."""
    model, tokenizer = build_reward_model(
        cfg.model_name_or_path,
        cfg.head,
        cfg.n_bins,
        cfg.n_components,
        attn_implementation=cfg.attn_implementation,
        **cfg.load_kwargs(),
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.use_peft:
        model = add_lora(model, **cfg.lora_kwargs("SEQ_CLS"))
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.max_length is None:  # no truncation: up to what the backbone takes
        cfg.max_length = model_max_length(model, tokenizer)
        cfg.max_prompt_length = min(cfg.max_prompt_length, cfg.max_length // 2)
        log.info("max_length: the backbone's limit, %d tokens", cfg.max_length)
    return model, tokenizer


def optimizer_and_schedule(
    model, cfg: RMTrainConfig, n_pairs: int, processes: int, sharded: bool = False
):
    """AdamW over the trainable weights, the learning-rate schedule, and the step count."""
    per_epoch = steps_per_epoch(n_pairs, cfg, processes)
    epochs = max(1, math.ceil(per_epoch * cfg.num_train_epochs))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else epochs  # transformers' -1: epochs
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params: list = [p for _, p in named]
    if cfg.head_learning_rate is not None:  # two groups: the backbone and the score head
        head = [p for n, p in named if "score." in n]
        if not head:
            raise ValueError("head_learning_rate: no trainable reward head (score) found")
        body = [p for n, p in named if "score." not in n]
        params = [{"params": body}, {"params": head, "lr": cfg.head_learning_rate}]
    optimizer = adamw(
        params, cfg.learning_rate, cfg.weight_decay, sharded=sharded, **cfg.adam_options()
    )
    # accelerate steps a prepared scheduler once per process for every optimizer step, so
    # its horizon is counted in process-steps
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=steps_of(cfg.warmup_steps, total_steps) * processes,
        num_training_steps=total_steps * processes,
        scheduler_specific_kwargs=cfg.lr_scheduler_kwargs,
    )
    return optimizer, scheduler, total_steps


def steps_per_epoch(n_pairs: int, cfg: RMTrainConfig, processes: int) -> int:
    return math.ceil(
        math.ceil(n_pairs / cfg.per_device_train_batch_size)
        / (cfg.gradient_accumulation_steps * processes)
    )


def resumed_state(cfg: RMTrainConfig, out: Path, accelerator, model, optimizer, scheduler,
                  train) -> TrainState:  # fmt: skip
    """A fresh state, or the checkpoint's (``resume_from_checkpoint``) with the weights,
    optimizer and schedule restored and the log cut back to where it stands."""
    state = TrainState()
    if cfg.resume_from_checkpoint:  # an error when there is nothing to resume from
        path, logs = checkpoint_path(cfg.resume_from_checkpoint, out), [out / "metrics.jsonl"]
        saved = resume_training(path, model, optimizer, scheduler, logs,
                                accelerator.is_main_process, cfg,
                                partial(check_resumable, cfg))  # fmt: skip
        state = TrainState(**best_of(saved, cfg, accelerator.is_main_process))
    state.mixed_precision = same_precision(state.mixed_precision, accelerator)
    moved = carry_over(state, cfg, train, accelerator.num_processes, scheduler)
    if moved and accelerator.is_main_process:  # its later rows counted steps of another size
        truncate_log(out / "metrics.jsonl", state.step)
    return state


def best_of(saved: dict, cfg: RMTrainConfig, main_process: bool = True) -> dict:
    """A checkpoint's state with the best so far kept only where it was chosen by this run's
    metric (a checkpoint of an earlier version kept the best accuracy, ``best_accuracy``)."""
    saved = dict(saved)
    if "best_accuracy" in saved:
        value = saved.pop("best_accuracy")
        saved |= {"best_metric": value if value >= 0 else None, "best_by": "accuracy"}
    by = saved.get("best_by")
    if by and by != cfg.best_metric:
        if main_process and saved.get("best_metric") is not None:
            log.warning("checkpoints/best was chosen by the held-out %s; from here on by the "
                        "%s (metric_for_best_model)", by, cfg.best_metric)  # fmt: skip
        saved |= {"best_metric": None, "best_by": ""}
    return saved


def improves(value: float, best: float | None, greater_is_better: bool) -> bool:
    """Whether a held-out ``value`` is better than the ``best`` so far (None: none yet)."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if greater_is_better else value < best)


def check_resumable(cfg: RMTrainConfig, saved: dict) -> None:
    """A ConfigError where this run cannot go on from a checkpoint's state ``saved``."""
    was = saved.get("per_device_batch")
    if was and was != cfg.per_device_train_batch_size:
        raise ConfigError(
            f"the checkpoint was written with per_device_train_batch_size={was}; resuming with "
            f"{cfg.per_device_train_batch_size} would replay other pairs. Keep it, and change "
            "gradient_accumulation_steps or the number of processes instead"
        )


def carry_over(state: TrainState, cfg: RMTrainConfig, train, processes: int,
               scheduler) -> bool:  # fmt: skip
    """Fit a resumed run's step count and schedule to this run's batching. The data go on
    where they stopped (batches are counted over all processes). With another
    ``processes × gradient_accumulation_steps`` the step count moves to the step of this
    batching that has seen as many batches (True then: the log's earlier rows keep the old
    run's step numbers); with another process count the scheduler, which accelerate steps once
    per process, moves to that step too."""
    now = processes * cfg.gradient_accumulation_steps
    moved = bool(state.batches_per_step) and state.batches_per_step != now
    if moved:
        # this epoch's steps less those its remaining batches make, so it ends where it should
        # (an epoch padded to a multiple of the old process count counts more than it has)
        batches = len(epoch_batches(train, cfg, state.epoch))
        left = max(0, batches - state.batch_in_epoch)
        in_epoch = math.ceil(batches / now) - math.ceil(left / now)
        step = state.epoch * steps_per_epoch(len(train), cfg, processes) + in_epoch
        log.warning(
            "resumed with %d batches a step (processes × gradient_accumulation_steps) where the "
            "checkpoint had %d: step %d of that run is step %d of this one",
            now, state.batches_per_step, state.step, step,
        )  # fmt: skip
        state.step = step
    if moved or (state.processes and state.processes != processes):
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, or none
        inner.last_epoch = state.step * processes - 1  # counted in process-steps (see above)
        with warnings.catch_warnings():  # "step() before optimizer.step()": no update here
            warnings.simplefilter("ignore")
            inner.step()
    state.per_device_batch, state.batches_per_step = cfg.per_device_train_batch_size, now
    state.processes = processes
    return moved


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
    p_chosen: Any  # (N,) true P(chosen wins) of the held-out pairs, when the data knows it
    p_by_group: Any  # (N, G) per-group P(chosen wins) of the held-out pairs, or None
    truth: Any = None  # gold.truth.PairReplies of the held-out pairs (distributional heads)


def train_step(t: Trainer, batch, cfg: RMTrainConfig, weight: float = 1.0) -> dict[str, float]:
    """Forward, backward and (at the end of an accumulation window) clip + optimizer step.
    A non-finite gradient norm skips the update (``nonfinite`` = 1). ``weight`` multiplies the
    loss before accelerate divides it by ``gradient_accumulation_steps``
    (``accumulation_weight``)."""
    with t.accelerator.accumulate(t.model):
        loss, metrics = batch_loss(t.model, batch, cfg)
        t.accelerator.backward(loss * weight if weight != 1.0 else loss)
        finite = True
        if t.accelerator.sync_gradients:
            # the norm is needed even without clipping (inf clips nothing): a NaN or inf in
            # any gradient makes it non-finite, and such an update would ruin the weights
            norm = t.accelerator.clip_grad_norm_(
                t.model.parameters(), cfg.max_grad_norm or math.inf
            )
            # a tensor, or (DeepSpeed, which clipped and stepped in backward) a float or None
            finite = norm is None or math.isfinite(float(norm))
            metrics["nonfinite"] = 0.0 if finite else 1.0
            if cfg.max_grad_norm and norm is not None:
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


# logged as they stand at the logged step, not averaged over logging_steps
CURRENT_METRICS = ("train/learning_rate", "train/grad_norm", "train/pairs_per_s",
                   "train/peak_mem_gb", "train/elapsed_s", "train/pairs_seen")  # fmt: skip


def mean_over_processes(logged: dict[str, float], accelerator) -> dict[str, float]:
    """Each key's mean over the processes that have it: a process whose batches held no rated
    pair has no ``rating_nll``, so the keys are gathered first and every process then sends
    a (value, present) pair for each, the same shape on all."""
    keys = sorted(set().union(*gather_object([sorted(logged)])))
    pairs = [[logged.get(k, 0.0), float(k in logged)] for k in keys]
    total = accelerator.reduce(torch.tensor(pairs, device=accelerator.device), reduction="sum")
    return {k: v / n for k, (v, n) in zip(keys, total.tolist(), strict=True) if n}


def train_metrics(window: list[dict], t: Trainer, state: TrainState, seconds: float, start_pairs):
    """The logged means of the micro-batches of one optimizer step, over every process (each
    process's mean, then their mean, as transformers logs), and throughput."""
    keys = dict.fromkeys(k for w in window for k in w)  # rating_nll: rated batches only
    logged = {
        f"train/{k}": sum(w[k] for w in window if k in w) / sum(k in w for w in window)
        for k in keys
    }
    if t.accelerator.num_processes > 1:  # collectives: every process calls them each step
        logged = mean_over_processes(logged, t.accelerator)
    logged["train/learning_rate"] = t.scheduler.get_last_lr()[0]
    logged["train/pairs_per_s"] = (state.pairs - start_pairs) / max(seconds, 1e-9)
    logged["train/peak_mem_gb"] = peak_memory_gb()
    logged["train/elapsed_s"] = seconds
    logged["train/pairs_seen"] = state.pairs
    return logged


def save_state(t: Trainer, state: TrainState, name: str, cfg: RMTrainConfig) -> None:
    """``checkpoints/<name>``: ``last`` resumable, ``best`` without the optimizer's state (a
    run resumes from ``last``; ``best`` is a model to load: a third of the size, trained whole).
    Sharded (FSDP, ZeRO-3): every process takes part in gathering the weights."""
    t.log.flush(state.step)  # a run resumed from here logs from the checkpoint on
    t.accelerator.wait_for_everyone()
    model = t.accelerator.unwrap_model(t.model).model
    weights = full_state_dict(t.model, "model.", t.accelerator)
    keep = name == "last" and not cfg.save_only_model
    optimizer, optim = optimizer_to_save(model, t.optimizer, weights, keep)
    if t.accelerator.is_main_process:
        path = t.out / "checkpoints" / name
        name_outputs(model, cfg.head)
        meta = {META_FILE: reward_meta_text(reward_meta(cfg, state))}  # a reward model too
        save_checkpoint(path, model, t.tokenizer, optimizer, t.scheduler, asdict(state),
                        weights, optim, meta)  # fmt: skip


def held_out_metrics(t: Trainer, cfg: RMTrainConfig) -> tuple[dict, dict]:
    """Held-out metrics of the model as it stands, and its raw outputs (for the final plots)."""
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
        p_chosen=t.p_chosen,
        ties=cfg.ties,
    )
    return result, outputs


def evaluate(t: Trainer, state: TrainState, cfg: RMTrainConfig) -> tuple[dict, dict]:
    """``held_out_metrics``, logged at the step; keeps the best checkpoint (by the held-out
    ``cfg.best_metric``; with ``save_total_limit`` 1 only for ``load_best_model_at_end``)."""
    result, outputs = held_out_metrics(t, cfg)
    t.log.write(state.step, {f"eval/{k}": v for k, v in result.items()})
    value = result[cfg.best_metric]
    if state.step > 0 and improves(value, state.best_metric, cfg.best_is_greater):  # not at 0
        state.best_metric, state.best_by = value, cfg.best_metric
        if cfg.save_total_limit != 1 or cfg.load_best_model_at_end:
            save_state(t, state, "best", cfg)
    return result, outputs


def back_to_best(t: Trainer, state: TrainState, cfg: RMTrainConfig, model, result, outputs):
    """``load_best_model_at_end``: the weights of ``checkpoints/best`` in place of the last
    step's, and their held-out metrics (with ``best_step``; not logged again: the log has them
    at that step). The last step's when they are the best."""
    best = t.out / "checkpoints" / "best"
    t.accelerator.wait_for_everyone()  # the main process may still be writing it
    state_file = best / "trainer_state.json"  # the main process reads it, for every process
    step = json.loads(state_file.read_text())["step"] if state_file.is_file() else None
    step = broadcast_object_list([step if t.accelerator.is_main_process else None])[0]
    if step is None:  # a resumed run whose first part kept none (save_total_limit 1)
        if t.accelerator.is_main_process:
            log.warning("load_best_model_at_end: %s was not kept; final/ holds the last step's "
                        "weights", best)  # fmt: skip
        return result, outputs
    if step == state.step:
        return result | {"best_step": step}, outputs
    load_model_weights(model, best)
    result, outputs = held_out_metrics(t, cfg)
    if t.accelerator.is_main_process:
        log.info("load_best_model_at_end: final/ holds the weights of step %d "
                 "(held-out %s %.4f), not step %d's", step, cfg.best_metric,
                 result[cfg.best_metric], state.step)  # fmt: skip
    return result | {"best_step": step}, outputs


def reward_meta(cfg: RMTrainConfig, state: TrainState) -> dict:
    """What a saved reward model is (``META_FILE``): its head, lengths and training config."""
    return {
        "head": cfg.head,
        "n_bins": cfg.n_bins,
        "n_components": cfg.n_components,
        "backbone": cfg.model_name_or_path,
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "steps": state.step,
        "config": config_dict(cfg),
    }


def save_final(t: Trainer, cfg: RMTrainConfig, state: TrainState, result, outputs, summary):
    """``final/`` (the model, loadable with AutoModelForSequenceClassification), its
    evaluation and plots, and ``summary.json``; with ``push_to_hub``, on the main process, the
    upload of ``final/`` with a model card, to run once every process is done."""
    weights = full_state_dict(t.model, "model.", t.accelerator)  # collective when sharded
    if not t.accelerator.is_main_process:
        return None
    held_out = cfg.eval_dataset_name or cfg.dataset_name
    meta = {**reward_meta(cfg, state), "eval": result}
    final = t.out / "final"
    model = t.accelerator.unwrap_model(t.model).model
    save_reward_model(model, t.tokenizer, final, meta, state_dict=weights)
    # a whole model, whose config.json carries the pad token the reward model reads
    merged = merged_for_saving(model, weights) if cfg.use_peft and cfg.merge_lora else None
    if merged is not None:
        save_reward_model(merged, t.tokenizer, t.out / "final_merged", meta)
    name = held_out if isinstance(held_out, str) else "dataset"
    split = held_out_split(cfg)
    where = {"data": name, "split": split, "head": cfg.head}
    eval_name = eval_file_name(name, split)  # the held-out evaluation, for the report
    save_eval(result | where, outputs, final / eval_name)
    summary = {"eval": result, "eval_file": eval_name, "steps": state.step, **summary}
    (t.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    message = f"distalign rm train: {cfg.head} reward model, step {state.step}"
    return upload_when_done(
        cfg, t.out, lambda repo_id: reward_model_card(cfg, repo_id, result), message
    )


def accumulation_weight(i: int, n: int, steps: int) -> float:
    """What micro-batch ``i`` (1-based) of a loader of ``n`` weighs, so that each optimizer
    step takes the mean gradient of its window: ``steps`` (gradient_accumulation_steps) over
    the size of the window holding it. accelerate divides every loss by ``steps`` and ends the
    last window of a pass early, so a short last window of r batches would otherwise count
    r/steps of a mean (transformers' Trainer divides by the window's own length)."""
    last = (n - 1) // steps  # windows start at the loader's first batch
    return steps / (n - last * steps) if (i - 1) // steps == last else 1.0


def quiet_loader(data, collate, **kwargs) -> DataLoader:
    """A DataLoader with a generator of its own: an iterator seeds its workers with a draw from
    the global RNG otherwise, so a resumed run, which starts its iterator mid-epoch after
    restoring the RNG, would draw its dropout masks from another point of the stream."""
    return DataLoader(data, collate_fn=collate, generator=torch.Generator(), **kwargs)


def optimizer_steps(t: Trainer, cfg: RMTrainConfig, train, collate, state: TrainState,
                    total_steps: int):  # fmt: skip
    """Train until ``total_steps``, from where ``state`` stands, logging each step; yields
    after each optimizer step whether it ended a pass over the training pairs."""
    n, start, start_pairs = t.accelerator.num_processes, time.perf_counter(), state.pairs
    window = []  # the micro-batches of one optimizer step
    t.model.train()
    while state.step < total_steps:
        batches = epoch_batches(train, cfg, state.epoch)[state.batch_in_epoch :]
        loader = t.accelerator.prepare(quiet_loader(train, collate, batch_sampler=batches))
        for i, batch in enumerate(loader, 1):
            weight = accumulation_weight(i, len(loader), cfg.gradient_accumulation_steps)
            window.append(train_step(t, batch, cfg, weight))
            state.batch_in_epoch += n
            state.pairs += pairs_in(batch) * n
            if not t.accelerator.sync_gradients:
                continue
            state.step += 1
            seconds = time.perf_counter() - start
            t.log.add(state.step, train_metrics(window, t, state, seconds, start_pairs))
            count_nonfinite(state, not window[-1].get("nonfinite"), cfg.max_nonfinite_steps)
            window = []
            yield i == len(loader)  # this process's share of the pass is done
            if state.step >= total_steps:
                return
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


@closes_trackers_on_error
def run(cfg: RMTrainConfig) -> dict[str, Any]:
    """Train; return the final held-out metrics. Writes ``output_dir/final`` (the model)."""
    out = Path(cfg.output_dir)
    accelerator = start_run(cfg, out, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if accelerator.is_main_process:
        warn_if_evaluating_on_training_data(cfg)
    # what the loading resolves (max_length null, prefix_sharing) goes to a copy: a resumed run
    # compares the settings as given with its checkpoint's
    given, cfg = cfg, copy.copy(cfg)
    model, tokenizer = build_model(cfg)
    with accelerator.main_process_first():  # tokenise once, other processes hit the cache
        train, held_out = load_pairs(cfg, tokenizer)
    keep_held_out_split(given, cfg)
    n = accelerator.num_processes
    optimizer, scheduler, total_steps = optimizer_and_schedule(
        model, cfg, len(train), n, sharded=is_sharded(accelerator)
    )
    # scoring as the forward of one module, so DDP's gradient hooks and autocast apply
    scorer, optimizer, scheduler = accelerator.prepare(PairScorer(model), optimizer, scheduler)
    cfg.prefix_sharing = prefix_sharing_for(
        cfg.attn_implementation, cfg.prefix_sharing, "rm train", model
    )
    collate = make_collator(cfg, tokenizer)
    eval_loader = accelerator.prepare(
        quiet_loader(held_out, collate, batch_size=cfg.per_device_eval_batch_size)
    )
    cadence = Cadence.of(cfg, total_steps)
    log_ = MetricsLog(out / "metrics.jsonl", accelerator, cadence.log, CURRENT_METRICS,
                      first=cfg.logging_first_step)  # fmt: skip
    t = Trainer(accelerator, scorer, tokenizer, optimizer, scheduler, eval_loader, out, log_,
                known_p_chosen(held_out), p_chosen_by_group(held_out))  # fmt: skip
    if cfg.head != "scalar":  # the annotators' disagreement about each held-out reply
        source = cfg.eval_dataset_name or cfg.dataset_name
        t.truth = pair_replies(source, held_out_split(cfg), held_out["source_row"])
    state = resumed_state(given, out, accelerator, model, optimizer, scheduler, train)
    if (done := finished_summary(out, given, state.step, total_steps,
                                 accelerator.is_main_process)) is not None:  # fmt: skip
        end_run(accelerator)  # relaunched after its end
        return done["eval"]
    start_tracking(accelerator, cfg.project, cfg.run_name, cfg, state.step)

    result, outputs, evaluated_at, saved_at = {}, {}, -1, -1
    if state.step == 0 and cfg.eval_on_start:
        (result, outputs), evaluated_at = evaluate(t, state, cfg), 0
    bar = progress_bar(total=total_steps, initial=state.step, desc="rm train",
                       show=accelerator.is_local_main_process)  # fmt: skip
    start, start_pairs = time.perf_counter(), state.pairs
    try:  # a run stopped by an error still logs the steps before it
        for epoch_ended in optimizer_steps(t, cfg, train, collate, state, total_steps):
            bar.update(1)
            if cadence.evaluates(state.step, epoch_ended):
                (result, outputs), evaluated_at = evaluate(t, state, cfg), state.step
                scorer.train()
            if cadence.saves(state.step, epoch_ended):
                save_state(t, state, "last", cfg)
                saved_at = state.step
    finally:
        log_.flush(state.step)
    bar.close()
    seconds = time.perf_counter() - start
    if saved_at != state.step:  # before the end's evaluation: an error there keeps the steps
        save_state(t, state, "last", cfg)
    if evaluated_at != state.step:
        best = state.best_metric
        result, outputs = evaluate(t, state, cfg)
        if state.best_metric != best and accelerator.is_main_process:
            write_state(t.out / "checkpoints" / "last", asdict(state))  # `last` resumes it
    if cfg.load_best_model_at_end:
        result, outputs = back_to_best(t, state, cfg, model, result, outputs)
    speed = {"train_seconds": seconds, "pairs_per_s": (state.pairs - start_pairs) / seconds,
             "peak_mem_gb": peak_memory_gb()}  # fmt: skip
    upload = save_final(t, cfg, state, result, outputs, speed)
    end_run(accelerator, then=upload)
    return result
