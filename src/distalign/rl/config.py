"""``distalign rl train``'s settings: ``RLTrainConfig``, one field per key (TRL's names where
TRL has the idea), checked when built, and the advantage estimators ``baseline`` names.

    from distalign.rl.config import RLTrainConfig
    cfg = RLTrainConfig(reward="runs/rm_scalar_cpu/final", baseline="grpo")
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from distalign.cadence import cadence_checks
from distalign.config import (
    ConfigError,
    check_scheduler,
    config_warning,
    data_source_checks,
    report_to_list,
    require,
    resume_value,
)
from distalign.data.mixture import MixtureKeys, resolve_mixture
from distalign.hub import HubKeys
from distalign.losses import IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES, loss_type_objective
from distalign.models.generate import SamplingConfig
from distalign.models.load import DEFAULT_MODEL, require_4d_mask
from distalign.models.options import ModelKeys
from distalign.optim import AdamKeys
from distalign.tracking import resolve_report_to

log = logging.getLogger(__name__)


# advantage estimators (``baseline``); the group ones compare the k samples of a prompt
GROUP_BASELINES = ("rloo", "grpo", "grpo_batch", "dr_grpo", "reinforce_pp_baseline")
BASELINES = (*GROUP_BASELINES, "reinforce_pp", "remax", "moving_average", "none")
POOLED_BASELINES = ("moving_average", "reinforce_pp", "reinforce_pp_baseline")  # all processes'


@dataclass
class RLTrainConfig(SamplingConfig, AdamKeys, ModelKeys, HubKeys, MixtureKeys):
    """``distalign rl train``: REINFORCE/RLOO against a reward model or a reward function."""

    model_name_or_path: str = DEFAULT_MODEL
    """Policy (and reference) to start from: alias, folder or hub id."""
    dtype: str = "float32"
    """Weights dtype: float32 | auto (float32): rl train keeps float32 weights, so that the
    sampler's log-probs and the teacher-forced ones agree; bf16=true computes in bfloat16."""
    reward: Any = field(
        default=None, metadata={"list": True, "shown_type": "str | callable | list | None"}
    )
    """Reward source, or a list of them (``reward=[a,b]``, ``--reward a b``; TRL's
    ``reward_funcs`` too) summed with ``reward_weights``: a reward-model folder or hub id
    (distalign's, or any one-label sequence classifier, scored with its own tokenizer and chat
    template), ``module:function(prompts, replies[, **columns]) -> list[float]``, a TRL reward
    function, or (Python API) any callable. None: the gold judge, allowed only on the
    benchmark's prompts (dataset_name=gold)."""
    reward_weights: list[float] | None = None
    """Weight w_i of each reward source: the reward is Σ w_i r_i (default: all 1.0)."""
    reward_max_length: int | None = None
    """Longest prompt + reply a reward model reads, in tokens (default: a distalign RM's
    training max_length, another RM's position limit)."""
    reward_trust_remote_code: bool = False
    """Allow a hub reward model's own code to run (off: only code shipped with transformers)."""
    functional: str = "expectation"
    """For a distributional RM: expectation | mean_minus_std | cvar | quantile |
    win_probability (P(R > R_SFT reply), ties ½) | win_probability_strict (ties count 0). A
    mixture RM's mean_minus_std, cvar and quantile take each component's gain over an SFT
    reply to the same prompt (its components are fixed only up to a constant each)."""
    kappa: float = 1.0
    """κ of mean − κ·std."""
    alpha: float = 0.25
    """α of CVaR_α."""
    tau: float = 0.5
    """τ of the quantile."""
    uncertainty_scaling: bool = False
    """Distributional RM as the sole reward source: divide each advantage by 1 + Std[R] of its
    reply. A per-sample step size, not risk aversion: with a baseline it can push a confidently
    below-average reply up; for risk aversion use functional mean_minus_std, cvar or quantile."""
    dataset_name: Any = field(default="gold", metadata={"shown_type": "str | Dataset"})
    """Training prompts: ``gold`` (the benchmark's), a prompt-only or preference data set (hub
    id, local file, ``datasets.Dataset``), or a .txt file with one prompt per line."""
    dataset_config: str | None = None
    """Config (subset) of a hub data set, ``datasets.load_dataset``'s name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub data set (default: the latest)."""
    dataset_streaming: bool = False
    """Read a hub data set as it comes (``load_dataset(streaming=True)``, as TRL's), without
    its copy in the data set cache. rl train reads its prompt sets whole even so (rm train's
    ``max_train_samples`` is what stops a stream early)."""
    dataset_train_split: str = "train"
    """Split of ``dataset_name`` to train on."""
    eval_dataset_name: Any = field(default=None, metadata={"shown_type": "str | Dataset | None"})
    """Held-out prompts for the periodic evaluation (default: ``dataset_name``)."""
    dataset_test_split: str = "test"
    """Split of the held-out prompts."""
    skip_bad_rows: bool = False
    """Skip malformed rows of the prompt sources (counted) instead of stopping at the first."""
    max_eval_samples: int = 16
    """Held-out prompts per evaluation (the first N; 0: all)."""
    num_generations_eval: int | None = None
    """Replies sampled per held-out prompt in an evaluation, their figures averaged (TRL's;
    None: 1)."""
    shuffle_dataset: bool = True
    """Draw the training prompts in a seeded random order, a new one each pass (false: in the
    data set's order)."""
    num_generations: int = 4
    """Samples per prompt (k)."""
    per_device_train_batch_size: int = 8
    """Completions per teacher-forced micro-batch per process. As in TRL it need not hold a
    whole group: the group statistics are taken over the step's replies before the
    micro-batches; per_device_train_batch_size × gradient_accumulation_steps must be a multiple
    of num_generations."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step: prompts per step = per_device_train_batch_size ×
    gradient_accumulation_steps (or steps_per_generation) / num_generations (per process)."""
    steps_per_generation: int | None = None
    """Micro-batches one batch of rollouts feeds, per process (TRL's): a step samples
    per_device_train_batch_size × steps_per_generation completions per process and makes
    steps_per_generation / gradient_accumulation_steps optimizer updates on them in turn, each
    on its own share of the replies; the updates after the first take PPO's clipped objective
    against the sampling policy, as ``num_iterations`` does. None: gradient_accumulation_steps
    (one on-policy update per step)."""
    generation_batch_size: int | None = None
    """Completions per batch of rollouts over all processes (TRL's): per_device_train_batch_size
    × processes × steps_per_generation. Give this or steps_per_generation (beside it, as a
    TRL config's dump holds both, steps_per_generation is read)."""
    max_completion_length: int = 64
    """Reply length limit in tokens; a reply that reaches it without EOS counts as cut off."""
    beta: float = 0.05
    """KL coefficient β in R = r − β·Σ log(π/π_ref) (or in the loss: use_kl_loss)."""
    use_kl_loss: bool = False
    """Put β in the loss instead of the reward (TRL GRPO's place for it; OpenRLHF's and verl's
    key): β·Σ_t k3 per reply, its tokens weighted as loss_type weights the policy loss
    (``losses.kl_loss``); the rewards are then the sources' alone. False: R − β·KL in the
    reward, as REINFORCE, RLOO and TRL's RLOO have it."""
    use_bias_correction_kl: bool = True
    """With use_kl_loss: each token's k3 times its ratio to the sampling policy (TRL GRPO's
    key and default), so that its expected gradient is the reverse KL(π‖π_ref)'s, the KL its
    value estimates; false: the plain k3 term, whose expected gradient is the forward
    KL(π_ref‖π)'s (``losses.kl_loss``). Without use_kl_loss it does nothing."""
    num_iterations: int = 1
    """Passes over each batch of rollouts (TRL's and GRPO's μ), each one optimizer update (or
    steps_per_generation / gradient_accumulation_steps). 1: on-policy REINFORCE. The updates
    after the first take PPO's clipped objective with a ratio to the sampling policy at
    ``importance_sampling_level`` (``distalign.losses.clipped_policy_loss``), or loss_type's own
    (cispo, sapo, vespo), against the policy that sampled the batch. A step is still one
    batch of rollouts: max_steps=N makes N × ``updates_per_step`` updates (TRL counts each
    update as a step)."""
    epsilon: float = 0.2
    """Clip range of the ratio, [1 − epsilon, 1 + epsilon_high] (for the updates after a
    step's first)."""
    epsilon_high: float | None = None
    """Upper clip (DAPO's ε_high); None: epsilon. With loss_type cispo, the cap ε_max on each
    token's ratio, every update's (the first's, at ratio 1, too: below 1 it scales every step
    down; ScaleRL advises 5), as TRL's."""
    importance_sampling_level: str | None = None
    """Whose ratio to the sampling policy the clipped updates take (``losses.
    clipped_policy_loss``): reply (one per reply, the product of its tokens', TRL RLOO's) |
    token (each token's, TRL GRPO's default) | sequence (each reply's geometric mean over its
    tokens: GSPO, TRL GRPO's). The first update of a step is the same for all three. None:
    as the loss_type's trainer in TRL takes it: token for GRPO's loss types (grpo, dapo,
    bnpo, dr_grpo, cispo, sapo, vespo), sequence for luspo (GSPO's), reply for sequence."""
    top_entropy_quantile: float = 1.0
    """Share of the reply tokens the policy loss keeps, those of highest entropy under the
    current policy (TRL GRPO's; 0.2 in "Beyond the 80/20 Rule"): the (1 − q) quantile of each
    micro-batch's token entropies over every process is the threshold (with
    mask_truncated_completions, over the replies that ended); 1: every token, 0: the
    highest only. Below 1, clipped updates need importance_sampling_level token or
    sequence, and a sequence-level reply's term is counted over its kept tokens."""
    delta: float | None = None
    """Cap on the ratio in the clipped objective's unclipped term (TRL GRPO's two-sided
    clipping, INTELLECT-2), above 1; as TRL, above 1 + epsilon_high is advised (said where
    not); None: no cap."""
    entropy_coef: float = 0.0
    """An entropy bonus: minus this times the mean token entropy of the policy, over the reply
    tokens the policy loss keeps, in every update's loss (TRL GRPO's key; its adaptive form,
    use_adaptive_entropy, is not offered). Above 0 the teacher-forced pass keeps each chunk's
    softmax for the backward pass: more memory."""
    off_policy_mask_threshold: float | None = None
    """Leave out of the updates after a step's first each reply with a negative advantage whose
    mean per-token log-ratio of the sampling policy to the current one exceeds this
    (DeepSeek-V3.2's off-policy sequence mask; TRL GRPO's key; 0.5, say); None: none."""
    loss_type: str = "sequence"
    """How each reply's Σ_t log π is weighted in the policy loss (TRL GRPO's key): sequence (as
    is: REINFORCE, TRL's RLOO) | grpo (÷ its length) | dr_grpo (÷ max_completion_length) | dapo
    (÷ the step's mean reply length over every process) | bnpo (÷ its micro-batch's mean reply
    length), with TRL's token counts.
    A scale of each reply's step, not of its direction (``losses.loss_type_weights``); the
    token-normalised ones take a learning rate about a reply's length larger.
    TRL GRPO's other objectives for the updates after a step's first (num_iterations > 1 or
    steps_per_generation above gradient_accumulation_steps), weighted as dapo, grpo, sequence
    and dapo: cispo (each token's ratio capped at epsilon_high and detached, times A·log π:
    MiniMax-M1's; ``losses.cispo_loss``) | sapo (a soft sigmoid gate instead of the clip;
    ``losses.sapo_loss``) | luspo (GSPO's clipped objective summed over each reply's tokens;
    give importance_sampling_level sequence) | vespo (each reply weighted by a Gamma-shaped
    function of its ratio; ``losses.vespo_loss``)."""
    sapo_temperature_pos: float = 1.0
    """loss_type sapo: τ of the gate for replies with a positive advantage (TRL's)."""
    sapo_temperature_neg: float = 1.05
    """loss_type sapo: τ of the gate for the others (TRL's)."""
    vespo_k_pos: float = 2.0
    """loss_type vespo: k of φ(w) = e^λ w^k e^(−λw) where the advantage is >= 0 (TRL's)."""
    vespo_lambda_pos: float = 3.0
    """loss_type vespo: λ where the advantage is >= 0 (TRL's)."""
    vespo_k_neg: float = 3.0
    """loss_type vespo: k where the advantage is negative (TRL's)."""
    vespo_lambda_neg: float = 2.0
    """loss_type vespo: λ where the advantage is negative (TRL's)."""
    baseline: str = "rloo"
    """Advantage estimator: rloo (leave-one-out mean) | grpo ((r − group mean) / group std of
    the rewards, minus the KL penalty centred in the group) | grpo_batch (the same divided by
    the std of the batch's rewards, all processes': TRL GRPO's scale_rewards=batch) |
    dr_grpo (R − group mean) | reinforce_pp (R whitened over the batch's tokens, as
    OpenRLHF) | reinforce_pp_baseline (R − group mean, whitened so) | remax (R − reward of
    the greedy reply; one extra greedy sample and score per prompt per step) |
    moving_average (R − mean of past rewards) | none. The group ones need num_generations
    >= 2. A reply no reward source scores (all None/NaN) takes advantage 0 and stays out of
    the baselines, as in TRL's RLOO."""
    ema: float | None = None
    """moving_average only: EMA factor α (None: the mean of all past rewards)."""
    normalize_advantages: bool = False
    """Normalise advantages to zero mean, unit std per step: (A − mean) / (std + 1e-4) over
    every process's replies, as TRL's RLOO."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the reward of replies cut at max_completion_length (no EOS)."""
    mask_truncated_completions: bool = False
    """Leave replies cut at max_completion_length out of the policy loss (DAPO); they still
    count in their group's baseline."""
    reward_clip_range: list[float] | None = None
    """Clip rewards to [low, high] before the KL term (unset: as the reward model gives them)."""
    log_completions: bool = False
    """Print a table of the step's completions (prompt, reply, reward, advantage) every
    ``logging_steps`` steps; history.jsonl keeps all of them either way."""
    num_completions_to_print: int | None = None
    """How many of the step's completions that table shows (unset: all)."""
    max_steps: int = 20
    """Steps, each one batch of rollouts and ``updates_per_step`` optimizer updates (one by
    default; num_iterations × steps_per_generation / gradient_accumulation_steps). -1 (TRL's
    and transformers' default; 0 too, as transformers reads it): the steps of
    ``num_train_epochs`` passes over the prompts."""
    num_train_epochs: float = 3.0
    """Passes over the training prompts, read only when max_steps is -1 (as transformers reads
    it): a pass is as many steps as its prompts fill whole, as in TRL (prompts left over
    share a step with the next pass's first), and a fraction of a pass rounds up to a whole
    step. Given without max_steps in a file, on the command line or to ``api.train_policy``,
    it is what the run counts; an ``RLTrainConfig`` built in Python needs max_steps=-1."""
    learning_rate: float = 1e-5
    """AdamW learning rate (constant after a linear warm-up)."""
    warmup_steps: float = 0
    """Steps of linear learning-rate warm-up; below 1, a fraction of max_steps."""
    lr_scheduler_type: str = "constant"
    """Learning rate after warm-up: constant, or any transformers scheduler name (linear,
    cosine, ...) over max_steps."""
    lr_scheduler_kwargs: dict[str, Any] | None = None
    """Arguments of the scheduler beyond warm-up and horizon (transformers'; e.g.
    ``{min_lr_rate: 0.1}`` for cosine_with_min_lr, ``{num_decay_steps: N}`` for
    warmup_stable_decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    max_nonfinite_steps: int = 3
    """A step with a non-finite loss or gradient is skipped; this many in a row stop the run."""
    use_peft: bool = True
    """Train LoRA adapters; the reference is the same model with adapters off (no copy)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    bf16: bool = False
    """bfloat16 mixed precision (where the hardware has it)."""
    fp16: bool = False
    """float16 mixed precision. With neither, ``accelerate launch --mixed_precision`` decides."""
    tf32: bool | None = None
    """TF32 matmuls on NVIDIA GPUs from Ampere on (transformers' ``tf32``): float32 training at
    several times the speed, each matmul input rounded to a 10-bit mantissa; false turns it off
    for cuDNN too. Unset: torch's own settings (matmuls off). No effect on the CPU; the gold
    judge always runs in full float32."""
    ddp_timeout: int = 1800
    """Seconds a process waits for the others at a collective before the run fails
    (transformers' ``ddp_timeout``; torch.distributed's process-group timeout)."""
    use_cpu: bool = False
    """Train on the CPU even where a GPU is there (transformers' ``use_cpu``; TRL configs written
    on a laptop carry it: TRL needs it there)."""
    prefix_sharing: bool = True
    """Teacher-forced and reference passes share each prompt across its samples."""
    attn_implementation: str = "sdpa"
    """Attention kernel, as transformers' from_pretrained takes it: sdpa | eager (the
    teacher-forced passes need a 4-D mask, which flash-attention kernels do not take)."""
    max_prompt_length: int | None = 256
    """Longer prompts are cut from the left (None: never cut, as in TRL)."""
    logging_steps: float = 1
    """Log to the tracker and metrics.jsonl every N steps, the means over them (below 1: a
    fraction of max_steps); a checkpoint, or an error that stops the run, also writes the
    steps since the last row. history.jsonl keeps every completion of every step."""
    logging_first_step: bool = False
    """Also log step 1 on its own (transformers' key)."""
    eval_strategy: str = "steps"
    """Held-out evaluation during training: steps (every eval_steps) | no. The final policy
    is evaluated at the end either way."""
    eval_steps: float = 10
    """Evaluation interval in steps (below 1: a fraction of max_steps; 0: only at the end)."""
    eval_on_start: bool | None = None
    """Evaluate the SFT policy before the first step (the baseline of the before/after
    table). None: yes, unless eval_strategy is no."""
    save_strategy: str = "steps"
    """When to write the resumable checkpoint: steps (every save_steps) | no. It is written
    at the end either way."""
    save_steps: float = 10
    """Checkpoint interval in steps (below 1: a fraction of max_steps; 0: only at the
    end)."""
    keep_checkpoints: bool = True
    """Also keep the policy of every save as checkpoints/step_N (for the over-optimisation
    curve of ``eval compare``; LoRA adapters are small)."""
    save_total_limit: int | None = None
    """Keep only the newest N of those step_N policies, removing older ones as new ones come
    (transformers' key; None: all). checkpoints/last, the resumable one, always stays."""
    save_only_model: bool = False
    """checkpoints/last without the optimizer's state (transformers' key): the policy (and
    the scheduler's few numbers) alone, about a third of the size for a policy trained whole.
    A run resumed from it restarts AdamW's moments from zero (with a warning), so it does not
    continue exactly. The step_N policies never hold it."""
    output_dir: str = "runs/rl"
    """Checkpoints, final policy, history, metrics, config."""
    overwrite_output_dir: bool = False
    """Move an earlier run's logs and models in output_dir aside, into output_dir/replaced/
    (without it a fresh run there is refused: resume it with resume_from_checkpoint, or give
    another output_dir)."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder to continue from, or true for ``output_dir/checkpoints/last``."""
    seed: int = 0
    """Seed of prompt order, sampling and initialisation."""
    data_seed: int | None = None
    """Seed of the prompt order alone (transformers' key); None: ``seed``."""
    full_determinism: bool = False
    """Deterministic kernels only (transformers' key: ``enable_full_determinism``; slower on a
    GPU, and an operation without a deterministic kernel stops the run)."""
    report_to: Any = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"list": True, "shown_type": "str | list[str]"},
    )
    """Trackers, a list or one name: tensorboard | wandb | trackio | mlflow | none (a JSONL
    log is always written)."""
    project: str = "distalign"
    """Project name in the tracker."""
    run_name: str | None = None
    """Run name in the tracker (default: the tracker's own)."""
    reward_batch_size: int = 16
    """Replies per reward-model batch."""

    def __post_init__(self):
        check_scheduler(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        super().__post_init__()  # SamplingConfig's reads TRL's meaningful nulls (resolve_nulls)
        resolve_mixture(self, RLTrainConfig.dataset_name)
        self.report_to = report_to_list(self.report_to)
        resolve_report_to(self.report_to)  # a tracker that is not installed fails here, early
        self.resume_from_checkpoint = resume_value(self.resume_from_checkpoint)
        k, micro = self.num_generations, self.per_device_train_batch_size
        checks = [
            (k >= 1, "num_generations must be >= 1"),
            (
                self.max_steps > 0 or (self.max_steps in (0, -1) and self.num_train_epochs > 0),
                f"max_steps must be > 0, or -1 (or 0, as transformers reads it) with "
                f"num_train_epochs > 0 (got max_steps "
                f"{self.max_steps}, num_train_epochs {self.num_train_epochs})",
            ),
            (
                str(self.load_kwargs()["dtype"]).removeprefix("torch.") in ("float32", "auto"),
                f"dtype {self.load_kwargs()['dtype']}: rl train keeps float32 weights, so that "
                "the sampler's log-probs and the teacher-forced ones agree (the KL estimate "
                "needs both); for bfloat16 compute use bf16=true",
            ),
            (micro >= 1, "per_device_train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (
                self.temperature != 0,
                "temperature 0: rl train's gradient needs replies drawn from the policy, and "
                "greedy decoding draws none (a prompt's replies come out alike, so a group "
                "baseline gives every advantage 0); give a temperature above 0 (default 1.0; "
                "generate and eval compare take 0)",
            ),
            *self._generation_checks(),
            (self.baseline in BASELINES, f"baseline: {' | '.join(BASELINES)}"),
            (
                self.loss_type in LOSS_TYPES,
                f"loss_type: {' | '.join(LOSS_TYPES)}, got {self.loss_type!r}",
            ),
            (self.entropy_coef >= 0, "entropy_coef must be >= 0"),
            (
                self.off_policy_mask_threshold is None or self.off_policy_mask_threshold >= 0,
                "off_policy_mask_threshold must be >= 0 (null: no mask)",
            ),
            (
                self.sapo_temperature_pos > 0 and self.sapo_temperature_neg > 0,
                "sapo_temperature_pos and sapo_temperature_neg must be > 0",
            ),
            (
                self.baseline not in GROUP_BASELINES or k >= 2,
                f"baseline {self.baseline} needs num_generations >= 2",
            ),
            (self.beta >= 0, "beta must be >= 0"),
            (self.num_iterations >= 1, "num_iterations must be >= 1"),
            (
                self.save_total_limit is None or self.save_total_limit >= 1,
                "save_total_limit must be >= 1 (null: keep every step_N policy)",
            ),
            (
                self.num_generations_eval is None or self.num_generations_eval >= 1,
                "num_generations_eval must be >= 1",
            ),
            (
                0 < self.epsilon < 1 and (self.epsilon_high is None or self.epsilon_high > 0),
                "epsilon must be in (0, 1) and epsilon_high > 0",
            ),
            (
                self.ratio_level in IMPORTANCE_SAMPLING_LEVELS,
                f"importance_sampling_level: {' | '.join(IMPORTANCE_SAMPLING_LEVELS)}",
            ),
            (
                0 <= self.top_entropy_quantile <= 1,
                "top_entropy_quantile must be in [0, 1]",
            ),
            (
                self.top_entropy_quantile == 1
                or self.ratio_level != "reply"
                or self.loss_type in ("cispo", "vespo")  # their terms are per token still
                or (
                    self.num_iterations == 1
                    and self.micro_batches_per_step <= self.gradient_accumulation_steps
                ),
                "top_entropy_quantile < 1 keeps some tokens' terms, and a reply-level ratio has "
                "none: with num_iterations > 1 or steps_per_generation above "
                "gradient_accumulation_steps, give importance_sampling_level token or sequence",
            ),
            (
                self.delta is None or self.delta > 1,
                "delta must be above 1 (a ratio of 1, the first update's, is never capped)",
            ),
            (self.ema is None or 0 <= self.ema < 1, "ema must be in [0, 1)"),
            (
                self.reward_clip_range is None
                or (
                    len(self.reward_clip_range) == 2
                    and self.reward_clip_range[0] < self.reward_clip_range[1]
                ),
                "reward_clip_range: [low, high] with low < high",
            ),
            (not (self.bf16 and self.fp16), "bf16 and fp16 exclude each other"),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1"),
        ]
        require(
            checks
            + self.adam_checks()
            + self.hub_checks()
            + self.model_checks("CAUSAL_LM")
            + data_source_checks(self)
            + cadence_checks(self)
        )
        if self.eval_on_start is None:  # as a TRL user means eval_strategy: no
            self.eval_on_start = self.eval_strategy != "no"
        require_4d_mask(self.attn_implementation, "rl train", "its teacher-forced passes")
        self._check_reward()
        if self.delta is not None and self.delta <= 1 + (self.epsilon_high or self.epsilon):
            config_warning(
                log,
                "delta=%g caps the ratio within the clip range (1 + epsilon_high = %g): it "
                "caps replies pushed up too, not only those with a negative advantage",
                self.delta, 1 + (self.epsilon_high or self.epsilon),
            )  # fmt: skip
        if self.max_steps > 0 and self.num_train_epochs != 3.0:  # not from a file's keys
            config_warning(
                log,
                "num_train_epochs=%g does nothing beside max_steps=%d: give max_steps=-1 to "
                "count passes over the prompts",
                self.num_train_epochs, self.max_steps,
            )  # fmt: skip
        if self.mask_truncated_completions and self.missing_eos_penalty:
            config_warning(
                log,
                "mask_truncated_completions: replies cut at the length limit leave the loss, so "
                "missing_eos_penalty only lowers their group's baseline (the others' advantages "
                "rise); use one of the two",
            )
        if self.top_p < 1 or self.top_k:
            config_warning(
                log,
                "top_p/top_k < full vocabulary: replies no longer come from π itself, so the "
                "REINFORCE gradient and the KL estimates are biased (use top_p=1, top_k=0)",
            )
        if self.beta and not self.use_kl_loss and self.baseline in ("grpo", "grpo_batch"):
            config_warning(
                log,
                "beta=%g acts in the reward (R − β·KL, as TRL's RLOO); TRL's GRPO adds β·k3 per "
                "token to the loss instead: use_kl_loss=true does that",
                self.beta,
            )  # fmt: skip
        self._objective_warnings()
        if self.updates_per_step > 1:
            u = self.updates_per_step
            same = ""
            if self.max_steps > 0:
                m = self.max_steps
                here = f"={m // u}" if m % u == 0 else f" between {m // u} and {m // u + 1}"
                same = (f"; max_steps={m} here makes {m * u} updates, as TRL's max_steps="
                        f"{m * u}; TRL's max_steps={m} is max_steps{here} here")  # fmt: skip
            config_warning(
                log,
                "a step is one batch of rollouts and %d optimizer updates (num_iterations %d × "
                "%d micro-batches / gradient_accumulation_steps %d): max_steps and the logging, "
                "eval, save and warm-up intervals count steps, where TRL counts updates%s",
                u, self.num_iterations, self.micro_batches_per_step,
                self.gradient_accumulation_steps, same,
            )  # fmt: skip
        if self.use_peft and self.learning_rate < 5e-6:  # a TRL dump's 1e-6
            config_warning(
                log,
                "learning_rate=%g with LoRA adapters (use_peft, distalign's default) is a full "
                "fine-tune's rate (TRL's GRPO and RLOO default, for every weight): adapters "
                "barely move at it and usually take 1e-5 to 1e-4; use_peft=false trains every "
                "weight, as TRL does without a peft_config",
                self.learning_rate,
            )  # fmt: skip

    def _objective_warnings(self) -> None:
        """What TRL's GRPO warns of for its other objectives, and what one of them cannot
        read here."""
        objective = loss_type_objective(self.loss_type)
        eps_max = self.epsilon if self.epsilon_high is None else self.epsilon_high
        if objective == "cispo" and eps_max < 1:
            config_warning(
                log,
                "loss_type cispo caps each token's ratio at epsilon_high=%g (unset: epsilon), "
                "below a ratio of 1: every update's step is scaled by it, the first one's too "
                "(as in TRL; ScaleRL advises epsilon_high=5)",
                eps_max,
            )  # fmt: skip
        if (objective in ("cispo", "sapo") and self.ratio_level == "reply"
                and self.updates_per_step > 1):  # fmt: skip
            config_warning(
                log,
                "loss_type %s at importance_sampling_level=reply weighs each reply by the product "
                "of its tokens' ratios, which moves far from 1 on a long reply; TRL's GRPO takes "
                "each token's (importance_sampling_level=token)",
                self.loss_type,
            )  # fmt: skip
        if self.loss_type == "luspo" and self.ratio_level != "sequence":
            config_warning(log, "loss_type luspo is GSPO's objective: give "
                                "importance_sampling_level=sequence, as TRL advises")  # fmt: skip
        if self.loss_type == "vespo" and self.ratio_level == "sequence":
            config_warning(
                log,
                "loss_type vespo weighs each reply by the product of its tokens' ratios: "
                "importance_sampling_level does not reach it",
            )
        if self.delta is not None and objective != "clip":
            config_warning(log, "delta caps PPO's clipped objective, which loss_type %s does "
                                "not take", self.loss_type)  # fmt: skip

    def _check_reward(self) -> None:
        """``reward`` as one source or a list (a ``--reward '[a,b]'`` string is parsed);
        ``reward_weights`` as long; no silent gold judge on other prompts."""
        if isinstance(self.reward, str) and self.reward.strip().startswith("["):
            self.reward = yaml.safe_load(self.reward)
        if isinstance(self.reward, tuple):
            self.reward = list(self.reward)
        sources = self.reward if isinstance(self.reward, list) else [self.reward]
        prompt_sets = [self.dataset_name, self.eval_dataset_name or self.dataset_name]
        others = [p for p in prompt_sets if not is_gold(p)]
        if self.reward is None and others:  # the gold judge knows the benchmark's prompts only
            raise ValueError(
                "reward: give a reward model (folder or hub id), module:function or a list of "
                "them; the default, the gold judge, scores only the benchmark's prompts "
                f"(dataset_name=gold), not {_describe(others[0])}"
            )
        require([
            (len(sources) > 0 and (self.reward is None or all(s is not None for s in sources)),
             "reward: an empty list or an empty entry"),
            (self.reward_weights is None or len(self.reward_weights) == len(sources),
             f"reward_weights has {len(self.reward_weights or [])} values for "
             f"{len(sources)} reward source(s)"),
            (self.reward_max_length is None or self.reward_max_length > 1,
             "reward_max_length must be > 1"),
        ])  # fmt: skip
        if self.reward_weights is not None:
            self.reward_weights = [float(w) for w in self.reward_weights]
        if self.uncertainty_scaling and len(sources) > 1:
            config_warning(
                log,
                "uncertainty_scaling: a sum of reward sources has no distribution, so it is off",
            )

    def _generation_checks(self) -> list[tuple[bool, str]]:
        """TRL's rules for steps_per_generation and generation_batch_size; whole groups."""
        micro, accumulate, k = (self.per_device_train_batch_size,
                                self.gradient_accumulation_steps, self.num_generations)  # fmt: skip
        by_size, by_steps = (
            self.generation_batch_size is not None,
            self.steps_per_generation is not None,
        )
        if by_size and by_steps:  # a TRL config's dump holds both, the one made from the other
            made = micro * world_size() * self.steps_per_generation
            if self.generation_batch_size != made:  # made for another number of processes
                config_warning(
                    log, "generation_batch_size %d beside steps_per_generation %d: the steps "
                    "are read (%d completions a batch over %d process(es)); give one of them",
                    self.generation_batch_size, self.steps_per_generation, made, world_size(),
                )  # fmt: skip
            by_size = False  # steps_per_generation says the batch
        if by_size and micro >= 1:
            per_pass = micro * world_size()
            if self.generation_batch_size <= 0 or self.generation_batch_size % per_pass:
                return [(False, f"generation_batch_size ({self.generation_batch_size}) must be a "
                         f"positive multiple of per_device_train_batch_size × processes ({micro} "
                         f"× {world_size()})")]  # fmt: skip
        steps = self.micro_batches_per_step
        name = "steps_per_generation" if by_size or by_steps else "gradient_accumulation_steps"
        return [
            (steps >= 1, "steps_per_generation must be >= 1"),
            (
                accumulate < 1 or steps % accumulate == 0,
                f"steps_per_generation ({steps}) must be a multiple of "
                f"gradient_accumulation_steps ({accumulate}): a batch of rollouts makes whole "
                "optimizer updates",
            ),
            (
                k < 1 or micro * steps % k == 0,
                f"per_device_train_batch_size × {name} ({micro} × {steps}) must be a multiple "
                f"of num_generations ({k}): a step samples whole groups of a prompt's replies "
                "on each process",
            ),
        ]

    @property
    def micro_batches_per_step(self) -> int:
        """Teacher-forced micro-batches per batch of rollouts per process: steps_per_generation,
        from generation_batch_size, or gradient_accumulation_steps."""
        if self.steps_per_generation is not None:
            return self.steps_per_generation
        if self.generation_batch_size is not None:
            return self.generation_batch_size // max(
                1, self.per_device_train_batch_size * world_size()
            )
        return self.gradient_accumulation_steps

    @property
    def ratio_level(self) -> str:
        """``importance_sampling_level``, or where unset the one TRL's trainer of the
        loss_type takes: token for GRPO's loss types, sequence for luspo (GSPO's), reply for
        the REINFORCE loss (TRL's RLOO). Resolved when read, so a config whose loss_type is
        changed later (an override, a run's saved config) follows it."""
        if self.importance_sampling_level is not None:
            return self.importance_sampling_level
        return {"sequence": "reply", "luspo": "sequence"}.get(self.loss_type, "token")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step (one batch of rollouts): num_iterations passes over it,
        each an update per gradient_accumulation_steps micro-batches."""
        per_pass = self.micro_batches_per_step // self.gradient_accumulation_steps
        return self.num_iterations * per_pass

    @property
    def prompts_per_step(self) -> int:
        """Prompts per step (one batch of rollouts) per process."""
        replies = self.per_device_train_batch_size * self.micro_batches_per_step
        return replies // self.num_generations

    def for_prompts(self, prompts: int) -> RLTrainConfig:
        """This config with max_steps -1 resolved for ``prompts`` training prompts per process
        (``num_train_epochs`` passes; see there); itself when max_steps counts the steps. 0
        counts passes too: transformers reads only a positive max_steps as a count."""
        if self.max_steps > 0:
            return self
        per_pass = prompts // self.prompts_per_step
        if per_pass == 0:
            raise ConfigError(
                f"max_steps -1 counts passes over the training prompts, and a step takes "
                f"{self.prompts_per_step} per process while there are {prompts}: give more "
                "prompts, fewer per step, or max_steps"
            )
        resolved = copy.copy(self)  # not replace(): __post_init__'s warnings were said
        resolved.max_steps = math.ceil(self.num_train_epochs * per_pass)
        log.info(
            "num_train_epochs=%g over %d prompts per process, %d per step: max_steps=%d",
            self.num_train_epochs, prompts, self.prompts_per_step, resolved.max_steps,
        )  # fmt: skip
        return resolved


def world_size() -> int:
    """Processes of the run, as the launcher (accelerate, torchrun) sets them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_gold(source) -> bool:
    """Whether a prompt source is the gold benchmark (``data.load.is_gold``)."""
    from distalign.data.load import is_gold as shipped_gold

    return shipped_gold(source)


def _describe(source) -> str:
    return repr(source) if isinstance(source, str) else f"a {type(source).__name__}"
