"""REINFORCE / RLOO alignment of a policy against any reward.

    distalign rl train configs/rl_rloo_scalar.yaml reward=runs/rm_scalar_cpu/final
    distalign rl train --config configs/rl_rloo_scalar.yaml --learning_rate 5e-5
    distalign rl train configs/rl_rloo_scalar.yaml resume_from_checkpoint=true

One step of ``run``, top to bottom (Ahmadian et al. 2024, sequence-level REINFORCE):
  1. sample ``num_generations`` replies for each of the step's prompts, no gradients, KV
     cache, one prefill per prompt (``distalign.models.generate``); the sampler returns the
     on-policy log-probs, so no separate "old policy" pass is needed;
  2. score the replies (reward model / functional / callable);
  3. reference log-probs from the frozen SFT weights (LoRA: adapters disabled), prefix-shared;
  4. R_i = r_i − β·Σ_t log(π/π_ref) (− ``missing_eos_penalty`` for replies cut at the length
     limit); advantages by ``baseline`` (RLOO, GRPO, Dr. GRPO, REINFORCE++, ReMax's greedy
     reply, a moving average of past rewards, or none; ``distalign.losses``); optional
     whitening and, for distributional rewards, scaling by 1/(1 + σ);
  5. loss −mean A_i·Σ_t log π(y_t|·) in micro-batches of ``per_device_train_batch_size``
     completions (prefix-shared, chunked LM head), gradient accumulation, clipping, AdamW.

Steps 1 and 3 and the held-out evaluation are in ``rl/rollouts.py``; what a step writes
(metrics, completions, checkpoints) in ``rl/outputs.py``; the settings, one field per key, in
``rl/config.py``.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from contextlib import nullcontext
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import TrainerState, get_scheduler

from distalign.cadence import Cadence, steps_of
from distalign.checkpoint import (
    count_nonfinite,
    finished_summary,
    resume_training,
    same_precision,
)
from distalign.config import (
    ConfigError,
    checkpoint_path,
    config_warning,
    frozen_dtype,
    order_seed,
)
from distalign.data.load import (
    LoadReport,
    held_out_or_training,
    hub_options,
    keep_held_out_split,
    warn_if_evaluating_on_training_data,
)
from distalign.data.pairs import render_prompt_ids, templated_note, templated_text
from distalign.data.prompts import load_prompts
from distalign.distributed import (
    engine_dtype,
    full_parameters,
    is_sharded,
    load_whole,
    loaded_in_shards,
    micro_batch,
)
from distalign.losses import (
    OBJECTIVE_WEIGHTING,
    cispo_loss,
    clipped_policy_loss,
    dr_grpo_advantages,
    group_advantages_where_scored,
    grpo_advantages,
    grpo_batch_advantages,
    high_entropy_mask,
    kl_estimates,
    kl_loss,
    kl_shaped_rewards,
    loss_type_objective,
    loss_type_weights,
    moving_average_advantages,
    moving_average_update,
    off_policy_mask,
    reinforce_loss,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    sapo_loss,
    uncertainty_scaled,
    vespo_loss,
    whiten,
)
from distalign.models.load import is_adapter, load_policy, prefix_sharing_for, resolve_model
from distalign.models.lora import add_lora
from distalign.models.options import disable_dropout
from distalign.models.templates import fit_rendering, rendering_of
from distalign.optim import adamw
from distalign.rl.config import POOLED_BASELINES, RLTrainConfig, world_size
from distalign.rl.logprobs import ReplyLogprobs, pad_reply_tensors
from distalign.rl.outputs import log_step, save_final, save_state
from distalign.rl.rewards import (
    GOLD_REWARD,
    RewardFunctionError,
    load_reward_source,
    prompt_columns,
)
from distalign.rl.rollouts import (
    Rollouts,
    evaluate_policy,
    reference_distributions,
    reference_logprobs,
    rollout,
)
from distalign.tracking import (
    MetricsLog,
    closes_trackers_on_error,
    end_run,
    progress_bar,
    start_run,
    start_tracking,
)

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a checkpoint saves besides weights and optimizer: where training stands."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # position in this epoch's prompt order
    progress: float = 0.0  # passes over the prompts before this step's (fractional epochs)
    baseline_mean: float = 0.0  # moving-average baseline and the rewards it has seen
    baseline_count: int = 0
    initial_eval: dict | None = None  # the SFT policy on held-out prompts, before step 1
    initial_eval_prompts: int | None = None  # how many held-out prompts it was measured on
    num_iterations: int | None = None  # updates per step, as older checkpoints saved it
    updates_per_step: int | None = None  # optimizer updates per step the schedule counts
    shuffle_dataset: bool | None = None  # the prompt order the cursor points into
    processes: int | None = None  # whose shares of the prompts the cursor points into
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    nonfinite_in_a_row: int = 0
    mixed_precision: str | None = None  # accelerate's, as the steps were computed in


# Far above any step, epoch or sampling batch (the sampler offsets batch b by b × 1_000_003):
# seed s's streams never meet seed s + 1's, so two seeds' runs are independent.
SEED_STRIDE = 2**40 + 15


def stream_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` (a step's sampling, an epoch's prompt order) of a run at
    ``seed``: ``seed × SEED_STRIDE + index`` (seed 0's streams are 0, 1, 2, …)."""
    return (seed * SEED_STRIDE + index) % 2**63


def next_prompts(prompts: list, state: TrainState, n: int, seed: int, shuffle=True) -> list:
    """The next ``n`` prompts of a fresh seeded permutation per epoch (``shuffle=False``: in
    the data set's order); moves the cursor, and notes where it stood (``progress``)."""

    def order(epoch: int) -> list[int]:
        permutation = list(range(len(prompts)))
        if shuffle:
            random.Random(stream_seed(seed, epoch)).shuffle(permutation)
        return permutation

    state.progress = state.epoch + state.cursor / max(len(prompts), 1)
    chosen, current = [], order(state.epoch)
    while len(chosen) < n:
        if state.cursor >= len(prompts):
            state.epoch, state.cursor = state.epoch + 1, 0
            current = order(state.epoch)
        chosen.append(prompts[current[state.cursor]])
        state.cursor += 1
    return chosen


def pass_ended(state: TrainState, prompts: int) -> bool:
    """Whether the prompts ``next_prompts`` drew last finished a pass over the training
    prompts (``eval_strategy`` / ``save_strategy`` ``epoch``: at the step that does)."""
    return math.floor(state.epoch + state.cursor / max(prompts, 1)) > math.floor(state.progress)


