"""The optimizer both training loops use: AdamW, fused where torch has a fused kernel.

The fused kernel updates every tensor in one pass: on the 135M model, 0.09 s a step against
0.43 s for the per-tensor loop (fp32, this project's 2-core CPU; ``benchmarks/README.md``).
Its state dict is the same as the unfused one's, so checkpoints load either way. Sharded
runs (FSDP, DeepSpeed) keep the default implementation, which their wrappers expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FUSED_DEVICES = ("cpu", "cuda")


@dataclass
class AdamKeys:
    """AdamW's settings of the training commands besides the learning rate and weight decay,
    under transformers' names and with its defaults."""

    adam_beta1: float = 0.9
    """AdamW's β₁: the decay of its running mean of the gradient."""
    adam_beta2: float = 0.999
    """AdamW's β₂: the decay of its running mean of the squared gradient (0.95 or 0.98 are
    common in RLHF recipes)."""
    adam_epsilon: float = 1e-8
    """AdamW's ε, added to the root of that mean."""

    def adam_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) of each condition the keys must meet."""
        return [
            (
                0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
                "adam_beta1 and adam_beta2 must be in [0, 1)",
            ),
            (self.adam_epsilon > 0, "adam_epsilon must be > 0"),
        ]

    def adam_options(self) -> dict:
        """``adamw``'s keyword arguments from these keys."""
        return {"betas": (self.adam_beta1, self.adam_beta2), "eps": self.adam_epsilon}


def adamw(
    params,
    lr: float,
    weight_decay: float = 0.01,
    sharded: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
):
    """AdamW over ``params`` (the trainable tensors, or parameter groups as torch takes them),
    fused when every one is a floating tensor on a device with a fused kernel and the run is
    not sharded."""
    params = list(params)
    tensors = [t for g in params for t in g["params"]] if params and isinstance(
        params[0], dict) else params  # fmt: skip
    fused = not sharded and all(
        p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors
    )
    return torch.optim.AdamW(
        params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None
    )
