"""Typed configs: one dataclass per command, filled from YAML, ``key=value`` overrides and
TRL-style ``--key value`` flags. This module is the machinery; each command's dataclass lives
beside its code (the smaller commands' in ``command_configs``).

    cfg = load_config(RMTrainConfig, "configs/rm_scalar_full.yaml", ["learning_rate=1e-5"])
    path, overrides = parse_cli_args(["--config", "c.yaml", "--learning_rate", "2e-5"])

Unknown keys and values of the wrong type are errors that name the key (and the file); a key
that was renamed is refused with its new name. The resolved config is written beside every
output (``save_config``) so a run can be repeated. Each field's docstring (the string under
it) is its documentation, shown by ``--help`` (``config_fields``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import inspect
import itertools
import json
import logging
import os
import re
import textwrap
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distalign.models.load import DTYPES

T = TypeVar("T")
log = logging.getLogger(__name__)

# Keys of earlier versions -> the name they have now (TRL / transformers names where those
# exist). Consulted only for keys the command does not know, so `prompts` stays a key of
# `generate` while it points rl train users to `dataset_name`.
RENAMED = {
    "model": "model_name_or_path",
    "data": "dataset_name",
    "prompts": "dataset_name",
    "prompts_file": "dataset_name",
    "eval_data": "eval_dataset_name",
    "eval_prompts": "eval_dataset_name",
    "split": "dataset_train_split (training) or dataset_test_split (held-out)",
    "prompts_split": "dataset_train_split",
    "eval_split": "dataset_test_split",
    "limit_train": "max_train_samples",
    "limit_eval": "max_eval_samples",
    "eval_count": "max_eval_samples",
    "count": "max_eval_samples",
    "limit": "max_eval_samples",
    "batch_size": "per_device_train_batch_size (or per_device_eval_batch_size)",
    "eval_batch_size": "per_device_eval_batch_size",
    "prompts_per_step": "per_device_train_batch_size × gradient_accumulation_steps "
    "(or steps_per_generation) / num_generations",
    "micro_batch_prompts": "per_device_train_batch_size (completions per micro-batch)",
    "grad_accum": "gradient_accumulation_steps",
    "lr": "learning_rate",
    "scheduler": "lr_scheduler_type",
    "epochs": "num_train_epochs",
    "steps": "max_steps",
    "gamma": "center_rewards_coefficient",
    "lora": "use_peft",
    "eval_every": "eval_steps",
    "eval_at_start": "eval_on_start",
    "save_every": "save_steps",
    "resume": "resume_from_checkpoint",
    "tracker": "report_to",
    "mixed_precision": "bf16=true or fp16=true",
    "k": "num_generations",
    "samples_per_prompt": "num_generations",
    "sampling": "the flat keys max_completion_length, temperature, top_p, top_k, "
    "sampling_batch_size",
    "max_new_tokens": "max_completion_length",
    "max_prompt_tokens": "max_prompt_length",
    "truncation_penalty": "missing_eos_penalty",
    "whiten_advantages": "normalize_advantages",
    "output": "output_file",
    "input": "input_file",
    "out_dir": "output_dir",
}

# TRL's and transformers' other names of a key: read as that key (logged). warmup_ratio is
# transformers 4's fraction of the run, which warmup_steps below 1 is.
ALIASES = {
    "reward_funcs": "reward",
    "reward_model_name_or_path": "reward",
    "reward_model_path": "reward",  # TRL's online DPO and earlier RLOO/PPO configs
    "kl_coef": "beta",  # TRL's earlier RLOO and PPO configs
    "max_new_tokens": "max_completion_length",  # transformers' generate
    "num_return_sequences": "num_generations",  # transformers' generate
    "rloo_k": "num_generations",  # TRL's earlier RLOO config
    "num_ppo_epochs": "num_iterations",  # TRL's earlier RLOO and PPO configs: passes per batch
    "response_length": "max_completion_length",  # TRL's earlier RLOO and PPO configs
    "torch_dtype": "dtype",
    "activation_checkpointing": "gradient_checkpointing",  # transformers 5's new name
    "warmup_ratio": "warmup_steps",
    "sft_model_path": "sft",  # TRL's PPO name of the SFT policy (eval compare)
    "scale_rewards": "baseline",  # TRL GRPO's: the estimator that scales rewards so
    "cliprange": "epsilon",  # TRL's earlier RLOO and PPO configs: the ratio's clip range
    "normalize_advantage": "normalize_advantages",  # TRL's earlier RLOO config
    "evaluation_strategy": "eval_strategy",  # transformers 4's earlier name
    "no_cuda": "use_cpu",  # transformers 4's earlier name
    "per_gpu_train_batch_size": "per_device_train_batch_size",  # transformers 4's earlier names
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
}
# TRL GRPO's scale_rewards values -> the advantage estimator that does the same: the group's
# mean out, then divided by the group's std (as TRL: Bessel-corrected, + 1e-4), by the std of
# the batch's rewards, or by nothing
SCALE_REWARDS = {"group": "grpo", True: "grpo", "true": "grpo", "batch": "grpo_batch",
                 "none": "dr_grpo", False: "dr_grpo", "false": "dr_grpo"}  # fmt: skip

# transformers / TRL training keys without a counterpart here, and what does their job
_SAMPLER = "rollouts come from distalign's own sampler (distalign.models.generate)"
_UNBIASED = ("distalign's sampler draws from π itself, with temperature, top_p and top_k "
             "alone (in rl train, π unchanged keeps the REINFORCE gradient and the KL estimate "
             "unbiased)")  # fmt: skip
_NO_QUANT = ("quantised (QLoRA) training is not offered; LoRA on half-precision weights: "
             "use_peft=true dtype=bfloat16")  # fmt: skip
_REF_FIXED = "the reference policy stays the SFT model"
_LAUNCHER = ("processes, devices, DeepSpeed and FSDP come from accelerate: `accelerate launch "
             "--config_file configs/accelerate/<ddp|fsdp|deepspeed_zero2>.yaml -m distalign.cli "
             "...` (docs/gpu.md)")  # fmt: skip
NOT_OFFERED = {
    "load_best_model_at_end": "rl train ends with the last step's policy; its step_N "
    "policies are kept (keep_checkpoints) for eval compare",
    "metric_for_best_model": "rl train ends with the last step's policy",
    "logging_dir": "trackers write under output_dir",
    "optim": "AdamW (torch) is the optimizer; its settings: learning_rate, weight_decay, "
    "adam_beta1, adam_beta2, adam_epsilon",
    "logging_strategy": "logs every logging_steps steps",
    "do_train": "the command trains",
    "do_eval": "eval_strategy says when to evaluate",
    "dataloader_num_workers": "batches are built in the training process",
    "ddp_find_unused_parameters": "every trainable weight takes part in each step",
    "local_rank": "the launcher gives each process its rank (LOCAL_RANK)",
    "disable_tqdm": "progress bars show on the first process",
    "per_device_eval_batch_size": "rl train evaluates one reply per held-out prompt, in "
    "batches of sampling_batch_size",
    "torch_compile": "models run eagerly",
    "use_liger_kernel": "the losses are distalign's own (distalign.losses)",
    "activation_offloading": "activations stay on the device: use gradient_checkpointing",
    "gradient_checkpointing_kwargs": "gradient_checkpointing runs with use_reentrant=false",
    "dataset_streaming": "rm train and rl train stream a hub data set; this command reads it whole",
    "datasets": "TRL's data set mixture, which rm train, rl train and data inspect read: here "
    "give one source as dataset_name (dataset_config, dataset_train_split)",
    "streaming": "data sets are read whole; use max_train_samples for a part",
    "test_split_size": "it splits a `datasets` mixture (rm train, rl train, data inspect); here "
    "the held-out rows are a split (dataset_test_split, a slice: test[:10%]) or eval_dataset_name",
    "remove_unused_columns": "training reads the columns it needs and keeps the rest aside",
    "dataset_text_field": "the columns are found by name: a pair's prompt/chosen/rejected, a "
    "prompt's prompt (or an HH, ShareGPT, Alpaca or implicit-prompt file's own, detected)",
    "eos_token": "a reply ends as the chat template renders it (chat_template_path: another "
    "template)",
    "pad_token": "padding is masked; a reward model gets a pad token distinct from EOS",
    "load_in_4bit": _NO_QUANT,
    "load_in_8bit": _NO_QUANT,
    "bnb_4bit_quant_type": _NO_QUANT,
    "use_bnb_nested_quant": _NO_QUANT,
    "use_vllm": _SAMPLER,
    "generation_kwargs": _SAMPLER + ": max_completion_length, temperature, top_p, top_k",
    "cache_implementation": _SAMPLER + " (with its own KV cache)",
    "use_transformers_paged": _SAMPLER,
    "use_transformers_continuous_batching": _SAMPLER,
    "transformers_continuous_batching_config": _SAMPLER,
    "ds3_gather_for_generation": "sampling gathers sharded weights whole "
    "(distalign.distributed.full_parameters)",
    "log_unique_prompts": "every prompt and completion of every step is in "
    "output_dir/history.jsonl",
    "log_multimodal": "text models only",
    "router_aux_loss_coef": "no mixture-of-experts router loss is added",
    "pad_to_multiple_of": "rl train pads each pass to its longest row (rm train takes the key)",
    "lora_target_parameters": "adapters go on modules: lora_target_modules",
    "bnb_4bit_quant_storage": _NO_QUANT,
    "repetition_penalty": _UNBIASED,
    "min_p": _UNBIASED,
    "do_sample": "replies are always sampled (generate and eval compare decode greedily at "
    "temperature=0)",
    "num_processes": _LAUNCHER,  # the `trl` command line's own launch keys
    "accelerate_config": _LAUNCHER,
    "sync_ref_model": _REF_FIXED,
    "ref_model_sync_steps": _REF_FIXED,
    "ref_model_mixup_alpha": _REF_FIXED,
    # TRL's GRPO objectives and their settings: the loss here is distalign's own
    "off_policy_mask_threshold": "only rl train masks replies for being off-policy",
    "use_bias_correction_kl": "only rl train has a KL term (use_kl_loss)",
    "entropy_coef": "only rl train adds an entropy bonus",
    "use_adaptive_entropy": "the entropy bonus's coefficient is fixed (entropy_coef)",
    "multi_objective_aggregation": "the reward sources are summed with reward_weights, then "
    "the advantages taken (TRL's sum_then_normalize)",
    "cast_lm_head_to_fp32": "rl train keeps float32 weights, the LM head's included",
    "log_completions_hub_repo": "every completion is in output_dir/history.jsonl",
    "max_tool_calling_iterations": "replies are sampled without tool calls",
    "tools": "replies are sampled without tool calls (a prompt row's tools column reaches "
    "reward functions, as in TRL)",
    # TRL's ScriptArguments (trl grpo/rloo/reward scripts)
    "ignore_bias_buffers": "DDP's buffers are accelerate's to handle, in a launcher config",
    # TRL's earlier RLOO and PPO configs (OnPolicyConfig, before TRL 0.20): their keys that
    # are not today's (kl_coef, rloo_k, cliprange, … are read as today's: ALIASES)
    "exp_name": "a run is named by run_name (trackers) and output_dir",
    "total_episodes": "give max_steps (each a batch of rollouts) or num_train_epochs",
    "num_mini_batches": "a step's rollouts are split into micro-batches of "
    "per_device_train_batch_size, gradient_accumulation_steps of them an update",
    "local_rollout_forward_batch_size": "rollouts are sampled sampling_batch_size prompts at "
    "a time",
    "num_sample_generations": "completions are logged every step (output_dir/history.jsonl)",
    **dict.fromkeys(
        ("stop_token", "stop_token_id"),
        "replies stop at the tokenizer's EOS (or its generation config's stop tokens)",
    ),
    "whiten_rewards": "rewards are centred by the baseline (grpo also scales by the group's "
    "std; reinforce_pp whitens the batch)",
    "normalize_reward": "rewards are read as scored (reward_weights weighs several sources)",
    "token_level_kl": "the KL penalty is on each reply's reward (beta), or a loss term "
    "(use_kl_loss)",
    "kl_estimator": "the KL penalty uses k1 (as TRL's default); use_kl_loss takes k3",
    "model_adapter_name": _REF_FIXED,
    "ref_adapter_name": _REF_FIXED,
    **dict.fromkeys(
        ("vf_coef", "cliprange_value", "gamma", "lam"),
        "there is no value model: the baseline comes from the other replies or a moving average",
    ),
    **dict.fromkeys(
        (
            "world_size",
            "num_total_batches",
            "micro_batch_size",
            "local_batch_size",
            "local_mini_batch_size",
            "mini_batch_size",
        ),
        "TRL computed it from the batch keys",
    ),
    "max_length": "sampled replies are bounded by max_completion_length (rl train's prompts by "
    "max_prompt_length, and its reward model's reading by reward_max_length)",
    "sft_model_path": "the policy starts from model_name_or_path (TRL's earlier RLOO script "
    "loaded it from sft_model_path; eval compare's SFT model is sft)",
    "dataset_num_proc": "prompts are read in one process",
}
# keys that act only beside another TRL key refused here (use_adaptive_entropy): any value of
# theirs does nothing (vllm_* keys: by their prefix)
_ONLY_BESIDE = ("entropy_coef_delta", "entropy_coef_max", "entropy_coef_min", "entropy_target")
NOT_OFFERED.update(dict.fromkeys(_ONLY_BESIDE, "it acts only beside a key not offered here"))
# rl train's keys of TRL GRPO's SAPO and VESPO losses, which another command does not read
_OBJECTIVE_KEYS = ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_neg", "vespo_k_pos",
                   "vespo_lambda_neg", "vespo_lambda_pos")  # fmt: skip
NOT_OFFERED.update(dict.fromkeys(_OBJECTIVE_KEYS, "only rl train's loss_type sapo | vespo "
                                                  "reads it"))  # fmt: skip
# transformers TrainingArguments keys not above: at transformers' default they do nothing; at
# another value they are refused, with these hints where one helps
_LAUNCHER_KEYS = ("deepspeed", "fsdp", "fsdp_config", "accelerator_config", "parallelism_config",
                  "ddp_backend", "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
                  "ddp_static_graph")  # fmt: skip
TRAINING_ARGUMENTS_HINTS = {
    **dict.fromkeys(_LAUNCHER_KEYS, _LAUNCHER),
    "auto_find_batch_size": "set per_device_train_batch_size (and gradient_accumulation_steps)",
    "torch_compile_backend": "models run eagerly",
    "torch_compile_mode": "models run eagerly",
    "neftune_noise_alpha": "embeddings are not noised",
    "label_smoothing_factor": "the losses are distalign's own (distalign.losses)",
    "log_level": "distalign logs at INFO on the first process",
    "hub_token": "hub access uses the token of `hf auth login` or HF_TOKEN",
    "push_to_hub_token": "hub access uses the token of `hf auth login` or HF_TOKEN",
    "push_to_hub_model_id": "hub_model_id names the repository (org/name)",
    "push_to_hub_organization": "hub_model_id names the repository (org/name)",
    "save_safetensors": "checkpoints are written as safetensors only (never pickles)",
    "use_mps_device": "device placement is accelerate's: a Mac's MPS when it has one",
    "half_precision_backend": "mixed precision is accelerate's autocast: bf16 or fp16",
    "fp16_backend": "mixed precision is accelerate's autocast: bf16 or fp16",
    "adafactor": "AdamW (torch) is the optimizer",
}
# TrainingArguments keys that a command which does not train has its own keys for
PLACEMENT_KEYS = {
    "bf16": "dtype=bfloat16", "fp16": "dtype=float16", "bf16_full_eval": "dtype=bfloat16",
    "fp16_full_eval": "dtype=float16", "use_cpu": "device=cpu", "no_cuda": "device=cpu",
}  # fmt: skip
ANY = object()  # any value does nothing (a key that acts only beside another)
DEFAULT = object()  # the key's own default

# keys whose null in a TRL config means something here that is not null: TRL's
# ``center_rewards_coefficient: null`` is no centring, an earlier TRL's ``top_k: null`` no
# top-k filter; ``attn_implementation: null`` and ``dtype: null`` are the library's choice,
# which is distalign's default
NULL_MEANS = {
    "center_rewards_coefficient": 0.0, "missing_eos_penalty": 0.0, "top_k": 0,
    "attn_implementation": DEFAULT,
    "dtype": DEFAULT,
    "eval_steps": DEFAULT, "save_steps": DEFAULT,  # transformers: as logging_steps; here ours
}  # fmt: skip


def data_source_checks(config: Any) -> list[tuple[bool, str]]:
    """``require`` checks that a training config's ``dataset_name`` (and
    ``eval_dataset_name``, where set) is a data source: a hub id or local path, or a
    ``datasets`` data set; rows or a DataFrame from Python are said how to hand over."""
    import datasets

    kinds = (str, datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset,
             datasets.IterableDatasetDict)  # fmt: skip
    checks = []
    for key in ("dataset_name", "eval_dataset_name"):
        value = getattr(config, key, None)
        if value is None and key == "eval_dataset_name":
            continue
        if isinstance(value, os.PathLike):  # a pathlib.Path, read as its text
            setattr(config, key, value := os.fspath(value))
        quote = " (quote it on the command line)" if isinstance(value, int | float) else ""
        said = (f"{key}: a hub id or local path, or a datasets Dataset / DatasetDict (rows in "
                "Python: Dataset.from_list(rows); a DataFrame: Dataset.from_pandas(df)), got "
                f"{type(value).__name__}{quote}")  # fmt: skip
        checks.append((isinstance(value, kinds), said))
    return checks


def resolve_nulls(config: Any) -> None:
    """A config object built in Python with TRL's meaningful nulls (``NULL_MEANS``) on keys
    that take no null, read as a file or the command line reads them:
    ``RMTrainConfig(center_rewards_coefficient=None)`` is no centring, ``eval_steps=None``
    the default."""
    for f in dataclasses.fields(config):
        name = f.name
        if (
            name in NULL_MEANS
            and getattr(config, name) is None
            and not _takes_none(type(config), name)
        ):
            meaning = NULL_MEANS[name]
            if meaning is DEFAULT:
                meaning = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            setattr(config, name, meaning)


class Either(tuple):
    """Several values that do nothing (a default that differs between versions)."""


# values of those keys that do nothing (TRL's and transformers' defaults): a config carrying
# them is read as if they were absent
NEUTRAL = {
    "save_total_limit": None, "load_best_model_at_end": False, "metric_for_best_model": None,
    # transformers sets it True for a metric not named *loss (rm train's accuracy)
    "greater_is_better": Either((None, True)),
    "logging_dir": None,
    "optim": Either(("adamw_torch", "adamw_torch_fused")), "torch_compile": False,
    "logging_strategy": "steps", "do_train": ANY,
    "do_eval": ANY, "dataloader_num_workers": 0,
    "dataloader_pin_memory": ANY,  # batches are small and moved by accelerate; a CPU dump: false
    "ddp_find_unused_parameters": Either((None, False)),
    "disable_tqdm": ANY,  # transformers sets it from the log level
    "per_device_eval_batch_size": ANY,

    "use_liger_kernel": False, "activation_offloading": False,
    "gradient_checkpointing_kwargs": Either((None, {}, {"use_reentrant": False})),
    "dataset_streaming": False, "remove_unused_columns": ANY, "dataset_text_field": ANY,
    "datasets": Either(([], None)), "streaming": False, "test_split_size": None,
    # TrainingArguments.to_dict() writes every *_token key as "<NAME>", set or not
    "eos_token": Either((None, "<EOS_TOKEN>")), "pad_token": Either((None, "<PAD_TOKEN>")),
    "load_in_4bit": False, "load_in_8bit": False,
    "bnb_4bit_quant_type": ANY, "bnb_4bit_quant_storage": ANY, "use_bnb_nested_quant": False,
    "use_vllm": False, "generation_kwargs": Either((None, {})), "cache_implementation": None,
    "use_transformers_paged": False, "use_transformers_continuous_batching": False,
    "transformers_continuous_batching_config": ANY, "ds3_gather_for_generation": ANY,
    "log_unique_prompts": ANY,
    "log_multimodal": ANY, "router_aux_loss_coef": ANY,
    "pad_to_multiple_of": Either((None, "auto")),
    "lora_target_parameters": None, "repetition_penalty": 1.0, "min_p": Either((None, 0.0)),
    "do_sample": True,
    "sync_ref_model": False, "ref_model_sync_steps": ANY, "ref_model_mixup_alpha": ANY,
    "off_policy_mask_threshold": None, "entropy_coef": 0.0,
    "use_bias_correction_kl": ANY,  # a key of rl train's; another command has no KL term
    "use_adaptive_entropy": False, "multi_objective_aggregation": "sum_then_normalize",
    "cast_lm_head_to_fp32": ANY, "log_completions_hub_repo": None,
    "max_tool_calling_iterations": None, **dict.fromkeys(_ONLY_BESIDE + _OBJECTIVE_KEYS, ANY),
    "tools": Either((None, [])), "ignore_bias_buffers": False,
    # TrainingArguments keys whose default differs between transformers versions
    "fsdp": Either((None, "", [])), "fsdp_config": Either((None, {})),
    # as TrainingArguments.to_dict() writes its defaults (TRL's config dumps)
    "accelerator_config": Either((None, {}, {
        "split_batches": False, "dispatch_batches": None, "even_batches": True,
        "use_seedable_sampler": True, "non_blocking": False, "gradient_accumulation_kwargs": None,
    })),
    "debug": Either((None, "", [])), "hub_token": Either((None, "<HUB_TOKEN>")),
    "optim_args": Either((None, "")),
    "average_tokens_across_devices": ANY, "include_num_input_tokens_seen": Either((False, "no")),
    "local_rank": ANY,  # the launcher's (torch.distributed.launch --local_rank), read from env
    # TRL's earlier RLOO and PPO configs, at their defaults (the value-model keys: any value)
    "exp_name": ANY, "total_episodes": None, "num_mini_batches": 1,
    "local_rollout_forward_batch_size": ANY, "num_sample_generations": ANY,
    "stop_token": Either((None, "eos")), "stop_token_id": None, "whiten_rewards": False,
    "normalize_reward": False,
    "token_level_kl": False, "kl_estimator": "k1", "model_adapter_name": None,
    "ref_adapter_name": None, "vf_coef": ANY, "cliprange_value": ANY, "gamma": ANY, "lam": ANY,
    "world_size": ANY, "num_total_batches": ANY, "micro_batch_size": ANY,
    "local_batch_size": ANY, "local_mini_batch_size": ANY, "mini_batch_size": ANY,
    "max_length": None, "sft_model_path": "EleutherAI/pythia-160m", "dataset_num_proc": ANY,
}  # fmt: skip


class ConfigError(ValueError):
    """A config file or override that does not fit the command's dataclass."""


