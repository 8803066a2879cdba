"""The Python face of every command: one function per command, taking its config (or the
config's keys as keyword arguments) and returning what the command prints.

    from distalign import RMTrainConfig, train_reward_model
    metrics = train_reward_model(RMTrainConfig(dataset_name="pairs.jsonl"), max_steps=10)

A config object is checked exactly as on the command line (its ``__post_init__``); keyword
arguments replace its fields. Objects the command line cannot express are welcome here: a
``datasets.Dataset`` as ``dataset_name`` and a callable ``reward(prompts, replies)``.

Commands without a training loop take ``device``, ``dtype`` (both ``auto``: the GPU in
bfloat16 when there is one) and ``attn_implementation``; see docs/gpu.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from distalign.command_configs import (
    GenerateConfig,
    GoldJudgeConfig,
    RMEvalConfig,
    RMScoreConfig,
)
from distalign.config import (
    counts_epochs,
    known_keys,
    save_config,
)


def _per_call(function):
    """An API function after which the hub's offline switch, where the call set it (the hub
    could not be reached), is off again (``hub.offline_for_the_call``)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        from distalign.hub import offline_for_the_call

        with offline_for_the_call():
            return function(*args, **kwargs)

    return wrapped


def _config(cls: type, config: Any, overrides: dict[str, Any]):
    # warmup_ratio=: "is now warmup_steps"; use_vllm=False: does nothing, dropped
    overrides = known_keys(cls, overrides, "argument")
    # epochs without max_steps count passes (as on the command line), unless the config
    # object given sets max_steps (left at its default, it counts them too)
    default = {f.name: f.default for f in dataclasses.fields(cls)}.get("max_steps")
    if getattr(config, "max_steps", default) == default and counts_epochs(cls, overrides):
        overrides["max_steps"] = -1
    if config is None:
        return cls(**overrides)
    if not isinstance(config, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config


@_per_call
def train_reward_model(config=None, **overrides) -> dict[str, Any]:
    """``distalign rm train``: returns the final held-out metrics; the model is in
    ``output_dir/final`` (``AutoModelForSequenceClassification.from_pretrained`` loads it)."""
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run

    return run(_config(RMTrainConfig, config, overrides))


@_per_call
def train_policy(config=None, **overrides) -> dict[str, Any]:
    """``distalign rl train``: returns the held-out evaluation before (``initial``) and after
    (``final``) training; the policy is in ``output_dir/final``."""
    from distalign.rl.config import RLTrainConfig
    from distalign.rl.train import run

    return run(_config(RLTrainConfig, config, overrides))


@_per_call
def compare(config=None, **overrides) -> dict[str, Any]:
    """``distalign eval compare``: the numbers of ``compare.json``; writes the report."""
    from distalign.eval.config import CompareConfig
    from distalign.eval.policy import run_compare

    return run_compare(_config(CompareConfig, config, overrides))


@_per_call
def evaluate_reward_model(config=None, **overrides) -> dict[str, Any]:
    """``distalign rm eval``: metrics of a saved reward model on held-out pairs."""
    from distalign.eval.rm import run_rm_eval

    cfg = _config(RMEvalConfig, config, overrides)
    return run_rm_eval(
        cfg.model_name_or_path,
        cfg.dataset_name,
        cfg.dataset_test_split,
        cfg.max_length,
        cfg.per_device_eval_batch_size,
        cfg.max_eval_samples,
        cfg.output_file,
        max_prompt_length=cfg.max_prompt_length,
        data_options={
            "name": cfg.dataset_config,
            "revision": cfg.dataset_revision,
            "skip_bad_rows": cfg.skip_bad_rows,
            "format": cfg.format,
        },
        chat_template=cfg.chat_template_path,
        output_dir=cfg.output_dir,
        **cfg.placement(),
    )


@_per_call
def score(config=None, **overrides) -> Path:
    """``distalign rm score``: writes the scored rows; returns the output path."""
    from distalign.rm.score import score_file

    cfg = _config(RMScoreConfig, config, overrides)
    out, _ = score_file(
        cfg.model_name_or_path,
        cfg.input_file,
        cfg.output_file,
        cfg.max_length,
        cfg.per_device_eval_batch_size,
        trust_remote_code=cfg.trust_remote_code,
        chat_template=cfg.chat_template_path,
        skip_bad_rows=cfg.skip_bad_rows,
        **cfg.placement(),
    )
    return Path(out)


@_per_call
def gold_judge(config=None, **overrides) -> tuple[Path, dict[str, float]]:
    """``distalign gold judge``: writes the judged rows; returns the output path and the mean
    of each gold column."""
    from distalign.gold.build import judge_file

    cfg = _config(GoldJudgeConfig, config, overrides)
    out, means = judge_file(
        cfg.input_file, cfg.output_file, device=cfg.device, skip_bad_rows=cfg.skip_bad_rows
    )
    return Path(out), means


@_per_call
def generate(config=None, **overrides) -> list[dict[str, Any]]:
    """``distalign generate``: ``num_generations`` replies per prompt, as rows of ``prompt``,
    ``reply``, ``finished``, ``tokens``; also written as JSONL to ``output_file`` when set."""
    from distalign.data.load import LoadReport
    from distalign.data.prompts import load_prompts
    from distalign.models.generate import sample_replies, sampling_of
    from distalign.models.load import load_policy
    from distalign.models.templates import fit_rendering

    cfg = _config(GenerateConfig, config, overrides)
    prompts = [[{"role": "user", "content": p}] for p in cfg.prompts]
    report = LoadReport(source=str(cfg.dataset_name))
    if cfg.dataset_name:
        prompts += load_prompts(
            cfg.dataset_name,
            cfg.dataset_split,
            name=cfg.dataset_config,
            revision=cfg.dataset_revision,
            skip_bad_rows=cfg.skip_bad_rows,
            report=report,
        )
    model, tokenizer = load_policy(
        cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code,
        chat_template=cfg.chat_template_path, **cfg.load_options(),
    )  # fmt: skip
    fit_rendering(tokenizer, report, cfg.dataset_name, "the policy")
    out = sample_replies(
        model, tokenizer, prompts, k=cfg.num_generations, config=sampling_of(cfg), progress=True
    )
    # a prompt given as text is written as text (TRL's standard prompt/completion rows); a
    # file mixing text and messages gives every prompt as messages, so the rows load as one
    # data set (datasets refuses a column of both)
    texts = [*cfg.prompts, *(getattr(p, "text", None) for p in prompts[len(cfg.prompts) :])]
    rows = [
        {
            "prompt": texts[out.prompt_index(i)] or prompts[out.prompt_index(i)],
            "reply": text,
            "finished": out.finished[i],
            "tokens": len(out.reply_ids[i]),
        }
        for i, text in enumerate(out.texts)
    ]
    if cfg.output_file:
        path = Path(cfg.output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        save_config(cfg, path.parent, name=path.stem + ".config.yaml")
    return rows
