"""The settings of the smaller commands, one dataclass each: ``generate``, ``model prepare``,
``data inspect``, ``rm eval``, ``rm score``, ``gold judge`` and ``report``. ``rm train``,
``rl train`` and ``eval compare`` keep theirs beside their code (``rm/config.py``,
``rl/config.py``, ``eval/config.py``); ``config`` reads all of them.

    from distalign.command_configs import RMEvalConfig
    cfg = load_config(RMEvalConfig, None, ["model_name_or_path=runs/rm/final"])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distalign.config import (
    ConfigError,
    PlacementConfig,
    placement_checks,
    require,
    resolve_nulls,
)
from distalign.data.mixture import MixtureKeys
from distalign.models.generate import SamplingConfig
from distalign.models.load import DEFAULT_MODEL


@dataclass
class GenerateConfig(SamplingConfig, PlacementConfig):
    """``distalign generate``: sample replies to chat prompts from a policy."""

    model_name_or_path: str = DEFAULT_MODEL
    """Policy: alias, local folder or hub id."""
    prompts: list[str] = field(default_factory=list)
    """User messages to answer (each becomes a one-turn chat)."""
    dataset_name: str | None = None
    """Prompt source: a .txt file (one prompt per line), a prompt-only or preference data set
    (hub id or local file; a preference set's prompts are used), or ``gold``."""
    dataset_split: str = "train"
    """Split of ``dataset_name`` (or a slice of it: ``train[:100]``)."""
    dataset_config: str | None = None
    """Config (subset) of a hub dataset, as datasets.load_dataset's name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub dataset (default: the latest)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""
    num_generations: int = 1
    """Replies per prompt."""
    output_file: str | None = None
    """Write replies as JSONL here (and the resolved config beside it); print when unset."""
    chat_template_path: str | None = None
    """A chat template for a model without one, or instead of its own: a Jinja file, a
    tokenizer whose template to take, or a built-in rendering (plain | hh), as in rl train."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off: only code shipped with transformers runs)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.prompts and not self.dataset_name:
            raise ConfigError("give prompts=[...] or dataset_name=SOURCE")
        if self.num_generations < 1:
            raise ConfigError(f"num_generations must be >= 1, got {self.num_generations}")
        require(placement_checks(self.device, self.dtype))


@dataclass
class ModelPrepareConfig:
    """``distalign model prepare``: resolve a model (converting the embedded GGUF once)."""

    model_name_or_path: str = DEFAULT_MODEL
    """Alias, local folder or hub id."""


@dataclass
class DataInspectConfig(MixtureKeys):
    """``distalign data inspect``: what a preference source holds, as distalign reads it."""

    dataset_name: str = "gold"
    """Local file/folder, hub id, or ``gold`` (also the first positional argument)."""
    dataset_split: str | None = None
    """Split (hub id or folder); default: train, or the only one."""
    format: str | None = None
    """explicit | implicit | hh | sharegpt | alpaca (default: detected from the first row)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted) instead of stopping at the first."""
    model_name_or_path: str = DEFAULT_MODEL
    """Tokenizer used for the token-length percentiles."""
    chat_template_path: str | None = None
    """A chat template for a model without one, or instead of its own: a Jinja file, a
    tokenizer whose template to take, or a built-in rendering (plain | hh), as in rl train."""
    dataset_config: str | None = None
    """Config (subset) of a hub dataset, as datasets.load_dataset's name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub dataset (default: the latest)."""
    max_length: int | None = 512
    """rm train's ``max_length`` (its default here): the pairs whose prompt + longer reply
    exceed it are counted (rm train cuts them to fit, TRL's RewardTrainer drops them); None:
    not counted."""
    seed: int = 0
    """The seed of ``test_split_size``'s draw, as the training run's."""

    def __post_init__(self):
        from distalign.data.formats import FORMATS
        from distalign.data.mixture import resolve_mixture

        resolve_mixture(self, DataInspectConfig.dataset_name)
        require([(self.max_length is None or self.max_length > 1, "max_length must be > 1")])

        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"format must be one of {' | '.join(FORMATS)}, got {self.format!r}")


