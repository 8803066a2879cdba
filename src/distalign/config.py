"""Typed configs: one dataclass per command, filled from YAML and ``key=value`` overrides.

    cfg = load_config(GenerateConfig, "configs/generate.yaml", ["sampling.temperature=0.7"])

Unknown keys and values of the wrong type are errors that name the key (and the file). The
resolved config is written beside every output (``save_config``) so a run can be repeated.
Each field's docstring (the string under it) is its documentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distalign.models.generate import SamplingConfig
from distalign.models.load import DEFAULT_MODEL

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the command's dataclass."""


def _first_line(e: OmegaConfBaseException) -> str:
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def require(checks: Sequence[tuple[bool, str]]) -> None:
    """``__post_init__`` helper: raise ValueError with the message of the first failed check."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls`` <- YAML file <- ``key=value`` overrides (dotted keys for nesting)."""
    base = OmegaConf.structured(cls)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
            base = OmegaConf.merge(base, OmegaConf.create(loaded))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
    try:
        return OmegaConf.to_object(base)  # runs each dataclass's __post_init__ checks
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    except ValueError as e:  # a __post_init__ check
        raise ConfigError(str(e)) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """CLI words -> (YAML path or None, overrides). The YAML file, if any, comes first."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


@dataclass
class GenerateConfig:
    """``distalign generate``: sample replies to chat prompts from a policy."""

    model: str = DEFAULT_MODEL
    """Policy: alias, local folder or hub id."""
    prompts: list[str] = field(default_factory=list)
    """User messages to answer (each becomes a one-turn chat)."""
    prompts_file: str | None = None
    """A text file with one prompt per line, or a preference file whose prompts are used."""
    k: int = 1
    """Replies per prompt."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Decoding settings."""
    output: str | None = None
    """Write replies as JSONL here (and the resolved config beside it); print when unset."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off: only code shipped with transformers runs)."""

    def __post_init__(self):
        if not self.prompts and not self.prompts_file:
            raise ConfigError("give prompts=[...] or prompts_file=PATH")
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