def _first_line(e: OmegaConfBaseException) -> str:
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


class SettingsError(ValueError):
    """Settings that do not go together: each failed check of ``require``, one per line."""


def require(checks: Sequence[tuple[bool, str]]) -> None:
    """``__post_init__`` helper: a SettingsError (a ValueError) with the message of every
    failed check, one per line, so that a config's problems are said at once."""
    if failed := [message for ok, message in checks if not ok]:
        raise SettingsError("\n".join(dict.fromkeys(failed)))


def known_keys(
    cls: type,
    items: dict[str, Any],
    where: str,
    given: dict[str, Any] | None = None,
    beside: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``items`` (key -> value) without the TRL / transformers keys whose value does nothing
    here (``NEUTRAL``: ``use_vllm: false`` in a TRL config), aliases under the key they name
    and TRL's meaningful nulls resolved. A renamed key, a key not offered with a value that
    would act, or an unknown key is a ConfigError that says what to use: one error listing
    every such key of ``items``. ``given``: every key the config gets, from its file and its
    overrides (default: ``items``), for ``num_train_epochs``, which does nothing beside a
    ``max_steps`` given anywhere."""
    known = {f.name for f in dataclasses.fields(cls)}
    kept, errors = {}, []
    idle: dict[str, list[str]] = {}  # why -> the keys that do nothing for that reason
    if "reward" in known:
        items = _both_reward_keys(items, where)
    for key, value in items.items():
        try:
            item = _known_key(cls, known, key, value, items, where, given, idle, beside)
        except ConfigError as e:
            errors.append(str(e))
            continue
        if item is not None:
            kept[item[0]] = item[1]
    if errors:
        raise ConfigError("\n".join(errors))
    if idle:  # one line, not one per key: a TRL config's dump holds a hundred of them
        n = sum(map(len, idle.values()))
        log.info("%s: %d key%s that do%s nothing here: %s", where, n, "s" * (n > 1),
                 "" if n > 1 else "es",
                 "; ".join(f"{', '.join(keys)}: {why}" for why, keys in idle.items()))  # fmt: skip
    return kept


def counts_epochs(cls: type, given: dict[str, Any]) -> bool:
    """Whether the keys ``given`` to ``cls`` mean a run of ``num_train_epochs`` passes where its
    max_steps counts steps by default (rl train's 20): epochs given without max_steps, which
    in TRL (max_steps -1 by default) are what the run counts. Logs that it reads them so."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    epochs = given.get("num_train_epochs")
    if "max_steps" not in fields or not fields["max_steps"].default > 0 or _unset(epochs):
        return False
    if not _unset(given.get("max_steps")):
        return False
    log.info("num_train_epochs=%s without max_steps: the run counts passes over the prompts "
             "(max_steps -1, as TRL's default)", epochs)  # fmt: skip
    return True


def _both_reward_keys(items: dict[str, Any], where: str) -> dict[str, Any]:
    """TRL's ``reward_model_name_or_path`` beside ``reward_funcs``: TRL's script uses both,
    the model first; here one ``reward`` list."""
    model, funcs = items.get("reward_model_name_or_path"), items.get("reward_funcs")
    if _unset(model) or _unset(funcs):
        return items
    if not _unset(items.get("reward")):
        raise ConfigError(f"{where}: `reward` beside TRL's reward_funcs and "
                          "reward_model_name_or_path; give one of them")  # fmt: skip
    funcs = list(funcs) if isinstance(funcs, list | tuple) else [funcs]
    log.info("%s: reward_model_name_or_path and reward_funcs are read as one reward list", where)
    out = {k: v for k, v in items.items() if k not in TRL_REWARD_KEYS}
    return {**out, "reward": [model, *funcs]}


def _known_key(cls, known, key: str, value: Any, items, where: str,
               given: dict[str, Any] | None, idle: dict[str, list[str]],
               beside: dict[str, Any] | None = None,
               ) -> tuple[str, Any] | None:  # fmt: skip
    """One item of ``known_keys``: (key, value) to keep, or None to drop it; a key that does
    nothing goes under its reason in ``idle`` (said with the others). ``beside``: the keys
    given with it in one place (a file's, or the command line's; default ``items``)."""
    top = key.split(".")[0]
    if top not in known and ALIASES.get(top) in known:
        if _unset(value):  # transformers 5's warmup_ratio: None, dtype: null beside it
            return None
        if ALIASES[top] in items and _same(value, TRANSFORMERS_4_DEFAULTS.get(top, Either())):
            return None  # a transformers 4 dump: no_cuda: false beside use_cpu: true
        key, value = _alias(top, key, value, items, where)
        top = key.split(".")[0]
    elif (
        key == "warmup_steps"
        and _unset(value)
        and not _unset((items if beside is None else beside).get("warmup_ratio"))
    ):  # in one file, or on the command line in either order (over a file's, a 0 wins)
        return None  # warmup_steps: 0 beside warmup_ratio: 0.1 (transformers 4 takes the ratio)
    if top == "train_sampling_strategy" and "group_by_length" in known:  # transformers 5's
        grouped = {"random": False, "group_by_length": True}.get(value)
        if grouped is None:
            raise ConfigError(f"{where}: train_sampling_strategy: random | group_by_length here "
                              f"(each epoch is shuffled), not {value!r}")  # fmt: skip
        log.info("%s: train_sampling_strategy=%s is read as group_by_length=%s", where, value,
                 grouped)  # fmt: skip
        return "group_by_length", grouped
    if top == "reward_clip_range" and top in known and _number(value):
        # TRL's earlier RLOO config: one bound c, the rewards clipped to [-c, c]
        log.info("%s: reward_clip_range=%r is read as [%r, %r]", where, value, -abs(value),
                 abs(value))  # fmt: skip
        return top, [-abs(float(value)), abs(float(value))]
    if top == "pad_to_multiple_of" and value == "auto" and top in known:
        # TRL's default: pad to a multiple only on AWS Neuron, i.e. not here
        log.info("%s: pad_to_multiple_of=auto is read as null (no rounding up)", where)
        return top, None
    if top == "batch_size" and top not in known and _on_policy_dump(given or items):
        idle.setdefault("TRL computed it from the batch keys", []).append(top)
        return None
    if top not in known and top in RENAMED and _renamed_here(RENAMED[top], known):
        name, paren, note = RENAMED[top].partition(" (")
        raise ConfigError(f"{where}: `{top}` is now `{name}`{paren}{note}")
    steps = (items if given is None else given).get("max_steps")
    if top == "num_train_epochs" and isinstance(steps, int) and steps > 0:
        # TRL's RLOO config carries both; transformers ignores the epochs beside max_steps
        log.info("%s: num_train_epochs=%r does nothing beside max_steps=%d", where, value, steps)
        return None
    hint = NOT_OFFERED.get(top, _SAMPLER if top.startswith("vllm_") else None)
    trains = "learning_rate" in known
    if top not in known and not trains and top in _training_arguments_defaults():
        # a training config handed to a command that does not train (rm eval --config …):
        # its training keys do nothing; one that would set this command's precision or
        # device does, where it is not transformers' default
        placement = PLACEMENT_KEYS.get(top)
        if placement and not _same(value, _training_arguments_defaults()[top]):
            raise ConfigError(f"{where}: `{top}` is a training key; this command takes "
                              f"{placement}")  # fmt: skip
        idle.setdefault("this command does not train", []).append(top)
        return None
    if top not in known and not hint and top in _training_arguments_defaults():
        default = _training_arguments_defaults()[top]
        hint = TRAINING_ARGUMENTS_HINTS.get(
            top, f"remove it, or give transformers' default ({default!r}), which does nothing"
        )
    if top not in known and hint:
        # a vllm_* key does nothing without use_vllm, whatever its value; another
        # TrainingArguments key does nothing at transformers' default
        neutral = NEUTRAL.get(
            top,
            ANY if top.startswith("vllm_") else _training_arguments_defaults().get(top, Either()),
        )
        if neutral is ANY or (key == top and _same(value, neutral)):
            said = hint if top in NOT_OFFERED or top in TRAINING_ARGUMENTS_HINTS else None
            default = _SAMPLER if top.startswith("vllm_") else "no setting here reads it"
            said = said or ("transformers' default" if neutral is not ANY else default)
            idle.setdefault(said, []).append(top)
            return None
        raise ConfigError(f"{where}: `{top}` is a TRL/transformers key distalign does not "
                          f"take: {hint}")  # fmt: skip
    if top not in known:
        close = difflib.get_close_matches(top, known, n=1)
        maybe = f". Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: Key '{top}' not in '{cls.__name__}'{maybe}")
    if value is None and key == top and not _takes_none(cls, top):
        meaning = NULL_MEANS.get(top)
        if meaning is None:
            default = next(f.default for f in dataclasses.fields(cls) if f.name == top)
            shown = "" if default is dataclasses.MISSING else f" (default {default!r})"
            raise ConfigError(f"{where}: `{top}` cannot be null here; give a value{shown}")
        if meaning is DEFAULT:
            log.info("%s: %s=null is the default here", where, top)
            return None
        value = meaning
    if key == top and _dict_field(cls, top) and isinstance(value, str):
        value = _json_mapping(value, f"{where}: {top}")
    return key, value


def _dict_field(cls: type, name: str) -> bool:
    """Whether field ``name`` of ``cls`` holds a mapping (``dict[...]`` or ``dict[...] | None``)."""
    hint = _field_hints(cls).get(name)
    return any(typing.get_origin(h) is dict or h is dict for h in (hint, *typing.get_args(hint)))


def _json_mapping(text: str, where: str) -> dict[str, Any]:
    """A mapping given as a JSON string, as transformers' ``TrainingArguments`` reads its dict
    fields (``lr_scheduler_kwargs: '{"min_lr_rate": 0.1}'`` in a TRL config), or in YAML's
    flow style, as the command line reads it (``'{enable_thinking: false}'``)."""
    import yaml

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{where}: a mapping, or a JSON object as a string; {text!r} is "
                              f"not JSON ({e.msg})") from None  # fmt: skip
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a mapping, or a JSON object as a string, got {text!r}")
    return value


