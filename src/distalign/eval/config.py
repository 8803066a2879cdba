"""``distalign eval compare``'s config: which policies, reward models and judge, on which
prompts, decoded how (the run itself is ``eval/policy.py``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import yaml

from distalign.config import PlacementConfig, config_warning, placement_checks, require
from distalign.models.generate import SamplingConfig
from distalign.models.load import require_4d_mask

log = logging.getLogger(__name__)


@dataclass
class CompareConfig(SamplingConfig, PlacementConfig):
    """``distalign eval compare``: aligned policies vs SFT on held-out prompts.

    Decoding keys (max_completion_length, temperature, top_p, top_k, sampling_batch_size,
    seed) are flat, from ``SamplingConfig``, and identical for every policy."""

    max_completion_length: int = 64
    """Reply length limit in tokens; a reply that reaches it without EOS counts as cut off."""
    sampling_batch_size: int = 16
    """Prompts per prefill; each expands to ``num_generations`` rows during decoding."""

    sft: str | None = None
    """The SFT policy everything is compared with. None: the model the policies were trained
    from (their run's ``model_name_or_path``, or a LoRA adapter's base), else the default
    model (smollm2-135m-instruct)."""
    chat_template_path: str | None = None
    """A chat template for every policy, instead of its own: a Jinja file, a tokenizer whose
    template to take, or a built-in rendering (plain | hh), as in rl train. A policy without a
    template renders plain text."""
    policies: list[str] = field(default_factory=list)
    """Each aligned policy (full model or LoRA adapter folder) as NAME=DIR, or DIR alone, named
    by its folder (a run's name for its final/ or a checkpoint). One per ``--policy DIR``
    (or ``policy=DIR``), repeated."""
    rewards: list[str] = field(default_factory=list)
    """Reward models to score with (distributional ones by their expectation), as NAME=DIR or
    DIR alone (named as a policy is). One per ``--reward DIR``, repeated."""
    runs: list[str] = field(default_factory=list)
    """RL run folders: their checkpoints give the over-optimisation curve, their logs the plots
    (one per ``--run DIR``, repeated)."""
    rm_runs: list[str] = field(default_factory=list)
    """Reward-model run folders, for their training curves and held-out metrics in the report
    (one per ``--rm-run DIR``, repeated)."""
    judge: Any = field(default=None, metadata={"shown_type": "str | callable | list | None"})
    """The held-out judge whose reward is the headline: a reward-model folder or hub id, a
    ``module:function(prompts, replies[, **columns]) -> list[float]``, a list of them (summed)
    or (Python API) a callable — one the policies were not trained on. None: the gold judge,
    which scores only the benchmark's prompts (dataset_name=gold)."""
    dataset_name: Any = field(default="gold", metadata={"shown_type": "str | Dataset"})
    """Held-out prompts: gold (the benchmark's test prompts), a .txt file (one per line), a
    prompt-only or preference data set (hub id, local file or, from Python, a
    ``datasets.Dataset``), as for rl train."""
    dataset_config: str | None = None
    """Config (subset) of a hub data set, ``datasets.load_dataset``'s name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub data set (default: the latest)."""
    dataset_test_split: str = "test"
    """Split of ``dataset_name``."""
    skip_bad_rows: bool = False
    """Skip malformed prompt rows (counted) instead of stopping at the first."""
    max_eval_samples: int = 80
    """Prompts used (the first N)."""
    num_generations: int = 1
    """Replies per prompt and policy; more replies narrow the intervals at the same prompts."""
    bootstrap: int = 2000
    """Bootstrap resamples for the 95% intervals."""
    output_dir: str = "runs/compare"
    """Where compare.json, replies.jsonl and report.html go."""

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 1 or self.max_eval_samples < 1:
            raise ValueError(
                f"max_eval_samples and num_generations must be ≥ 1, got "
                f"{self.max_eval_samples} and {self.num_generations}"
            )
        require([(self.bootstrap >= 1, f"bootstrap must be ≥ 1, got {self.bootstrap}")])
        require(placement_checks(self.device, self.dtype))
        require_4d_mask(self.attn_implementation, "eval compare", "its KL to SFT (rl/logprobs.py)")
        if self.temperature == 0 and self.num_generations > 1:
            config_warning(log, "temperature 0 decodes greedily: the %d replies to a prompt come "
                           "out alike, so num_generations=1 measures the same in 1/%d of the "
                           "time", self.num_generations, self.num_generations)  # fmt: skip
        self._check_judge()

    def _check_judge(self) -> None:
        """``judge`` as one source or a list (a ``judge='[a,b]'`` string is parsed); no silent
        gold judge on prompts it has never seen."""
        if isinstance(self.judge, str) and self.judge.strip().startswith("["):
            self.judge = yaml.safe_load(self.judge)
        if isinstance(self.judge, tuple):
            self.judge = list(self.judge)
        from distalign.data.load import is_gold

        if self.judge is None and not is_gold(self.dataset_name):
            where = (
                repr(self.dataset_name)
                if isinstance(self.dataset_name, str)
                else f"a {type(self.dataset_name).__name__}"
            )
            raise ValueError(
                "judge: the default, the gold judge, scores only the benchmark's prompts "
                f"(dataset_name=gold), not {where}; name a reward model folder, hub id or "
                "module:function not used in training"
            )
        specs = self.judge_specs()
        if self.judge is not None and (not specs or any(s is None or s == "" for s in specs)):
            raise ValueError(f"judge: an empty source in {self.judge!r}")

    def judge_specs(self) -> list[Any]:
        """The judge's sources (empty: the gold judge)."""
        if self.judge is None:
            return []
        return list(self.judge) if isinstance(self.judge, list) else [self.judge]

    def policy_dirs(self) -> dict[str, str]:
        """NAME -> DIR of the aligned policies."""
        from distalign.rl.rewards import named_folders

        return named_folders(self.policies, taken={"sft"})

    def reward_dirs(self) -> dict[str, str]:
        """NAME -> DIR of the reward models."""
        from distalign.rl.rewards import named_folders

        return named_folders(self.rewards)
