"""Reward sources for REINFORCE: a reward-model folder (scalar, or distributional through a
functional φ), a ``module:function(prompts, replies) -> list[float]`` string, or any Python
callable object with that signature (``rl train`` from Python).

The reward model may use another tokenizer than the policy: replies arrive as text and are
re-encoded by the reward model's own tokenizer (``score_replies``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from distalign import functionals as fn
from distalign.models.heads import head_log_probs


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (B,) the value optimised: scalar reward or φ(p)
    distributions: torch.Tensor | None = None  # (B, n) for a distributional RM
    std: torch.Tensor | None = None  # (B,) Std[R] for a distributional RM


class RewardSource:
    """Callable: (chat prompts, reply texts[, reference distributions]) -> RewardOutput."""

    needs_reference = False  # win probability needs the SFT reply's distribution per prompt
    distributional = False

    def __call__(self, prompts, replies, reference: torch.Tensor | None = None) -> RewardOutput:
        raise NotImplementedError


class CallableReward(RewardSource):
    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, prompts, replies, reference=None) -> RewardOutput:
        values = self.function(prompts, replies)
        if len(values) != len(replies):
            raise ValueError(
                f"reward function returned {len(values)} values for {len(replies)} replies"
            )
        return RewardOutput(torch.tensor([float(v) for v in values]))


class RewardModelSource(RewardSource):
    """A saved reward model; distributional heads go through the functional ``functional``."""

    def __init__(
        self,
        path: str,
        functional: str = "expectation",
        kappa: float = 1.0,
        alpha: float = 0.25,
        tau: float = 0.5,
        max_length: int | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ):
        from distalign.models.reward_model import load_reward_model

        self.model, self.tokenizer, self.meta = load_reward_model(path)
        self.model.to(device).requires_grad_(False)
        self.head = self.meta.get("head", "scalar")
        self.n_bins = self.meta.get("n_bins", 10)
        self.distributional = self.head != "scalar"
        if functional not in fn.FUNCTIONALS:
            raise ValueError(f"functional must be one of {fn.FUNCTIONALS}, got {functional!r}")
        self.functional, self.kappa, self.alpha, self.tau = functional, kappa, alpha, tau
        self.needs_reference = self.distributional and functional == "win_probability"
        # the length the model was trained with (saved by rm train), unless given
        self.max_length = max_length or self.meta.get("max_length", 512)
        self.batch_size = batch_size

    def _outputs(self, prompts, replies) -> torch.Tensor:
        """Raw head outputs (B, k) of the reward model."""
        from distalign.models.reward_model import score_replies

        return score_replies(
            self.model,
            self.tokenizer,
            prompts,
            replies,
            self.max_length,
            batch_size=self.batch_size,
        )

    def distributions(self, prompts, replies) -> torch.Tensor:
        """p (B, n) over scores 1..n of a distributional reward model."""
        return head_log_probs(self.head, self._outputs(prompts, replies), self.n_bins).exp()

    def __call__(self, prompts, replies, reference=None) -> RewardOutput:
        if not self.distributional:
            return RewardOutput(self._outputs(prompts, replies)[:, 0])
        p = self.distributions(prompts, replies)
        value = fn.apply_functional(
            self.functional, p, kappa=self.kappa, alpha=self.alpha, tau=self.tau, p_ref=reference
        )
        return RewardOutput(value, p, fn.std(p))


def import_callable(spec: str) -> Callable:
    """``package.module:function`` -> the function."""
    module, _, name = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward function {spec!r}: {e}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


def load_reward_source(spec, **kwargs) -> RewardSource:
    """A reward-model folder (``kwargs`` go to ``RewardModelSource``), ``module:function``, or
    a callable object."""
    if isinstance(spec, RewardSource):
        return spec
    if callable(spec):
        return CallableReward(spec)
    if not isinstance(spec, str):
        raise ValueError(f"reward must be a folder, module:function or a callable, got {spec!r}")
    if Path(spec).is_dir():
        return RewardModelSource(spec, **kwargs)
    if ":" in spec:
        return CallableReward(import_callable(spec))
    raise ValueError(f"reward {spec!r} is neither a reward-model folder nor module:function")