def _on_policy_dump(keys: dict[str, Any]) -> bool:
    """Whether a config is TRL's earlier RLOO/PPO one (its OnPolicyConfig computed
    ``batch_size`` beside these), not an earlier distalign config's ``batch_size``."""
    return any(
        k in keys for k in ("local_batch_size", "num_total_batches", "local_mini_batch_size")
    )


def _renamed_here(new: str, known: set[str]) -> bool:
    """Whether a ``RENAMED`` entry names a key of this command (its first word, or a key
    named in it): `gamma` is rm train's `center_rewards_coefficient`, while in rl train it is
    PPO's discount, which is said as such."""
    return any(word in known for word in re.findall(r"[a-z_][a-z0-9_]*", new))


def _number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unset(value: Any) -> bool:
    """A value that leaves a key to its other name: None, or 0 (``warmup_steps: 0``)."""
    return value is None or (_number(value) and value == 0)


def _alias(top: str, key: str, value: Any, items: dict[str, Any], where: str) -> tuple[str, Any]:
    """``key`` (whose top is an ``ALIASES`` name) as the key it names, and its value."""
    name = ALIASES[top]
    given = value
    if top == "scale_rewards":
        if not isinstance(value, str | bool) or value not in SCALE_REWARDS:
            raise ConfigError(f"{where}: scale_rewards must be group, batch or none, got "
                              f"{value!r}")  # fmt: skip
        value = SCALE_REWARDS[value]
    if name in items and not _unset(items[name]) and not _same(value, items[name]):
        meaning = f" (`{top}: {given}` is `{name}: {value}`)" if given != value else ""
        raise ConfigError(f"{where}: `{top}` and `{name}` both given; `{top}` is `{name}` "
                          f"here{meaning}")  # fmt: skip
    if top == "warmup_ratio":
        if not (isinstance(value, int | float) and 0 <= value < 1):
            raise ConfigError(f"{where}: warmup_ratio must be in [0, 1), got {value!r}")
        value = float(value)
    log.info("%s: %s is read as %s", where, top, name)
    return name + key[len(top) :], value


