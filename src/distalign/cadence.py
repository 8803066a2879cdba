"""When a training loop logs, evaluates and saves, read from transformers' keys.

``logging_steps``, ``eval_steps``, ``save_steps`` and ``warmup_steps`` take a number of
optimizer steps or, below 1, a fraction of the run's steps (rounded up), as transformers'
``TrainingArguments`` reads them; 0 turns the interval off. ``eval_strategy`` and
``save_strategy`` are ``steps`` (every ``eval_steps``/``save_steps``), ``epoch`` (at the end
of every pass over the training data: ``rl train``'s at the step whose prompts finish a pass
over its prompts) or ``no``.

Unlike transformers, a run always ends with one evaluation and one resumable checkpoint: the
final model's metrics are saved beside it and the run can be continued, whatever the
strategies say.

    cadence = Cadence.of(cfg, total_steps)
    if cadence.evaluates(step, epoch_ended=False): ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("steps", "epoch", "no")


def steps_of(value: float, total_steps: int) -> int:
    """An interval as transformers reads it: >= 1 a number of steps, in (0, 1) that fraction
    of ``total_steps`` (at least 1), 0 off."""
    if value <= 0:
        return 0
    if value < 1:
        return max(1, math.ceil(value * total_steps))
    return int(value)


def cadence_checks(cfg: Any) -> list[tuple[bool, str]]:
    """``require`` checks of a config's interval and strategy keys. A strategy YAML read as
    false (``save_strategy: no``) becomes ``"no"`` first."""
    for key in ("eval_strategy", "save_strategy"):
        if getattr(cfg, key) is False or str(getattr(cfg, key)).lower() in ("false", "none"):
            setattr(cfg, key, "no")
    checks = []
    for key in ("logging_steps", "eval_steps", "save_steps", "warmup_steps"):
        value = getattr(cfg, key)
        checks.append(
            (
                value >= 0 and (value < 1 or float(value).is_integer()),
                f"{key} must be a whole number of steps or a fraction in [0, 1), not {value}",
            )
        )
    checks.append((cfg.logging_steps > 0, "logging_steps must be > 0"))
    for key in ("eval_strategy", "save_strategy"):
        value = getattr(cfg, key)
        checks.append((value in STRATEGIES, f"{key}: {' | '.join(STRATEGIES)}, not {value!r}"))
    return checks


@dataclass(frozen=True)
class Cadence:
    """The resolved intervals of one run, in optimizer steps (0: never); ``log`` is
    ``MetricsLog``'s ``every``."""

    log: int = 1
    eval: int = 0
    save: int = 0
    eval_each_epoch: bool = False
    save_each_epoch: bool = False

    @classmethod
    def of(cls, cfg: Any, total_steps: int) -> Cadence:
        return cls(
            log=max(1, steps_of(cfg.logging_steps, total_steps)),
            eval=steps_of(cfg.eval_steps, total_steps) if cfg.eval_strategy == "steps" else 0,
            save=steps_of(cfg.save_steps, total_steps) if cfg.save_strategy == "steps" else 0,
            eval_each_epoch=cfg.eval_strategy == "epoch",
            save_each_epoch=cfg.save_strategy == "epoch",
        )

    def evaluates(self, step: int, epoch_ended: bool = False) -> bool:
        return bool(self.eval and step % self.eval == 0) or (epoch_ended and self.eval_each_epoch)

    def saves(self, step: int, epoch_ended: bool = False) -> bool:
        return bool(self.save and step % self.save == 0) or (epoch_ended and self.save_each_epoch)