def share_prompts(prompts: list, accelerator) -> list:
    """This process's equal share of the prompts (all of them with one process)."""
    n = accelerator.num_processes
    if n == 1:
        return prompts
    usable = len(prompts) - len(prompts) % n
    if usable == 0:
        raise ConfigError(f"{len(prompts)} training prompts for {n} processes")
    if usable < len(prompts) and accelerator.is_main_process:
        log.warning(
            "%d prompt(s) left out so that every process has as many", len(prompts) - usable
        )
    return prompts[:usable][accelerator.process_index :: n]


def advantages_for(
    cfg: RLTrainConfig,
    shaped: torch.Tensor,
    std: torch.Tensor | None,
    state: TrainState,
    pooled: torch.Tensor | None = None,
    greedy: torch.Tensor | None = None,
    gather=None,
    finished: list[bool] | None = None,
    rewards: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Advantages (B,) of the shaped rewards (B,) by ``cfg.baseline``, and the baseline value
    logged (the batch mean for the group estimators). ``pooled``: the step's shaped rewards of
    every process (default: ``shaped``), from which the moving average is updated and
    REINFORCE++ takes its batch statistics, so that all processes agree. ``greedy``: ReMax's
    rewards of each prompt's greedy reply (P,) (``greedy_rewards``). ``gather``: every
    process's advantages from this one's (``accelerator.gather``), for ``normalize_advantages``
    over the whole batch, as TRL does. ``finished``: whether each reply ended before the
    length limit; with ``mask_truncated_completions`` the others get advantage 0, so they
    leave the loss (after the baseline and the normalisation took them in, as in TRL).
    ``rewards``: the rewards before the KL penalty (default: ``shaped``), for ``grpo``, which
    divides the rewards' spread out and subtracts the penalty after (``grpo_advantages``).
    ``lengths``: the replies' token counts (B,), by which REINFORCE++ weighs each reply in its
    batch statistics, as OpenRLHF whitens over tokens (default: each reply once)."""
    k, name = cfg.num_generations, cfg.baseline
    if not name.startswith("reinforce_pp") or lengths is None:  # only REINFORCE++ reads them
        lengths = None
    else:  # (this process's, every process's, as pooled)
        lengths = (lengths, lengths if gather is None or pooled is None else gather(lengths))
    # NaN before the KL penalty: no reward source scored the reply (advantage 0, as TRL); a
    # NaN the penalty brings is a numeric fault, left to reach the non-finite-step guard
    unscored = (shaped if rewards is None else rewards).isnan()
    no_greedy = greedy is not None and bool(greedy.isnan().any())
    if unscored.any() or no_greedy or (pooled is not None and pooled.isnan().any()):
        return _advantages_where_scored(cfg, shaped, std, state, pooled, greedy, gather,
                                        finished, rewards, unscored, lengths)  # fmt: skip
    if name == "moving_average":
        adv, base = moving_average_advantages(
            shaped, state.baseline_mean, state.baseline_count, pooled
        )
        seen = shaped if pooled is None else pooled
        state.baseline_mean, state.baseline_count = moving_average_update(
            state.baseline_mean,
            state.baseline_count,
            seen[~seen.isnan()],  # a NaN the KL penalty brought never enters the average
            cfg.ema,
        )
    elif name == "remax":
        if greedy is None:
            raise ValueError("baseline remax needs the greedy replies' rewards")
        adv, base = remax_advantages(shaped, greedy, k), greedy.mean().item()
    else:
        counts = {} if lengths is None else {"lengths": lengths[0], "pooled_lengths": lengths[1]}
        raw = shaped if rewards is None else rewards  # GRPO's divide the rewards' spread
        cost = None if rewards is None else rewards - shaped  # and subtract the KL after
        estimators = {
            "rloo": lambda: rloo_advantages(shaped, k),
            "grpo": lambda: grpo_advantages(raw, k, penalty=cost),
            "grpo_batch": lambda: grpo_batch_advantages(
                raw, k, penalty=cost, pooled=_batch_of(raw, gather)
            ),
            "dr_grpo": lambda: dr_grpo_advantages(shaped, k),
            "reinforce_pp": lambda: reinforce_pp_advantages(shaped, None, pooled, **counts),
            "reinforce_pp_baseline": lambda: reinforce_pp_advantages(shaped, k, pooled, **counts),
            "none": lambda: shaped.clone(),
        }
        adv = estimators[name]()
        base = 0.0 if name == "none" else (shaped if pooled is None else pooled).mean().item()
    return _after_estimator(cfg, adv, std, gather, finished), base


def _after_estimator(cfg: RLTrainConfig, adv, std, gather, finished, zero=None) -> torch.Tensor:
    """What applies after any estimator: normalisation over every process's replies that
    take part (NaN: left out), uncertainty scaling, truncated replies out of the loss, and 0
    for the replies in ``zero`` (those left out)."""
    if cfg.normalize_advantages:
        adv = whiten(adv, eps=1e-4, reference=None if gather is None else gather(adv))  # TRL's ε
    if cfg.uncertainty_scaling and std is not None:
        adv = uncertainty_scaled(adv, std)
    if cfg.mask_truncated_completions and finished is not None:
        adv = adv * torch.tensor(finished, dtype=adv.dtype, device=adv.device)
    return adv if zero is None else adv.masked_fill(zero, 0.0)


def _advantages_where_scored(
    cfg: RLTrainConfig, shaped, std, state: TrainState, pooled, greedy, gather, finished,
    rewards, unscored, lengths=None,
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """``advantages_for`` when some replies were scored by no reward source (``unscored``), as
    TRL's RLOO takes them: they stay out of every baseline and statistic and get advantage 0;
    a group estimator runs over each prompt's scored replies
    (``group_advantages_where_scored``). ReMax's replies whose greedy reply no source scored
    have no baseline, and get 0 too."""
    k, name, scored = cfg.num_generations, cfg.baseline, ~unscored
    everyone = shaped[scored] if pooled is None else pooled
    counts = None  # everyone's token counts, for REINFORCE++
    if lengths is not None:  # (this process's, every process's)
        counts = lengths[0][scored] if pooled is None else lengths[1]
    counts = None if counts is None else counts[~everyone.isnan()]
    everyone = everyone[~everyone.isnan()]  # never a NaN into a baseline's state
    adv = torch.full_like(shaped, float("nan"))
    zero = unscored
    base = everyone.double().mean().item() if everyone.numel() else 0.0
    if name == "moving_average":
        adv[scored], base = moving_average_advantages(
            shaped[scored], state.baseline_mean, state.baseline_count, everyone
        )
        if everyone.numel():
            state.baseline_mean, state.baseline_count = moving_average_update(
                state.baseline_mean, state.baseline_count, everyone, cfg.ema
            )
    elif name == "remax":
        if greedy is None:
            raise ValueError("baseline remax needs the greedy replies' rewards")
        adv, base = remax_advantages(shaped, greedy, k), greedy.nanmean().item()
        zero = unscored | greedy.isnan().to(unscored.device).repeat_interleave(k)
        adv = adv.masked_fill(zero, float("nan"))
    elif name in ("rloo", "grpo", "grpo_batch", "dr_grpo"):
        estimator = {"rloo": rloo_advantages, "grpo": grpo_advantages,
                     "dr_grpo": dr_grpo_advantages}.get(name)  # fmt: skip
        if name == "grpo_batch":  # the std of every process's scored rewards
            raw = shaped if rewards is None else rewards
            estimator = functools.partial(grpo_batch_advantages, pooled=_batch_of(raw, gather))
        if name.startswith("grpo") and rewards is not None:
            adv = group_advantages_where_scored(estimator, rewards, k,
                                                penalty=rewards - shaped)  # fmt: skip
        else:
            adv = group_advantages_where_scored(estimator, shaped, k, scored=scored)
        # out of the normalisation, as TRL: the unscored, and a group's only scored reply
        alone = scored.view(-1, k).sum(-1, keepdim=True).expand(-1, k).reshape(-1) < 2
        zero = unscored | alone
        adv = adv.masked_fill(zero, float("nan"))
    elif name == "reinforce_pp":
        adv[scored] = reinforce_pp_advantages(shaped[scored], pooled=everyone,
                                              pooled_lengths=counts)  # fmt: skip
    elif name == "none":
        adv = shaped.clone()
    else:
        raise RewardFunctionError(
            f"baseline {name} needs every reply scored, and {int((~scored).sum())} were scored "
            "by no reward source (all returned None/NaN): give them a reward, or take another "
            "baseline (rloo leaves them out, as TRL does)"
        )
    return _after_estimator(cfg, adv, std, gather, finished, zero), base


def _batch_of(rewards: torch.Tensor, gather=None) -> torch.Tensor:
    """Every process's ``rewards`` (``gather``: ``accelerator.gather``), for a batch statistic."""
    return rewards if gather is None else gather(rewards)


def load_rewards(cfg: RLTrainConfig, device, dtype: str = "float32"):
    """The reward sources of ``cfg`` summed with their weights (None: the gold judge, which
    ``__post_init__`` allows only on the benchmark's prompts). Leaves the global RNGs as they
    were, so the policy built next gets the same LoRA init for a seed."""
    reward = load_reward_source(
        GOLD_REWARD if cfg.reward is None else cfg.reward, weights=cfg.reward_weights,
        functional=cfg.functional, kappa=cfg.kappa, alpha=cfg.alpha, tau=cfg.tau,
        max_length=cfg.reward_max_length, batch_size=cfg.reward_batch_size, device=device,
        trust_remote_code=cfg.reward_trust_remote_code, dtype=dtype,
        attn_implementation=cfg.attn_implementation, template_kwargs=cfg.chat_template_kwargs,
    )  # fmt: skip
    sources = getattr(reward, "sources", [reward])
    mixture = len(sources) == 1 and getattr(sources[0], "head", None) == "mixture"
    if cfg.uncertainty_scaling and mixture and not sources[0].gain_over_reference:
        log.warning(
            "uncertainty_scaling: a mixture RM's spread is defined for its gains over an "
            "SFT reply only (functional mean_minus_std, cvar or quantile), so it is off"
        )
    return reward


def prompt_sets(cfg: RLTrainConfig, accelerator, tokenizer, reward) -> tuple[list, list]:
    """This process's share of the training prompts, and the first held-out prompts (the
    config name and revision apply to the held-out set when it is the same hub data set).
    A policy or reward model without a chat template renders HH transcripts as written."""
    hub = hub_options(cfg)
    report = LoadReport(source=str(cfg.dataset_name))
    bad = {"skip_bad_rows": cfg.skip_bad_rows}
    train = load_prompts(cfg.dataset_name, cfg.dataset_train_split, **hub, **bad, report=report)
    if accelerator.is_main_process:
        warn_if_evaluating_on_training_data(cfg)
    same = cfg.eval_dataset_name is None or cfg.eval_dataset_name == cfg.dataset_name
    source = cfg.eval_dataset_name or cfg.dataset_name
    held_out_report = LoadReport(source=str(source))
    held_out = held_out_or_training(
        cfg, RLTrainConfig.dataset_test_split,
        lambda split: load_prompts(source, split, **hub_options(cfg, own=same), **bad,
                                   report=held_out_report),
        training=train,
    )  # fmt: skip
    data = LoadReport(
        source=source, transcripts=report.transcripts + held_out_report.transcripts,
        conversations=report.conversations + held_out_report.conversations,
        rows=report.rows + held_out_report.rows,
    )  # fmt: skip
    for prompts in (train, held_out):  # a reward function's missing column: before sampling
        if hasattr(reward, "check_columns"):
            reward.check_columns(prompts)
    fit_rendering(tokenizer, data, source, "the policy")
    if accelerator.is_main_process and (
        marker := templated_text(tokenizer, [{"prompt": p} for p in train])
    ):
        log.warning("%s: %s", cfg.dataset_name, templated_note(marker, cfg.model_name_or_path))
    sources = [s for s in getattr(reward, "sources", [reward]) if hasattr(s, "tokenizer")]
    for s in sources:
        if hasattr(s, "fit_rendering"):
            s.fit_rendering(data, source)
        else:
            fit_rendering(s.tokenizer, data, source, f"reward model {getattr(s, 'name', '')}")
    plain = any(rendering_of(s.tokenizer) == "plain" for s in sources)
    if accelerator.is_main_process and rendering_of(tokenizer) is None and plain:
        log.warning(
            "a reward model reads plain text (prompt + reply as one text, as TRL trained it on "
            "standard data) while the policy writes chat turns: their replies are joined to the "
            "prompt without a turn between them; a base policy suits such a reward model"
        )
    if accelerator.is_main_process:
        say_cut_prompts(tokenizer, train, held_out, cfg.max_prompt_length, cfg.chat_template_kwargs)
    if not held_out:  # before training, not at its end
        raise ConfigError(
            f"no held-out prompts in {source!r} (split {cfg.dataset_test_split!r}) to evaluate "
            "the policy on: give eval_dataset_name or dataset_test_split"
        )
    return share_prompts(train, accelerator), held_out[: cfg.max_eval_samples or None]


def say_cut_prompts(
    tokenizer, train, held_out, max_prompt_length, template_kwargs=None, sample: int = 2000
) -> None:
    """Warn when prompts are longer than ``max_prompt_length`` tokens as the policy reads them
    (they are cut from the left; TRL's RLOO never cuts), counted over the first ``sample``
    training and held-out prompts."""
    if not max_prompt_length:
        return
    for name, prompts in (("training", train), ("held-out", held_out)):
        measured = prompts[:sample]
        cut = sum(
            len(render_prompt_ids(tokenizer, p, template_kwargs)) > max_prompt_length
            for p in measured
        )
        if cut:
            first = f"the first {len(measured)}" if len(prompts) > sample else len(measured)
            log.warning(
                "%d of %s %s prompts are longer than max_prompt_length %d tokens and are cut "
                "from the left (max_prompt_length=null keeps them whole)",
                cut, first, name, max_prompt_length,
            )  # fmt: skip


def build_policy(cfg: RLTrainConfig, accelerator):
    """Policy (+ gradient checkpointing, + LoRA), tokenizer, and the frozen reference: None
    with LoRA (adapters off), else a copy of the SFT weights.

    A LoRA policy (an adapter folder, an earlier run's ``final/``) goes on training its
    adapter with ``use_peft``, the reference its base model (adapters off, as TRL trains a
    PeftModel); without, it is merged into its base, whose every weight trains, the merged
    policy the reference."""
    load = {"attn_implementation": cfg.attn_implementation, **cfg.load_kwargs()}
    adapter = is_adapter(resolve_model(cfg.model_name_or_path))
    if adapter:
        load["trainable_adapter" if cfg.use_peft else "merge_adapter"] = True
        how = (
            "its adapter trains on (lora_* keys unread; the reference is its base model, "
            "adapters off)"
            if cfg.use_peft
            else "merged into its base model, every weight of which trains (use_peft=false); "
            "the reference is the merged policy"
        )
        say = log.warning if cfg.use_peft and cfg.beta else log.info  # β pulls to the base
        say("%s is a LoRA adapter: %s", cfg.model_name_or_path, how)
    # an adapter merged into its base needs the base whole (ZeRO-3 shards it at prepare);
    # PEFT gathers sharded weights (DoRA's norms) only while transformers sees ZeRO-3
    with nullcontext() if adapter and not cfg.use_peft else loaded_in_shards(accelerator):
        policy, tokenizer = load_policy(cfg.model_name_or_path, **load)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if cfg.use_peft and not adapter:
            policy = add_lora(policy, **cfg.lora_kwargs("CAUSAL_LM"))
            log.info("training LoRA adapters (r %d on %s; use_peft=false trains every weight, "
                     "as TRL does without a peft_config)",
                     cfg.lora_r, cfg.lora_target_modules)  # fmt: skip
    cfg.prefix_sharing = prefix_sharing_for(
        cfg.attn_implementation, cfg.prefix_sharing, "rl train", policy
    )
    ref_model = None
    if cfg.disable_dropout:
        disable_dropout(policy)
    if not cfg.use_peft:
        ref_model, _ = load_policy(cfg.model_name_or_path, **load)
        ref_model.requires_grad_(False).eval().to(accelerator.device)
        if (dtype := engine_dtype(accelerator)) is not None:  # as DeepSpeed casts the policy
            ref_model.to(dtype)
    return policy, tokenizer, ref_model


@dataclass
class Trainer:
    """The prepared pieces a step, an evaluation and a checkpoint need (values, no logic)."""

    accelerator: Accelerator
    learner: ReplyLogprobs  # prepared: the teacher-forced pass as one module's forward
    ref_model: Any  # None with LoRA
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    reward: Any  # a RewardSource
    out: Path
    log: MetricsLog

    @property
    def policy(self):
        """The policy inside the wrappers, for sampling and saving."""
        return self.accelerator.unwrap_model(self.learner).policy


def score(t: Trainer, prompts, ro: Rollouts, cfg: RLTrainConfig, log: bool = True):
    """Rewards of the step's replies: Σ w_i r_i and each source's r_i (win probability:
    against one SFT reply per prompt). Each reply's prompt brings its data-set columns.
    ``log``: keep what reward functions log (the step's samples)."""
    reference = None
    if t.reward.needs_reference:
        per_prompt = reference_distributions(
            t.policy, t.ref_model, t.tokenizer, t.reward, prompts, cfg
        )
        reference = {n: p.repeat_interleave(cfg.num_generations, 0) for n, p in per_prompt.items()}
    chats = [p for p in prompts for _ in range(cfg.num_generations)]
    return t.reward(
        chats,
        ro.texts,
        reference,
        columns=prompt_columns(chats),
        completion_ids=ro.replies,
        log=log,
    )


def greedy_rewards(t: Trainer, prompts, cfg: RLTrainConfig) -> torch.Tensor | None:
    """ReMax's baseline (Li et al. 2023): the reward of each prompt's greedy reply, (P,); None
    for the other estimators. One more sample (greedy, no gradients) and score per prompt per
    step, scored as the samples are (− missing_eos_penalty when cut at the length limit) but
    without their KL term: any function of the prompt alone keeps the gradient unbiased."""
    if cfg.baseline != "remax":
        return None
    greedy = copy(cfg)  # the step's settings, decoded greedily, one reply per prompt
    greedy.temperature, greedy.num_generations = 0.0, 1
    ro = rollout(t.policy, t.tokenizer, prompts, greedy, seed=cfg.seed)
    return rewards_of(t, prompts, ro, greedy)[1]


def rewards_of(t: Trainer, prompts, ro: Rollouts, cfg: RLTrainConfig, state=None):
    """(the scores, as ``score`` gives them; the rewards training takes: clipped to
    ``reward_clip_range``, less ``missing_eos_penalty`` for a reply cut at the length limit).
    ``state``: where training stands, which TRL reward functions get as ``trainer_state``;
    given for the step's samples, whose reward functions' logs are kept."""
    if state is not None:
        t.reward.trainer_state = trainer_state_of(state, cfg)
    scored = score(t, prompts, ro, cfg, log=state is not None)
    rewards = scored.rewards.to(ro.logps.device)
    if cfg.reward_clip_range:
        rewards = rewards.clamp(*cfg.reward_clip_range)
    cut = torch.tensor([not f for f in ro.finished], dtype=rewards.dtype, device=rewards.device)
    return scored, rewards - cfg.missing_eos_penalty * cut


def trainer_state_of(state: TrainState, cfg: RLTrainConfig) -> TrainerState:
    """transformers' ``TrainerState`` as TRL gives it to reward functions: its steps are
    optimizer updates, ``updates_per_step`` per step here; its epoch is fractional, the passes
    over the training prompts before this step's, as transformers counts it during a step;
    its logging, evaluation and save intervals are the config's, in updates too."""
    per_step = cfg.updates_per_step

    def interval(value: float, strategy: str = "steps") -> int:
        return steps_of(value, cfg.max_steps) * per_step if strategy != "no" else 0

    return TrainerState(
        global_step=state.step * per_step, max_steps=cfg.max_steps * per_step,
        epoch=state.progress, logging_steps=interval(cfg.logging_steps),
        eval_steps=interval(cfg.eval_steps, cfg.eval_strategy),
        save_steps=interval(cfg.save_steps, cfg.save_strategy),
        train_batch_size=cfg.per_device_train_batch_size,
    )  # fmt: skip


def pooled_rewards(accelerator, shaped: torch.Tensor, cfg: RLTrainConfig) -> torch.Tensor | None:
    """Every process's shaped rewards for the estimators that take batch statistics (moving
    average, REINFORCE++), so that all processes use the same baseline and the state process 0
    saves is every process's; None for the others."""
    return accelerator.gather(shaped) if cfg.baseline in POOLED_BASELINES else None


@dataclass
class Update:
    """What a step's policy updates report: the mean gradient norm of the finite ones, whether
    each was finite (a non-finite one is skipped), the token entropy (sum, count) of the
    policy that sampled, and (clipped, counted) of the clipped updates (None with one update):
    the ratios that were clipped and all of them, replies' or, at importance_sampling_level
    token, tokens' (TRL's clip_ratio/region_mean, summed over processes before dividing)."""

    grad_norm: float
    finite: list[bool]  # per update
    entropy_sum: float
    tokens: int
    clipping: tuple[float, float] | None = None
    loss: float = 0.0  # the mean over the step's updates of each one's loss (TRL's loss)


def policy_gradient_step(
    t: Trainer,
    ro: Rollouts,
    adv: torch.Tensor,
    cfg: RLTrainConfig,
    old: torch.Tensor | None,
    span: tuple[int, int] | None = None,
    kl: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """One optimizer step over the micro-batches of the replies in ``span`` (default: all;
    skipped when the gradient is not finite): −mean A_i·Σ_t log π (``reinforce_loss``), or,
    given ``old`` (B, T) the sampling policy's log-probs of every reply's tokens, the clipped
    objective against it at ``importance_sampling_level`` (``clipped_policy_loss``); with
    ``kl`` (the reference's log-probs (B, T), each reply's weight (B,)), plus the KL penalty
    (``losses.kl_loss``); with ``entropy_coef``, minus that times the mean entropy of the
    micro-batch's tokens the policy loss keeps (TRL GRPO's bonus). Returns
    (grad norm, summed token entropy, tokens, the span's token log-probs (detached, (n, T)),
    the share of each reply's ratios clipped, the span's loss)."""
    t.learner.train()
    begin, end = span or (0, len(ro.replies))
    n, step, width = end - begin, cfg.per_device_train_batch_size, ro.mask.shape[1]
    entropy_sum, tokens, seq, clipped, total = 0.0, 0, [], [], 0.0
    for s in range(begin, end, step):  # micro-batches of replies; one may cut a prompt's group
        stop = min(end, s + step)
        last = stop >= end  # gradients are all-reduced once, after the last micro-batch
        with micro_batch(t.accelerator, t.learner, last):
            lp_pad, mask, ent_pad, (ent, tok) = teacher_forced(t, ro, cfg, s, stop)
            counted = _counted(mask, ro, cfg, s, stop)  # the reply tokens the loss counts
            keep = kept_tokens(t, ent_pad, counted, cfg)  # None: all
            # each loss averages over this micro-batch; weight it by its share
            before = None if old is None else old[s:stop, : lp_pad.shape[1]]
            loss, clip = policy_loss(lp_pad, mask, before, adv[s:stop], cfg, keep)
            if clip is not None:
                clipped.append(clip)
            if kl is not None:  # on every counted token, those the entropy mask drops too
                sampled = lp_pad.detach() if before is None else before.to(lp_pad)
                loss = loss + kl_loss(
                    lp_pad, kl[0][s:stop, : lp_pad.shape[1]].to(lp_pad), counted,
                    kl[1][s:stop].to(lp_pad), sampled if cfg.use_bias_correction_kl else None,
                    cfg.ratio_level,
                )  # fmt: skip
            if cfg.entropy_coef:  # the bonus on the tokens the policy loss keeps, as TRL's
                on = counted if keep is None else counted * keep
                loss = loss - cfg.entropy_coef * (ent_pad * on).sum() / on.sum().clamp(min=1)
            t.accelerator.backward(loss * (stop - s) / n)
            total += loss.item() * (stop - s) / n
        seq.append(_to_width(lp_pad.detach(), width))
        entropy_sum, tokens = entropy_sum + ent, tokens + tok
    # the norm is needed even without clipping (inf clips nothing): a NaN or inf in any
    # gradient makes it non-finite, and that update is skipped instead of ruining the weights
    grad_norm = t.accelerator.clip_grad_norm_(t.learner.parameters(), cfg.max_grad_norm or math.inf)
    # DeepSpeed's engine clipped and stepped in the last backward: the norm it reports, a float
    grad_norm = torch.as_tensor(grad_norm)
    if torch.isfinite(grad_norm):
        t.optimizer.step()
        t.scheduler.step()
    t.optimizer.zero_grad()
    clip = torch.cat(clipped) if clipped else None
    return grad_norm, entropy_sum, tokens, torch.cat(seq), clip, total


def policy_loss(lp, mask, old, adv, cfg: RLTrainConfig, keep=None):
    """A micro-batch's policy loss, and the share of each reply's ratios clipped (None where
    nothing is counted). ``old`` (n, T): the sampling policy's log-probs, for an update after
    a step's first; None for the first, at ratio 1: REINFORCE's loss (``reinforce_loss``), or
    the clipped loss's at ratio 1 where ``keep`` leaves tokens out, or ``loss_type``'s own
    objective (CISPO, SAPO, VESPO: ``losses``) at ratio 1. Later updates take PPO's clipped
    objective at ``importance_sampling_level`` (``clipped_policy_loss``) or that objective,
    without the replies ``off_policy_mask_threshold`` masks (``losses.off_policy_mask``)."""
    objective = loss_type_objective(cfg.loss_type)
    level = cfg.ratio_level
    if old is not None and cfg.off_policy_mask_threshold is not None:  # (at ratio 1: no drift)
        adv = adv * off_policy_mask(lp, old, mask, adv, cfg.off_policy_mask_threshold)
    if old is None:
        if objective == "clip" and keep is None:
            return reinforce_loss(lp, mask, adv), None
        # at ratio 1 the clipped loss (and SAPO's) keeps tokens as the later ones do
        level = "token" if objective in ("clip", "sapo") and level == "reply" else level
    before = lp.detach() if old is None else old
    if objective == "cispo":
        eps_max = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        loss, clip = cispo_loss(lp, mask, before, adv, eps_max, level, keep)
    elif objective == "sapo":
        loss, clip = sapo_loss(lp, mask, before, adv, cfg.sapo_temperature_pos,
                               cfg.sapo_temperature_neg, level, keep), None  # fmt: skip
    elif objective == "vespo":
        loss, clip = vespo_loss(
            lp, mask, before, adv, keep, k_pos=cfg.vespo_k_pos, lambda_pos=cfg.vespo_lambda_pos,
            k_neg=cfg.vespo_k_neg, lambda_neg=cfg.vespo_lambda_neg,
        ), None  # fmt: skip
    else:  # at ratio 1 (the first update) nothing is clipped, nor capped by delta (> 1)
        loss, clip = clipped_policy_loss(lp, mask, before, adv, cfg.epsilon, cfg.epsilon_high,
                                         level, cfg.delta, keep)  # fmt: skip
    return loss, None if old is None and objective != "cispo" else clip


def teacher_forced(t: Trainer, ro: Rollouts, cfg: RLTrainConfig, start: int, stop: int):
    """The learner's pass over the replies [start, stop): their log-probs, mask and token
    entropies (with their gradient for ``entropy_coef``, else detached), each (n, T')
    right-padded, and (summed token entropy, token count)."""
    ids, groups = ro.groups(start, stop)
    temperature = cfg.temperature or 1.0
    grad = cfg.entropy_coef > 0 and torch.is_grad_enabled()
    lp, ent = t.learner(ids, groups, t.tokenizer.pad_token_id, temperature, cfg.prefix_sharing,
                        grad)  # fmt: skip
    entropy = (sum(e.sum().item() for e in ent), sum(e.numel() for e in ent))
    return (*pad_reply_tensors(lp), pad_reply_tensors(ent)[0], entropy)


def _counted(mask: torch.Tensor, ro: Rollouts, cfg: RLTrainConfig, start: int, stop: int):
    """The reply tokens [start, stop) a token statistic counts: with
    ``mask_truncated_completions``, not those of replies cut at the length limit (as TRL's
    completion mask leaves them out)."""
    if not cfg.mask_truncated_completions:
        return mask
    finished = torch.tensor(ro.finished[start:stop], dtype=mask.dtype, device=mask.device)
    return mask * finished[:, None]


def kept_tokens(t: Trainer, entropies, mask, cfg: RLTrainConfig) -> torch.Tensor | None:
    """The micro-batch's tokens the policy loss keeps under ``top_entropy_quantile`` (the
    quantile over every process's reply tokens of this micro-batch, as TRL takes it), as a
    float mask; None at 1: every token."""
    if cfg.top_entropy_quantile >= 1:
        return None
    local = entropies[mask.bool()].detach().float()
    sentinel = -1.0  # entropies are >= 0
    gathered = t.accelerator.gather(
        t.accelerator.pad_across_processes(local, dim=0, pad_index=sentinel)
    )
    everyone = gathered[gathered != sentinel]
    return high_entropy_mask(entropies, mask, cfg.top_entropy_quantile, everyone).to(mask.dtype)


def _to_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """(n, T') right-padded values -> (n, width), width >= T', padded with zeros."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


@torch.no_grad()
def sampling_logprobs(t: Trainer, ro: Rollouts, cfg: RLTrainConfig, begin: int):
    """The token log-probs (n, T) of the replies from ``begin`` on by the policy that sampled
    them (the pass the updates take, without gradients, before any update), their summed
    token entropy and token count."""
    t.learner.train()
    seq, entropy_sum, tokens = [], 0.0, 0
    for s in range(begin, len(ro.replies), cfg.per_device_train_batch_size):
        stop = min(len(ro.replies), s + cfg.per_device_train_batch_size)
        lp_pad, _, _, (ent, tok) = teacher_forced(t, ro, cfg, s, stop)
        seq.append(_to_width(lp_pad, ro.mask.shape[1]))
        entropy_sum, tokens = entropy_sum + ent, tokens + tok
    return torch.cat(seq), entropy_sum, tokens


def loss_weights(t: Trainer, ro: Rollouts, cfg: RLTrainConfig) -> torch.Tensor:
    """Per reply, ``loss_type``'s factor on its term of the loss (``losses.loss_type_weights``),
    with TRL GRPO's token counts: ``dapo`` the step's whole batch of rollouts over every
    process (TRL's ``num_items_in_batch``, one count for every update of a generation),
    ``bnpo`` each micro-batch of this process; replies left out of the loss
    (``mask_truncated_completions``) count no tokens, as TRL's completion mask leaves them.
    The loss averages over replies, masked ones included, so c = replies / tokens."""
    lengths = ro.mask.sum(-1).float()
    weighting = OBJECTIVE_WEIGHTING.get(cfg.loss_type, cfg.loss_type)
    if weighting in ("sequence", "grpo", "dr_grpo"):
        return loss_type_weights(lengths, weighting, cfg.max_completion_length)
    counted = _counted(ro.mask, ro, cfg, 0, len(lengths)).sum(-1)
    n, size = len(lengths), cfg.per_device_train_batch_size
    groups = [(0, n)] if weighting == "dapo" else [(s, min(n, s + size)) for s in range(0, n, size)]
    out = torch.ones_like(lengths)
    for begin, end in groups:
        totals = torch.stack([counted[begin:end].sum(), counted.new_tensor(end - begin)])
        if weighting == "dapo":
            totals = t.accelerator.reduce(totals, reduction="sum")
        tokens, replies = (float(x) for x in totals)
        out[begin:end] = loss_type_weights(
            lengths[begin:end], weighting, cfg.max_completion_length, tokens, replies
        )
    return out


def reward_beta(cfg: RLTrainConfig) -> float:
    """β of the KL penalty in the reward: 0 where it is in the loss (``use_kl_loss``)."""
    return 0.0 if cfg.use_kl_loss else cfg.beta


def policy_updates(t: Trainer, ro: Rollouts, adv: torch.Tensor, cfg: RLTrainConfig,
                   ref_lp: torch.Tensor | None = None) -> Update:  # fmt: skip
    """``num_iterations`` passes (TRL's μ) over one batch of rollouts, each an optimizer step
    per ``gradient_accumulation_steps`` micro-batches of it (``steps_per_generation`` of them
    per pass, TRL's). The first step is the REINFORCE step (ratio 1); the others clip the
    ratio to the sampling policy's log-probs: the first step's own pass, and for the replies
    the first pass reaches after it, a pass without gradients before any step (as TRL takes
    its old log-probs). With ``use_kl_loss``, every update adds β·k3 of the reference's
    log-probs ``ref_lp`` (B, T) to the loss (``losses.kl_loss``)."""
    n = len(ro.replies)
    size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    spans = [(s, min(n, s + size)) for s in range(0, n, size)]
    weights = loss_weights(t, ro, cfg)
    adv = adv * weights
    in_loss = cfg.use_kl_loss and cfg.beta and ref_lp is not None
    kl = (ref_lp, cfg.beta * weights) if in_loss else None
    old, entropy_sum, tokens = None, 0.0, 0
    if len(spans) > 1:  # the later spans' sampling log-probs, while the policy is still π_old
        later, entropy_sum, tokens = sampling_logprobs(t, ro, cfg, spans[1][0])
        head = adv.new_zeros((spans[0][1], ro.mask.shape[1]))  # the first step's own pass
        old = torch.cat([head, later.to(adv.device)])
    # each reply's ratios (its tokens', or one), counted for every update, the first's (ratio
    # 1) unclipped, as TRL's clip_ratio/region_mean counts them
    ratios = _counted(ro.mask, ro, cfg, 0, n).sum(-1).float()
    if cfg.ratio_level != "token":
        ratios = torch.ones_like(ratios)
    norms, clipped, counted, losses = [], [], [], []
    for i in range(cfg.num_iterations):
        for begin, end in spans:
            first = i == 0 and begin == 0
            step = policy_gradient_step(t, ro, adv, cfg, None if first else old, (begin, end),
                                        kl)  # fmt: skip
            norm, ent, tok, seq, clip, loss = step
            norms.append(float(norm))
            losses.append(loss)
            units = ratios[begin:end]
            counted.append(units.sum().item())
            if first:  # the first span's own pass gives its sampling log-probs and entropy
                old = seq if old is None else torch.cat([seq.to(old.device), old[end:]])
                entropy_sum, tokens = entropy_sum + ent, tokens + tok
            if clip is not None:  # each reply's share of its ratios clipped, times how many
                clipped.append((clip.float().to(units.device) * units).sum().item())
    finite = [math.isfinite(x) for x in norms]
    kept = [x for x in norms if math.isfinite(x)]
    norm = sum(kept) / len(kept) if kept else math.nan
    clipping = (sum(clipped), sum(counted)) if clipped else None  # None: no clipped update
    return Update(norm, finite, entropy_sum, tokens, clipping=clipping,
                  loss=sum(losses) / len(losses))  # fmt: skip


def evaluate(t: Trainer, state: TrainState, prompts, cfg: RLTrainConfig) -> dict[str, float]:
    if hasattr(getattr(t, "reward", None), "trainer_state"):  # as the updates made so far
        t.reward.trainer_state = trainer_state_of(state, cfg)
    result = evaluate_policy(
        t.policy, t.ref_model, t.tokenizer, prompts, t.reward, cfg, t.tokenizer.pad_token_id
    )
    t.log.write(state.step, {f"eval/{k}": v for k, v in result.items()})
    return result


def check_resumable(cfg: RLTrainConfig, saved: dict) -> None:
    """A ConfigError where this run cannot go on from a checkpoint's state ``saved``: it must
    keep the optimizer updates per step its learning-rate schedule counts."""
    was = saved.get("updates_per_step") or saved.get("num_iterations")  # older: μ alone
    if was not in (None, cfg.updates_per_step):
        raise ConfigError(
            f"the checkpoint's run made {was} optimizer updates per step, and its learning-rate "
            f"schedule counts them; these settings make {cfg.updates_per_step} (num_iterations "
            f"{cfg.num_iterations} × steps_per_generation {cfg.micro_batches_per_step} / "
            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps}): resume with "
            f"settings that make {was}"
        )


def begin(t: Trainer, state: TrainState, prompts, cfg: RLTrainConfig) -> None:
    """Before this run's first step: a resumed run is warned when its prompt order changed
    mid-pass (on
    another number of processes, it starts a new pass); the
    SFT policy's evaluation (``evaluate_sft``)."""
    processes = getattr(getattr(t, "accelerator", None), "num_processes", world_size())
    if cfg.generation_batch_size is not None and processes != world_size():
        raise ConfigError(
            f"generation_batch_size: the launcher said {world_size()} processes (WORLD_SIZE) "
            f"but {processes} run; give steps_per_generation instead"
        )
    if state.shuffle_dataset not in (None, cfg.shuffle_dataset) and state.cursor:
        config_warning(
            log,
            "shuffle_dataset=%s: the checkpoint's run drew this pass's prompts in the other "
            "order, so some of them come again before the next pass and others not at all",
            cfg.shuffle_dataset,
        )
    if state.processes not in (None, processes) and state.step:
        config_warning(
            log,
            "resumed on %d process(es) where the checkpoint's run had %d: a step samples for "
            "%d prompts instead of %d, and each process's share of the prompts changed, so "
            "the run starts its next pass over them here",
            processes, state.processes, processes * cfg.prompts_per_step,
            state.processes * cfg.prompts_per_step,
        )  # fmt: skip
        if state.cursor:  # a cursor into the old shares would repeat some prompts, skip others
            state.epoch, state.cursor = state.epoch + 1, 0
    state.processes = processes
    state.updates_per_step, state.shuffle_dataset = cfg.updates_per_step, cfg.shuffle_dataset
    state.num_iterations = None  # said by updates_per_step now
    evaluate_sft(t, state, prompts, cfg)


def evaluate_sft(t: Trainer, state: TrainState, prompts, cfg: RLTrainConfig) -> None:
    """Before step 1 (``eval_on_start``): the SFT policy on the held-out prompts, the
    before/after table's first row. A resumed run that evaluates on another number of prompts
    says that the two rows no longer compare the same prompts."""
    if state.step == 0 and cfg.eval_on_start:
        with full_parameters(t.learner):
            state.initial_eval = evaluate(t, state, prompts, cfg)
        state.initial_eval_prompts = len(prompts)
    elif state.initial_eval_prompts not in (None, len(prompts)):
        config_warning(
            log,
            "resumed with %d held-out prompts; the SFT policy was measured on %d before step "
            "1, so the before/after figures compare different prompts (keep max_eval_samples "
            "as it was)",
            len(prompts),
            state.initial_eval_prompts,
        )


def optimizer_and_schedule(policy, cfg: RLTrainConfig, sharded: bool):
    """AdamW over the trainable weights; the learning rate warms up linearly over
    ``warmup_steps`` (a count, or a fraction of max_steps), then stays constant, or follows
    ``lr_scheduler_type`` (any transformers scheduler) over max_steps."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(
        trainable, cfg.learning_rate, cfg.weight_decay, sharded=sharded, **cfg.adam_options()
    )
    # the schedule counts optimizer updates: updates_per_step per step
    warmup = steps_of(cfg.warmup_steps, cfg.max_steps) * cfg.updates_per_step
    if cfg.lr_scheduler_type != "constant":
        total = cfg.max_steps * cfg.updates_per_step
        steps = {"num_warmup_steps": warmup, "num_training_steps": total}
        return optimizer, get_scheduler(
            cfg.lr_scheduler_type, optimizer, **steps,
            scheduler_specific_kwargs=cfg.lr_scheduler_kwargs,
        )  # fmt: skip
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1))
    )


def resumed_state(t: Trainer, cfg: RLTrainConfig, given: RLTrainConfig) -> TrainState:
    """A fresh state, or the checkpoint's (``resume_from_checkpoint``; an error when there is
    none) with the weights, optimizer and schedule restored and the logs cut back to it;
    settings other than ``given`` (the run's as given) are said."""
    if not cfg.resume_from_checkpoint:
        return TrainState(mixed_precision=same_precision(None, t.accelerator))
    path = checkpoint_path(cfg.resume_from_checkpoint, t.out)
    logs = [t.log.path, t.out / "history.jsonl"]
    state = TrainState(**resume_training(path, t.policy, t.optimizer, t.scheduler, logs,
                                         t.accelerator.is_main_process, given,
                                         functools.partial(check_resumable, cfg)))  # fmt: skip
    state.mixed_precision = same_precision(state.mixed_precision, t.accelerator)
    return state


@closes_trackers_on_error
def run(cfg: RLTrainConfig) -> dict[str, Any]:
    """Train; returns the held-out evaluation before and after. Writes output_dir/final."""
    out = Path(cfg.output_dir)
    # accumulation by hand (policy_gradient_step): accelerate's own stays 1, whatever the
    # launcher exports
    accelerator = start_run(cfg, out, gradient_accumulation_steps=1)
    # first: the cheap failure (a bad path); frozen reward models in the run's precision
    load_whole(accelerator)  # the frozen models (ZeRO-3 shards the policy alone)
    reward = load_rewards(cfg, accelerator.device, frozen_dtype(accelerator.mixed_precision))
    given, cfg = cfg, copy(cfg)  # resolved (prefix_sharing, max_steps -1) in the copy
    policy, tokenizer, ref_model = build_policy(cfg, accelerator)
    train_prompts, eval_prompts = prompt_sets(cfg, accelerator, tokenizer, reward)
    keep_held_out_split(given, cfg)
    cfg = cfg.for_prompts(len(train_prompts))  # max_steps -1: the epochs' steps
    optimizer, scheduler = optimizer_and_schedule(policy, cfg, is_sharded(accelerator))
    cadence = Cadence.of(cfg, cfg.max_steps)
    # the teacher-forced pass as one module's forward, so DDP's gradient hooks and autocast
    # apply to it; sampling and saving use the policy inside
    learner, optimizer = accelerator.prepare(ReplyLogprobs(policy), optimizer)
    t = Trainer(accelerator, learner, ref_model, tokenizer, optimizer, scheduler, reward, out,
                MetricsLog(out / "metrics.jsonl", accelerator, cadence.log,
                           ("train/peak_mem_gb", "train/grad_norm", "train/baseline",
                            "train/learning_rate"), cfg.logging_first_step))  # fmt: skip
    state = resumed_state(t, cfg, given)
    if done := finished_summary(out, given, state.step, cfg.max_steps, t.log.main):  # ended
        end_run(accelerator)
        return {"initial": done["initial_eval"], "final": done["final_eval"]}
    start_tracking(accelerator, cfg.project, cfg.run_name, cfg, state.step)

    begin(t, state, eval_prompts, cfg)
    bar = progress_bar(total=cfg.max_steps, initial=state.step, desc="rl train",
                       show=accelerator.is_local_main_process)  # fmt: skip
    final, evaluated_at, saved_at = None, -1, -1
    try:  # a run stopped by an error still logs the steps before it
        while state.step < cfg.max_steps:
            t0 = time.perf_counter()
            prompts = next_prompts(
                train_prompts, state, cfg.prompts_per_step, order_seed(cfg), cfg.shuffle_dataset
            )
            epoch_ended = pass_ended(state, len(train_prompts))
            with full_parameters(t.learner):  # whole weights while sampling (FSDP, ZeRO-3)
                seed = stream_seed(cfg.seed, state.step)
                ro = rollout(t.policy, tokenizer, prompts, cfg, seed=seed)
                t1 = time.perf_counter()
                scored, rewards = rewards_of(t, prompts, ro, cfg, state)
                greedy = greedy_rewards(t, prompts, cfg)  # ReMax's baseline, None for the others
                ref_lp = reference_logprobs(t.policy, ref_model, ro, cfg, tokenizer.pad_token_id)
            t2 = time.perf_counter()
            shaped = kl_shaped_rewards(rewards, ro.logps, ref_lp, ro.mask, reward_beta(cfg))
            pooled = pooled_rewards(accelerator, shaped, cfg)
            std = scored.std.to(ro.logps.device) if scored.std is not None else None
            adv, base = advantages_for(cfg, shaped, std, state, pooled, greedy, accelerator.gather,
                                       ro.finished, rewards, ro.mask.sum(-1))  # fmt: skip
            update = policy_updates(t, ro, adv, cfg, ref_lp)
            state.step += 1
            kl = kl_estimates(ro.logps, ref_lp, ro.mask)  # (B,) each, for the logs
            logged = log_step(t, state, ro, scored, shaped, kl, adv, base, update,
                              [t0, t1, t2, time.perf_counter()], cfg)  # fmt: skip
            for finite in update.finite:
                count_nonfinite(state, finite, cfg.max_nonfinite_steps)
            bar.update(1)
            reward = logged["train/reward"]  # None: no reply of the step scored
            bar.set_postfix(reward="—" if reward is None else f"{reward:.3f}",
                            kl=f"{logged['train/kl']:.2f}")  # fmt: skip
            if cadence.evaluates(state.step, epoch_ended):
                with full_parameters(t.learner):
                    final, evaluated_at = evaluate(t, state, eval_prompts, cfg), state.step
            if cadence.saves(state.step, epoch_ended):
                save_state(t, state, cfg, keep=cfg.keep_checkpoints)
                saved_at = state.step
    finally:
        t.log.flush(state.step)
    bar.close()
    if saved_at != state.step:  # first: an error in the evaluation keeps the trained steps
        save_state(t, state, cfg, keep=False)
    if evaluated_at != state.step:
        with full_parameters(t.learner):
            final = evaluate(t, state, eval_prompts, cfg)
    end_run(accelerator, then=save_final(t, state, final, cfg, len(eval_prompts)))  # hub upload
    return {"initial": state.initial_eval, "final": final}