# transformers 4.57's TrainingArguments keys that transformers 5 removed, at their defaults (a
# config written under transformers 4 carries them); their earlier names of today's keys are
# ALIASES
TRANSFORMERS_4_DEFAULTS = {
    "save_safetensors": True, "use_mps_device": False, "jit_mode_eval": False,
    "fp16_opt_level": "O1", "half_precision_backend": "auto", "fp16_backend": "auto",
    "tpu_num_cores": None, "tpu_metrics_debug": False, "past_index": -1,
    "fsdp_min_num_params": 0, "fsdp_transformer_layer_cls_to_wrap": None, "adafactor": False,
    "group_by_length": False, "use_legacy_prediction_loop": False,
    "include_inputs_for_metrics": False, "push_to_hub_model_id": None,
    "push_to_hub_organization": None, "push_to_hub_token": None, "mp_parameters": "",
    "torchdynamo": None, "ray_scope": "last", "include_tokens_per_second": False,
    "warmup_ratio": 0.0, "overwrite_output_dir": False, "logging_dir": None,
    "no_cuda": False, "evaluation_strategy": "no", "per_gpu_train_batch_size": None,
    "per_gpu_eval_batch_size": None,
}  # fmt: skip


@cache
def _training_arguments_defaults() -> dict[str, Any]:
    """transformers ``TrainingArguments`` fields -> their defaults (``Either()``, which
    matches nothing, for one without a plain default), with transformers 4's that 5 removed."""
    from transformers import TrainingArguments

    out = dict(TRANSFORMERS_4_DEFAULTS)
    for f in dataclasses.fields(TrainingArguments):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = Either()
        # a str-valued enum default (IntervalStrategy.STEPS) compares as its string
        out[f.name] = default.value if isinstance(default, enum.Enum) else default
    return out