@dataclass
class RMEvalConfig(PlacementConfig):
    """``distalign rm eval``: a saved reward model on held-out pairs."""

    model_name_or_path: str = ""
    """Reward model: ``rm train``'s ``final/`` (or its run folder), or another tool's one-label
    sequence classifier (TRL's RewardTrainer saves one; folder or hub id), scored with its own
    forward and template as ``rm score`` reads it (scalar metrics)."""
    dataset_name: str = "gold"
    """Preference source."""
    dataset_test_split: str = "test"
    """Split of the pairs."""
    dataset_config: str | None = None
    """Config (subset) of a hub data set, ``datasets.load_dataset``'s name."""
    dataset_revision: str | None = None
    """Branch, tag or commit of a hub data set (default: the latest)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted by reason) instead of stopping at the first."""
    max_length: int | None = None
    """Longest prompt + reply in tokens (default: the reward model's, from its training)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, cut from the left (default: the reward model's)."""
    per_device_eval_batch_size: int = 16
    """Pairs per batch."""
    max_eval_samples: int = 0
    """The first N pairs (0: all)."""
    output_dir: str | None = None
    """Folder for the metrics JSON and its plots (default: the model's folder; for a hub
    model, the working folder), as TRL's evaluate writes eval_results.json to output_dir."""
    output_file: str | None = None
    """Metrics JSON (default: eval_<data>_<split>.json in output_dir; _first<N> for the
    first N pairs, _len<L>-<P> for other lengths than the model's own)."""
    chat_template_path: str | None = None
    """A chat template for a reward model whose tokenizer has none (a Jinja file, a
    tokenizer's template, or ``plain``/``hh``), as ``rm train``'s key; default: the model's own.
    Without one, conversational data (message lists) are refused, as TRL refuses them."""
    format: str | None = None
    """explicit | implicit | hh | sharegpt | alpaca (default: detected from the first row), as in rm
    train."""

    def __post_init__(self):
        resolve_nulls(self)
        from distalign.data.formats import FORMATS

        require([
            (bool(self.model_name_or_path), "give model_name_or_path=RM_FOLDER"),
            (self.format is None or self.format in FORMATS,
             f"format must be one of {' | '.join(FORMATS)}, got {self.format!r}"),
            (not (self.max_length and self.max_prompt_length)
             or self.max_prompt_length < self.max_length,
             "need max_prompt_length < max_length"),
        ])  # fmt: skip
        require(placement_checks(self.device, self.dtype))


@dataclass
class RMScoreConfig(PlacementConfig):
    """``distalign rm score``: score prompt/reply rows with a saved reward model."""

    model_name_or_path: str = ""
    """Reward-model folder."""
    input_file: str = ""
    """JSONL/JSON/CSV/Parquet rows with ``prompt`` and ``reply`` (or ``response``/``completion``:
    text, or TRL's conversational completion; e.g. ``generate``'s output), or a conversation
    (TRL's ``messages``, ShareGPT's ``conversations``) ending with the assistant's turn, which
    is the reply."""
    output_file: str | None = None
    """Output JSONL (default: INPUT.scored.jsonl)."""
    max_length: int | None = None
    """Longest prompt + reply in tokens (default: a distalign RM's training max_length, with
    its prompts cut to its max_prompt_length; another model's own limit)."""
    per_device_eval_batch_size: int = 16
    """Rows per batch."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted, and left out of the output) instead of stopping at the
    first."""
    trust_remote_code: bool = False
    """Let a hub reward model run its own code (off: only transformers' own classes)."""

    chat_template_path: str | None = None
    """A chat template for a reward model whose tokenizer has none (a Jinja file, a
    tokenizer's template, or ``plain``/``hh``), as ``rm train``'s key; default: the model's own.
    Without one, conversational data (message lists) are refused, as TRL refuses them."""

    def __post_init__(self):
        resolve_nulls(self)
        require(
            [
                (bool(self.model_name_or_path), "give model_name_or_path=RM_FOLDER"),
                (bool(self.input_file), "give input_file=ROWS.jsonl"),
                *placement_checks(self.device, self.dtype),
            ]
        )


@dataclass
class GoldJudgeConfig:
    """``distalign gold judge``: gold-judge rewards of any prompt/reply file."""

    input_file: str = ""
    """Rows with ``prompt`` and ``reply``, or a conversation ending with the reply, as
    ``rm score`` reads them (also the first positional argument)."""
    output_file: str | None = None
    """Output JSONL (default: INPUT.gold.jsonl)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted, and left out of the output) instead of stopping at the
    first."""
    device: str = "auto"
    """Where the judge's sentence encoder runs: auto (CUDA, else MPS, else CPU) | cpu | cuda |
    cuda:N | mps. It always computes in float32: its scores are the benchmark's truth."""

    def __post_init__(self):
        require(
            [(bool(self.input_file), "give input_file=ROWS.jsonl"), *placement_checks(self.device)]
        )


@dataclass
class ReportConfig:
    """``distalign report``: write a comparison's report.html again from its saved numbers."""

    compare_dir: str = ""
    """The output_dir of ``eval compare`` (also the first positional argument)."""

    def __post_init__(self):
        require([(bool(self.compare_dir), "give the comparison folder")])
