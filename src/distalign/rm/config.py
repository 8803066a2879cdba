"""``distalign rm train``'s settings: ``RMTrainConfig``, one field per key (the names TRL's
``RewardConfig`` and transformers' ``TrainingArguments`` use, where they have the idea),
checked when built.

    from distalign.rm.config import RMTrainConfig
    cfg = RMTrainConfig(head="mixture", n_components=2, head_learning_rate=2e-3)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from distalign.cadence import cadence_checks
from distalign.config import (
    check_scheduler,
    config_warning,
    data_source_checks,
    report_to_list,
    require,
    resolve_nulls,
    resume_value,
)
from distalign.data.formats import FORMATS
from distalign.data.mixture import MixtureKeys, resolve_mixture
from distalign.hub import HubKeys
from distalign.models.load import DEFAULT_MODEL, prefix_sharing_for
from distalign.models.options import ModelKeys
from distalign.models.reward_model import HEADS
from distalign.optim import AdamKeys
from distalign.tracking import resolve_report_to

log = logging.getLogger(__name__)

# metric_for_best_model's values: the held-out metrics rm train computes, as named in its log
# or as transformers prefixes them
BEST_METRICS = ("loss", "eval_loss", "accuracy", "eval_accuracy")
# settings of the scalar or bin heads' losses that a mixture head has no use for
MIXTURE_IGNORES = ("entropy_weight", "batch_entropy_weight", "smoothness_weight",
                   "rating_weight", "margin_scale")  # fmt: skip


@dataclass
class RMTrainConfig(AdamKeys, ModelKeys, HubKeys, MixtureKeys):
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
    """Margin m = margin_scale · (chosen_score − rejected_score) when the data has ratings, in
    the scalar loss −log σ(r_c − r_r − m). A data set's own ``margin`` column (TRL's) is used
    as it is wherever a pair has one."""
    dataset_name: Any = field(default="gold", metadata={"shown_type": "str | Dataset"})
    """Training pairs: hub id, local file/folder, ``gold`` (the shipped benchmark), or a
    ``datasets.Dataset`` (Python API)."""
    dataset_config: str | None = None
    """Config (subset) of a hub data set, ``datasets.load_dataset``'s name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub data set (default: the latest)."""
    dataset_streaming: bool = False
    """Read a hub data set as it comes (``load_dataset(streaming=True)``, as TRL's): nothing is
    downloaded beyond the rows read, so that a first part of a large set (``max_train_samples``
    in rm train) costs only that part; local files are read so anyway."""
    dataset_train_split: str = "train"
    """Training split."""
    eval_dataset_name: Any = field(default=None, metadata={"shown_type": "str | Dataset | None"})
    """Held-out pairs (default: ``dataset_name``)."""
    dataset_test_split: str = "test"
    """Held-out split."""
    format: str | None = None
    """Force a preference format (explicit | implicit | hh | sharegpt | alpaca); detected
    when unset."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""
    max_train_samples: int = 0
    """Use the first N training pairs (0: all)."""
    max_eval_samples: int = 0
    """Use the first N held-out pairs (0: all; when the held-out pairs are the training pairs
    themselves, no test split, the first 500, said in a warning)."""
    dataset_num_proc: int | None = None
    """Processes that tokenise the pairs (``datasets.map``'s num_proc; default: one)."""
    off_prompt_pairs: float = 0.0
    """Extra training pairs per pair, label-free: a reply to the prompt beats a reply to
    another prompt (RRM's augmentation; ``distalign.data.pairs.off_prompt_pairs``). 1.0
    doubles the pairs, and the steps of an epoch. On the gold benchmark it did not help
    (docs/results/README.md)."""
    max_length: int | None = 512
    """Longest prompt + reply in tokens (truncation rules in ``distalign.data.pairs``); None:
    no truncation below the backbone's own limit (its position embeddings), as TRL's null."""
    max_prompt_length: int = 256
    """Tokens kept for the prompt when prompt + reply is too long (one at or above
    ``max_length`` becomes half of it: a warning when you set it, a note at its default)."""
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
    warmup_steps: float = 0.05
    """Steps of linear learning-rate warm-up; below 1, a fraction of the run's steps (as
    transformers reads it)."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate decay after warm-up (any transformers scheduler name)."""
    lr_scheduler_kwargs: dict[str, Any] | None = None
    """Arguments of the scheduler beyond warm-up and horizon (transformers'; e.g.
    ``{min_lr_rate: 0.1}`` for cosine_with_min_lr, ``{num_decay_steps: N}`` for
    warmup_stable_decay)."""
    num_train_epochs: float = 1.0
    """Passes over the training pairs (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps (0 or -1, transformers' default: from num_train_epochs)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: off)."""
    max_nonfinite_steps: int = 3
    """A step with a non-finite loss or gradient is skipped; this many in a row stop the run."""
    disable_dropout: bool = True
    """Turn every dropout of the model off while training, LoRA's included (TRL's
    RewardConfig default): the two replies of a pair are then scored by the same function."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more time."""
    bf16: bool = False
    """bfloat16 mixed precision (where the hardware has it)."""
    fp16: bool = False
    """float16 mixed precision. With neither, ``accelerate launch --mixed_precision`` decides."""
    tf32: bool | None = None
    """TF32 matmuls on NVIDIA GPUs from Ampere on (transformers' ``tf32``): float32 training at
    several times the speed, each matmul input rounded to a 10-bit mantissa; false turns it off
    for cuDNN too. Unset: torch's own settings (matmuls off). No effect on the CPU."""
    ddp_timeout: int = 1800
    """Seconds a process waits for the others at a collective before the run fails
    (transformers' ``ddp_timeout``; torch.distributed's process-group timeout)."""
    use_cpu: bool = False
    """Train on the CPU even where a GPU is there (transformers' ``use_cpu``; TRL configs written
    on a laptop carry it: TRL needs it there)."""
    prefix_sharing: bool = True
    """Encode each pair as one sequence prompt + chosen + rejected (exact, faster)."""
    attn_implementation: str = "sdpa"
    """Attention kernel, as transformers' from_pretrained takes it: sdpa | eager |
    flash_attention_2 (takes no 4-D mask: prefix_sharing is then off, with a warning)."""
    packing: bool = False
    """With prefix sharing: pack several pairs into one row instead of padding."""
    pad_to_multiple_of: int | None = None
    """Pad each batch's rows to a multiple of N tokens (tensor cores like multiples of 8)."""
    group_by_length: bool = True
    """Batch pairs of similar length (less padding)."""
    group_by_prompt: bool = False
    """Batch the pairs of a prompt together (instead of by length). With prefix sharing the
    prompt and each of its replies are then encoded once for all its pairs: the gold
    benchmark's 5 replies and 10 pairs per prompt cost at most 5 replies per batch, not 20.
    Batches hold fewer distinct prompts, so their gradients are noisier than random
    batches'."""
    logging_steps: float = 1
    """Log to the tracker and metrics.jsonl every N optimizer steps, the means over them
    (below 1: a fraction of the run's steps); a checkpoint, or an error that stops the run,
    also writes the steps since the last row."""
    logging_first_step: bool = False
    """Also log step 1 on its own (transformers' key)."""
    eval_strategy: str = "steps"
    """When to evaluate on held-out pairs during training: steps (every eval_steps) | epoch |
    no. The final model is evaluated at the end either way."""
    eval_steps: float = 50
    """Evaluation interval in optimizer steps (below 1: a fraction of the run's steps; 0:
    only at the end)."""
    eval_on_start: bool = False
    """Also evaluate before the first step (the untrained head's baseline)."""
    save_strategy: str = "steps"
    """When to write the resumable ``last`` checkpoint: steps (every save_steps) | epoch |
    no. It is written at the end either way."""
    save_steps: float = 50
    """Checkpoint interval in optimizer steps (below 1: a fraction of the run's steps; 0:
    only at the end)."""
    save_total_limit: int | None = None
    """Checkpoints kept (transformers' key): rm train keeps at most two, the resumable
    ``checkpoints/last`` (overwritten at each save) and ``checkpoints/best`` (the best held-out
    ``metric_for_best_model`` so far); 1 keeps ``last`` alone (both with
    load_best_model_at_end, as in transformers); None or 2 and more: both."""
    save_only_model: bool = False
    """Checkpoints without the optimizer's state (transformers' key): each holds the weights
    (and the scheduler's few numbers) alone, about a third of the size for a model trained
    whole (AdamW keeps two moments per weight). A run resumed from one restarts AdamW's
    moments from zero (with a warning), so it does not continue exactly."""
    load_best_model_at_end: bool = False
    """End with the weights of ``checkpoints/best`` instead of the last step's: ``final/``
    and the final evaluation are of them (transformers' key)."""
    metric_for_best_model: str | None = None
    """What ``checkpoints/best`` is chosen by: the held-out ``loss`` (``eval_loss``, the labels'
    negative log-likelihood: the training loss without its regularisers and margins, where
    TRL's eval_loss keeps them) or ``accuracy`` (``eval_accuracy``). None: as transformers, the
    loss with load_best_model_at_end, and otherwise the accuracy."""
    greater_is_better: bool | None = None
    """Whether a larger metric_for_best_model is better (transformers' key): true for the
    accuracy, false for the loss; None: that. Unread (as in transformers) when no metric is
    set and the best is not loaded."""
    output_dir: str = "runs/rm"
    """Where checkpoints, the final model, logs and the resolved config go."""
    overwrite_output_dir: bool = False
    """Move an earlier run's logs and models in output_dir aside, into output_dir/replaced/
    (without it a fresh run there is refused: resume it with resume_from_checkpoint, or give
    another output_dir)."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder to continue from, or true for ``output_dir/checkpoints/last``."""
    seed: int = 0
    """Seed of initialisation, batch order and dropout."""
    data_seed: int | None = None
    """Seed of the batch order alone (transformers' key); None: ``seed``."""
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

    @property
    def best_metric(self) -> str:
        """The held-out metric ``checkpoints/best`` is chosen by: ``loss`` or ``accuracy``."""
        name = self.metric_for_best_model
        if name is None:  # transformers' choice: the eval loss, when the best is loaded
            return "loss" if self.load_best_model_at_end else "accuracy"
        return name.removeprefix("eval_")

    @property
    def best_is_greater(self) -> bool:
        """Whether a larger ``best_metric`` is better: the accuracy's, not the loss's."""
        return self.best_metric == "accuracy"

    def __post_init__(self):
        resolve_nulls(self)
        resolve_mixture(self, RMTrainConfig.dataset_name)
        check_scheduler(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        self.report_to = report_to_list(self.report_to)
        resolve_report_to(self.report_to)  # a tracker that is not installed fails here, early
        self.resume_from_checkpoint = resume_value(self.resume_from_checkpoint)
        # e.g. max_length=128 alone
        if self.max_length is not None and 1 < self.max_length <= self.max_prompt_length:
            default = self.max_prompt_length == RMTrainConfig.max_prompt_length
            say = log.info if default else partial(config_warning, log)  # a default: no alarm
            say(
                "max_prompt_length %d%s >= max_length %d: prompts keep at most %d tokens",
                self.max_prompt_length,
                " (its default)" if default else "",
                self.max_length,
                self.max_length // 2,
            )
            self.max_prompt_length = self.max_length // 2
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
                self.metric_for_best_model in (None, *BEST_METRICS),
                "metric_for_best_model: loss | accuracy (eval_loss | eval_accuracy: the held-out "
                f"metrics rm train computes), got {self.metric_for_best_model!r}",
            ),
            (
                self.metric_for_best_model not in (None, *BEST_METRICS)
                or not (self.metric_for_best_model or self.load_best_model_at_end)
                or self.greater_is_better in (None, self.best_is_greater),
                f"greater_is_better: {str(self.best_is_greater).lower()} for "
                f"metric_for_best_model {self.best_metric} (or leave it unset), got "
                f"{self.greater_is_better!r}",
            ),
            (
                self.save_total_limit is None or self.save_total_limit >= 1,
                "save_total_limit must be >= 1 (null: keep checkpoints/last and checkpoints/best)",
            ),
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
                0 < self.max_prompt_length < (self.max_length or math.inf),
                "need 0 < max_prompt_length < max_length",
            ),
            (not (self.bf16 and self.fp16), "bf16 and fp16 exclude each other"),
            (
                self.head_learning_rate is None or self.head_learning_rate > 0,
                "head_learning_rate must be > 0 (or unset)",
            ),
            (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1"),
            (
                self.format is None or self.format in FORMATS,
                f"format must be one of {' | '.join(FORMATS)}, got {self.format!r}",
            ),
            (self.off_prompt_pairs >= 0, "off_prompt_pairs must be >= 0"),
            (
                self.num_train_epochs > 0 or self.max_steps > 0,
                "need num_train_epochs > 0 or max_steps > 0",
            ),
        ]
        require(
            checks
            + self.adam_checks()
            + self.hub_checks()
            + self.model_checks("SEQ_CLS")
            + data_source_checks(self)
            + cadence_checks(self)
        )
        self.prefix_sharing = prefix_sharing_for(
            self.attn_implementation, self.prefix_sharing, "rm train"
        )