def _takes_none(cls: type, name: str) -> bool:
    """Whether field ``name`` of dataclass ``cls`` may be None (``X | None`` or ``Any``)."""
    hint = _field_hints(cls).get(name)
    return hint is None or hint is Any or type(None) in typing.get_args(hint)


@cache
def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: do not judge it
        return {}


class _Loader(yaml.SafeLoader):
    """YAML as OmegaConf reads a value: ``1e-6`` is a number (YAML 1.2), not the string PyYAML's
    YAML 1.1 makes of it, also inside a mapping (``lr_scheduler_kwargs: {min_lr: 1e-6}``)."""


_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """YAML that ``_Loader`` reads back as written: a string such as ``1e3`` (a run name, a
    revision) is quoted, or it would come back a number."""


def _quoted_if_numeric(dumper: yaml.SafeDumper, value: str):
    style = "'" if _EXPONENT.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _quoted_if_numeric)


def read_yaml(text: str) -> Any:
    """``text`` as YAML, safely, with YAML 1.2's exponent floats (``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects


def _yaml_value(raw: Any) -> Any:
    """A command-line value as YAML reads it (``false`` -> False), to compare with NEUTRAL."""
    if not isinstance(raw, str):
        return raw
    try:
        return read_yaml(raw)
    except yaml.YAMLError:
        return raw


def _same(value: Any, neutral: Any) -> bool:
    """``value`` is ``neutral``, or one of them (1.0 is 1, but false is not 0)."""
    if isinstance(neutral, Either):
        return any(_same(value, n) for n in neutral)
    return isinstance(value, bool) == isinstance(neutral, bool) and value == neutral


# what a scheduler needs beyond warm-up and horizon (transformers' get_scheduler raises, mid-setup,
# without them): a key of lr_scheduler_kwargs, any one of those listed
SCHEDULER_NEEDS = {
    "cosine_with_min_lr": (("min_lr", "min_lr_rate"), "{min_lr_rate: 0.1}"),
    "cosine_warmup_with_min_lr": (("min_lr", "min_lr_rate"), "{min_lr_rate: 0.1}"),
    "warmup_stable_decay": (("num_decay_steps",), "{num_decay_steps: 100}"),
}


def order_seed(cfg: Any) -> int:
    """The seed of a training command's data order: ``data_seed``, else ``seed``."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def check_scheduler(name: str, kwargs: dict[str, Any] | None) -> None:
    """A ConfigError unless ``lr_scheduler_type`` names a transformers scheduler that steps
    with the optimizer, with what it needs in ``lr_scheduler_kwargs``."""
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType if s.value not in ("reduce_lr_on_plateau", "greedy")]
    if name in ("reduce_lr_on_plateau", "greedy"):
        raise ConfigError(
            f"lr_scheduler_type: {name} steps on a metric, not with the optimizer; one of "
            + ", ".join(names)
        )
    if name not in names:
        raise ConfigError(f"lr_scheduler_type: {name!r} is none of {', '.join(names)}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"lr_scheduler_kwargs: a mapping, got {kwargs!r}")
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    takes = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]).parameters
    own = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}
    unknown = sorted(set(kwargs or {}) - (set(takes) - own))
    if unknown:
        raise ConfigError(
            f"lr_scheduler_kwargs: {name} takes no {', '.join(unknown)} (it takes "
            f"{', '.join(sorted(set(takes) - own)) or 'nothing else'})"
        )
    needs, example = SCHEDULER_NEEDS.get(name, ((), ""))
    if needs and not set(needs) & set(kwargs or {}):
        raise ConfigError(
            f"lr_scheduler_type={name} needs lr_scheduler_kwargs with {' or '.join(needs)}, "
            f"e.g. lr_scheduler_kwargs={example}"
        )


