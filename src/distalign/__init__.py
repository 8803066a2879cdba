"""distalign: reward models (scalar and distributional), REINFORCE/RLOO and honest evaluation.

Every command of the ``distalign`` CLI is a function here, taking the command's config:

    from distalign import RMTrainConfig, train_reward_model, train_policy, compare

Names are imported on first use, so ``import distalign`` stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distalign")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_EXPORTS = {
    "train_reward_model": "distalign.api",
    "train_policy": "distalign.api",
    "compare": "distalign.api",
    "evaluate_reward_model": "distalign.api",
    "score": "distalign.api",
    "generate": "distalign.api",
    "gold_judge": "distalign.api",
    "load_preferences": "distalign.data.load",
    "load_prompts": "distalign.data.prompts",
    "load_config": "distalign.config",
    "RMTrainConfig": "distalign.rm.config",
    "RLTrainConfig": "distalign.rl.config",
    "CompareConfig": "distalign.eval.config",
    "GenerateConfig": "distalign.command_configs",
    "RMEvalConfig": "distalign.command_configs",
    "RMScoreConfig": "distalign.command_configs",
    "GoldJudgeConfig": "distalign.command_configs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distalign' has no attribute {name!r}")