def config_warning(logger: logging.Logger, message: str, *args: Any) -> None:
    """A warning about a config, from the first process only: every process of an
    ``accelerate launch`` builds the config (the launcher sets ``RANK``)."""
    if os.environ.get("RANK", "0") == "0":
        logger.warning(message, *args)


def report_to_list(value: Any) -> list[str]:
    """``report_to`` as a list: one name, a comma-separated string or a list."""
    if value is None:
        return ["none"]
    if isinstance(value, str):
        value = [value]
    return [v.strip() for item in value for v in str(item).split(",") if v.strip()] or ["none"]


def resume_value(value: Any) -> str | None:
    """``resume_from_checkpoint``: None (start fresh), ``"last"`` (true: the run's own last
    checkpoint) or a checkpoint folder."""
    if value is None or str(value).lower() in ("", "false", "no", "none", "0"):
        return None
    if str(value).lower() in ("true", "yes", "1", "last"):
        return "last"
    return str(value)


def checkpoint_path(value: str, output_dir: str | Path) -> Path:
    """The folder ``resume_from_checkpoint`` names (``last``: output_dir/checkpoints/last)."""
    return Path(output_dir) / "checkpoints" / "last" if value == "last" else Path(value)


def mixed_precision(bf16: bool, fp16: bool) -> str | None:
    """accelerate's mixed_precision for the bf16/fp16 keys; None when neither is set, so that
    ``accelerate launch --mixed_precision`` (or its config file) decides."""
    return "bf16" if bf16 else "fp16" if fp16 else None


def frozen_dtype(mixed_precision: str | None) -> str:
    """Weights dtype of a training run's frozen inference models (reward models) under
    accelerate's ``mixed_precision`` (``bf16``, ``fp16``, ``no`` or None): the precision the
    run computes in, so they take no more memory and time than the policy's forward."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision or "no", "float32")


def placement_checks(device: str, dtype: str | None = None) -> list[tuple[bool, str]]:
    """``__post_init__`` checks of a command's ``device`` and ``dtype`` keys, by name only:
    whether the device exists is for ``models.load.resolve_device_dtype`` when it runs."""
    import torch

    try:
        named = device == "auto" or torch.device(device).type in ("cpu", "cuda", "mps", "xpu")
    except (RuntimeError, TypeError):
        named = False
    checks = [(named, f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")]
    if dtype is not None:
        allowed = ["auto", *DTYPES]
        checks.append(
            (dtype in allowed, f"dtype must be one of {' | '.join(allowed)}, got {dtype!r}")
        )
    return checks


Override = str | tuple[str, Any]
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
NULL_WORDS = ("null", "Null", "NULL", "~")  # YAML's null: unsets a key that may be unset


def string_list(cls: type, key: str, value: Any, where: str) -> Any:
    """A value of a ``list[str]`` key of ``cls``: one string is a list of one; an item YAML
    read as something else (``yes`` as true, ``a: b`` as a mapping) is a ConfigError that
    says how to quote it, not a prompt or path silently changed. Other keys: ``value``."""
    if not _holds_strings(cls, key) or value is None:
        return value
    if isinstance(value, str):
        return [value]
    items = value if isinstance(value, list | tuple) else [value]  # one value, not text
    odd = [(i, x) for i, x in enumerate(items) if not isinstance(x, str)]
    if odd:
        i, x = odd[0]
        raise ConfigError(
            f"{where}: item {i} reads as {type(x).__name__} {x!r}, not text (YAML reads "
            f"yes/no/true, numbers and 'a: b' so): quote each item, "
            f"{key}='[\"...\", \"...\"]', or repeat --{key} '...'"
        )
    return value


def _holds_strings(cls: type, key: str) -> bool:
    """Whether ``key`` of ``cls`` is a ``list[str]`` (prompts, policies)."""
    field_type = next((str(f.type) for f in dataclasses.fields(cls) if f.name == key), "")
    return field_type.startswith("list[str]")


def list_keys(cls: type) -> list[str]:
    """The keys of ``cls`` that hold a list (their flag may repeat, or take several words:
    ``--lora_target_modules q_proj v_proj``); a field marked ``metadata={"list": True}`` too."""
    names = [f.name for f in dataclasses.fields(cls)
             if "list[" in str(f.type) or f.metadata.get("list")]  # fmt: skip
    return names + [alias for alias, name in ALIASES.items() if name in names]  # --reward_funcs


def _another_value(word: str) -> bool:
    """Whether a word after a list flag's value is one more value (not a flag, key=value or
    the YAML file)."""
    return not word.startswith("--") and "=" not in word and not word.endswith((".yaml", ".yml"))


def bool_keys(cls: type) -> list[str]:
    """The keys of ``cls`` that hold a bool (they may be given as a bare ``--flag``), and the
    other names of such keys (``activation_checkpointing``)."""
    kinds = (bool, "bool", "bool | None", "None | bool")
    names = [f.name for f in dataclasses.fields(cls) if f.type in kinds]
    return names + [alias for alias, name in ALIASES.items() if name in names]


TRL_REWARD_KEYS = ("reward_funcs", "reward_model_name_or_path")


def _trl_reward_pair(
    loaded: dict[str, Any], overrides: Sequence[Override]
) -> tuple[dict[str, Any], list[Override]]:
    """TRL keeps reward functions and a reward model in two fields, and its script trains on
    both: with a file that gives either, a flag of either replaces that field of the file and
    keeps the other (``_both_reward_keys`` then makes one list of them, the model first)."""
    if loaded.get("reward_model_path") is not None:  # the older name of the model's field
        loaded = dict(loaded)
        loaded["reward_model_name_or_path"] = loaded.pop("reward_model_path")
    if not any(loaded.get(k) is not None for k in TRL_REWARD_KEYS):
        return loaded, _trl_reward_flags(overrides)
    given, kept = _trl_reward_items(overrides)
    return {**loaded, **given}, kept


def _trl_reward_items(overrides: Sequence[Override]) -> tuple[dict[str, Any], list[Override]]:
    """({TRL reward key: value} of the overrides, the other overrides)."""
    given, kept = {}, []
    for item in overrides:
        if isinstance(item, str) and "=" not in item:
            kept.append(item)  # said malformed where overrides are read
            continue
        key, raw = item.split("=", 1) if isinstance(item, str) else item
        key = "reward_model_name_or_path" if key == "reward_model_path" else key  # older name
        if key not in TRL_REWARD_KEYS:
            kept.append(item)
            continue
        value = _yaml_value(raw) if isinstance(raw, str) else raw
        if key == "reward_model_name_or_path" and isinstance(value, list) and len(value) == 1:
            value = value[0]
        given[key] = value
    return given, kept


def _trl_reward_flags(overrides: Sequence[Override]) -> list[Override]:
    """Flags of both TRL reward keys train on both, as TRL's script does (one ``reward`` list,
    the model first); a flag of one of them is read as any flag."""
    given, kept = _trl_reward_items(overrides)
    if any(_unset(given.get(k)) for k in TRL_REWARD_KEYS):
        return list(overrides)
    if any((item.split("=", 1)[0] if isinstance(item, str) else item[0]) == "reward"
           for item in kept):  # fmt: skip
        raise ConfigError("flags: `reward` beside TRL's reward_funcs and "
                          "reward_model_name_or_path; give one of them")  # fmt: skip
    return [*kept, ("reward", _both_reward_keys(given, "flags")["reward"])]


def _literal(value: Any) -> Any:
    """``value`` with every ``${`` escaped, so OmegaConf keeps it as written: a config is read
    as TRL reads one, and a file from elsewhere cannot pull an environment variable
    (``${oc.env:HF_TOKEN}``) into the saved config and the trackers."""
    if isinstance(value, str):  # backslashes before ${ are escapes to OmegaConf too: doubled
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_literal(v) for v in value]
    return value


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[Override] = ()
) -> T:
    """Defaults of ``cls`` <- YAML file <- overrides, each ``"key=value"`` (dotted keys nest;
    the value is parsed as YAML) or a ``(key, value)`` pair (a flag's raw value or a list; a
    raw value that is YAML's null, ``null`` or ``~``, unsets the key as ``key=null`` does)."""
    base = OmegaConf.structured(cls)
    errors: list[str] = []
    given = _given(overrides)  # every key given, for a key whose meaning depends on another's
    command_line = given  # the command line's keys (given takes a file's too, below)
    if path is None:
        overrides = _trl_reward_flags(overrides)
    _refuse_alias_clashes(_given(overrides))
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                loaded = read_yaml(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
            loaded = _set_env(loaded, path, errors)
            loaded, overrides = _trl_reward_pair(loaded, overrides)
            try:  # every problem of the file and the overrides at once, at the end
                given = {**loaded, **given}
                loaded = known_keys(cls, loaded, str(path), given)
            except ConfigError as e:
                errors.append(str(e))
                loaded = {}
            loaded = {k: string_list(cls, k, v, f"{path}: {k}") for k, v in loaded.items()}
            base = OmegaConf.merge(base, OmegaConf.create(_literal(loaded)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    except (TypeError, ValueError) as e:  # e.g. a mapping where a list belongs
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: {e}") from None
    for item in overrides:
        if isinstance(item, str):
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, text = item.split("=", 1)
            parsed = _yaml_value(text)
            kept = _override_key(
                cls, key, parsed, f"override {item!r}", errors, given, command_line
            )
            if kept is None:
                continue
            name, value = kept
            if (value is parsed and parsed is not None and _holds_strings(cls, name)
                    and not text.lstrip().startswith("[")):  # fmt: skip
                value = text  # prompts=Note: hi is one prompt, as written (only [...] is YAML)
            listed = string_list(cls, name, value, f"override {item!r}")
            try:
                if value is not parsed or listed is not value:  # a TRL null with a meaning
                    value = listed  # here; a warmup_ratio; one string for a list of them
                    OmegaConf.update(base, name, _literal(value), merge=True, force_add=False)
                    continue
                # an alias (reward_funcs=...) as the key it names
                base = OmegaConf.merge(base, OmegaConf.from_dotlist([f"{name}={_literal(text)}"]))
            except OmegaConfBaseException as e:
                raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
            except yaml.YAMLError as e:  # the value is read as YAML
                raise ConfigError(f"override {item!r}: {_yaml_problem(e)}") from None
            except (TypeError, ValueError) as e:  # e.g. a mapping given for a list
                raise ConfigError(f"override {item!r}: {e}") from None
        else:
            key, raw = item
            parsed = _yaml_value(raw)
            kept = _override_key(cls, key, parsed, f"--{key}", errors, given, command_line)
            if kept is None:
                continue
            key, meant = kept  # an alias (--reward_funcs) as the key it names
            # YAML's null unsets the key, as key=value reads it; a YAML list or mapping
            # (--reward_clip_range '[-1, 1]', --model_init_kwargs '{"dtype": "bfloat16"}') is read
            value = None if isinstance(raw, str) and raw in NULL_WORDS else raw
            if meant is not parsed and not isinstance(raw, list):  # a TRL null; a warmup_ratio
                raw = value = meant
            if isinstance(raw, list) and len(raw) == 1:  # one word after a list flag
                raw = raw[0]
            if isinstance(raw, str) and raw.lstrip().startswith(("[", "{")):
                value = _yaml_value(raw)
            value = string_list(cls, key, value, f"--{key}")
            try:
                OmegaConf.update(base, key, _literal(value), merge=True, force_add=False)
            except OmegaConfBaseException as e:
                raise ConfigError(f"--{key} {raw!r}: {_first_line(e)}") from None
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--{key} {raw!r}: {e}") from None
    if errors:  # one line per problem, each once
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    if counts_epochs(cls, given):
        OmegaConf.update(base, "max_steps", -1)
    try:
        return OmegaConf.to_object(base)  # runs each dataclass's __post_init__ checks
    except SettingsError as e:  # each problem on its line, named after the file they are in
        where = "" if path is None else f"{path}{' and the overrides' if overrides else ''}: "
        raise ConfigError("\n".join(where + line for line in str(e).splitlines())) from None
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    except (ValueError, TypeError) as e:  # a __post_init__ check (on a value of odd type)
        raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _set_env(loaded: dict[str, Any], path: Path, errors: list[str]) -> dict[str, Any]:
    """A config file's ``env`` section (TRL's ``TrlParser``: ``env: {WANDB_PROJECT: x}``) sets
    those environment variables, as TRL's does; the file's other keys are returned."""
    if "env" not in loaded:
        return loaded
    loaded = dict(loaded)
    env = loaded.pop("env")
    if not isinstance(env, dict):
        errors.append(f"{path}: env: expected a mapping of environment variables to values "
                      f"(as TRL's TrlParser reads it), got {env!r}")  # fmt: skip
        return loaded
    for name, value in env.items():
        os.environ[str(name)] = str(value)
    if env:
        log.info("%s: env sets %s", path, ", ".join(map(str, env)))
    return loaded


def _given(overrides: Sequence[Override]) -> dict[str, Any]:
    """The overrides' keys and values, as YAML reads them (what ``known_keys`` calls given)."""
    out = {}
    for item in overrides:
        if isinstance(item, str) and "=" not in item:
            continue  # said as an error where the overrides are read
        key, raw = item.split("=", 1) if isinstance(item, str) else item
        out[key] = _yaml_value(raw)
    return out


def _refuse_alias_clashes(given: dict[str, Any]) -> None:
    """A TRL name and the key it names both given on the command line with values that
    disagree (``baseline=rloo scale_rewards=group``) are refused, as in one file: read one by
    one, the later would win without a word. (Over a file's key, an override wins.)"""
    for key, value in given.items():
        top = key.split(".")[0]
        if top in ALIASES and ALIASES[top] in given:
            _alias(top, key, value, {ALIASES[top]: given[ALIASES[top]]}, "the command line")


def _override_key(cls: type, key: str, parsed: Any, where: str, errors: list[str],
                  given: dict[str, Any] | None = None,
                  beside: dict[str, Any] | None = None):  # fmt: skip
    """An override's (key, value) as ``known_keys`` reads it, or None: dropped (it does
    nothing), or refused (its error appended to ``errors``, said with the others at the end).
    ``beside``: the command line's other keys."""
    try:
        kept = known_keys(cls, {key: parsed}, where, given, beside)
    except ConfigError as e:
        errors.append(str(e))
        return None
    return next(iter(kept.items())) if kept else None


PYTHON_OBJECT = "<python object"  # how a saved config names what it cannot hold


def _plain(value: Any) -> Any:
    """A value YAML can hold: dataclasses and containers recursively; a Python object given
    through the API (a reward callable, a ``datasets.Dataset``) by its description."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):  # transformers' SchedulerType.COSINE, IntervalStrategy.STEPS
        return _plain(value.value)
    if isinstance(value, str):  # a data set mixture (data.mixture.Mixture) by its description
        return str(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    return f"{PYTHON_OBJECT}: {type(value).__name__}>"


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what is saved and logged)."""
    return _plain(cfg)


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(
        yaml.dump(config_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return path


def parse_cli_args(
    args: Sequence[str],
    positional: str | None = None,
    aliases: dict[str, str] | None = None,
    list_keys: Sequence[str] = (),
    bool_keys: Sequence[str] = (),
) -> tuple[str | None, list[Override]]:
    """CLI words -> (YAML path or None, overrides), accepting both styles:

        distalign rm train configs/x.yaml learning_rate=2e-5
        distalign rm train --config configs/x.yaml --learning_rate 2e-5

    ``--key value``, ``--key=value``, a bare ``--flag`` (true), dashes or underscores. A word
    that is neither a ``.yaml`` file nor ``key=value`` fills the command's ``positional`` key
    (e.g. the data source of ``data inspect``). ``aliases`` map a flag to a key (``--policy``
    -> ``policies``); a flag of a key in ``list_keys`` may repeat and collects a list; a
    flag of a key in ``bool_keys`` may stand alone (``--use_peft``), and ``--no_KEY`` sets it
    false, as transformers' HfArgumentParser reads it.
    """
    aliases = aliases or {}
    path, overrides, lists = None, [], {}
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            key, eq, value = word[2:].partition("=")
            key = key.replace("-", "_")
            key = aliases.get(key, key)
            if not eq and key.startswith("no_") and key[3:] in bool_keys and key not in bool_keys:
                overrides.append((key[3:], "false"))  # HfArgumentParser's --no_use_peft
                continue
            if not eq:
                following = words[i] if i < len(words) else "--"
                # a bool flag may stand alone (then it is true): its next word is its value
                # only when that reads as a bool, not when it is key=value or the YAML file
                bare = following.startswith("--") or (
                    key in bool_keys
                    and following.lower() not in BOOL_WORDS
                    and following not in NULL_WORDS
                )
                if not bare:
                    value, i = following, i + 1
                else:
                    value = "true"  # a bare flag
            if key == "config":
                path = value
            elif key in list_keys:  # repeated, or several words as TRL's nargs reads them
                lists.setdefault(key, []).append(value)
                while i < len(words) and _another_value(words[i]):
                    lists[key].append(words[i])
                    i += 1
            else:
                overrides.append((key, value))
        elif "=" in word and not word.startswith(("=", "[")):
            key, _, value = word.partition("=")
            name = aliases.get(key.replace("-", "_"))
            if name in list_keys:  # policy=DIR as --policy DIR: one more of the list
                lists.setdefault(name, []).append(value)
            elif name is not None:  # split=test as --split test
                overrides.append((name, value))
            else:
                overrides.append(word)
        elif path is None and word.endswith((".yaml", ".yml")):
            path = word
        elif positional is not None:
            overrides.append((positional, word))
        else:
            raise ConfigError(
                f"unexpected argument {word!r}: give a YAML config, key=value or --key value"
            )
    overrides += [(key, values) for key, values in lists.items()]
    return path, overrides


@cache
def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it, for ``cls`` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) of every key of ``cls``, nested dataclasses as dotted keys.
    The command's own keys come first, then those it inherits (e.g. the sampling keys)."""
    docs = _field_docs(cls)
    own = list(inspect.get_annotations(cls))
    fields = sorted(
        dataclasses.fields(cls),
        key=lambda f: (0, own.index(f.name)) if f.name in own else (1, 0),
    )
    rows = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        type_name = f.metadata.get("shown_type", type_name)  # what an `Any` key takes
        if dataclasses.is_dataclass(default):
            rows += config_fields(type(default), f"{prefix}{f.name}.")
            continue
        shown = yaml.safe_dump(_plain(default), default_flow_style=True, width=1000).strip()
        shown = shown.removesuffix("...").strip()
        rows.append((prefix + f.name, type_name, shown, docs.get(f.name, "")))
    return rows


@dataclass
class PlacementConfig:
    """Where and how a command without a training loop loads its models (inherited keys)."""

    device: str = "auto"
    """Where the models run: auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on a CUDA GPU that has it, else float32) | float32 |
    bfloat16 | float16."""
    attn_implementation: str = "sdpa"
    """Attention kernel, as transformers' from_pretrained takes it: sdpa | eager |
    flash_attention_2 (CUDA, bfloat16/float16, the flash-attn package)."""

    def placement(self) -> dict[str, str]:
        """The three keys as loader keyword arguments, as given (``auto`` unresolved)."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "attn_implementation": self.attn_implementation,
        }

    def load_options(self) -> dict[str, Any]:
        """The same with device and dtype resolved for this machine."""
        from distalign.models.load import resolve_device_dtype

        device, dtype = resolve_device_dtype(self.device, self.dtype)
        return {"device": device, "dtype": dtype, "attn_implementation": self.attn_implementation}
