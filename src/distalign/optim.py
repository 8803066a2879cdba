"""The optimizer both training loops use: AdamW, fused where torch has a fused kernel.

The fused kernel updates every tensor in one pass: on the 135M model, 0.09 s a step against
0.43 s for the per-tensor loop (fp32, this project's 2-core CPU; ``benchmarks/README.md``).
Its state dict is the same as the unfused one's, so checkpoints load either way. Sharded
runs (FSDP, DeepSpeed) keep the default implementation, which their wrappers expect.
"""

from __future__ import annotations

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adamw(params, lr: float, weight_decay: float = 0.01, sharded: bool = False):
    """AdamW over ``params`` (the trainable tensors, or parameter groups as torch takes them),
    fused when every one is a floating tensor on a device with a fused kernel and the run is
    not sharded."""
    params = list(params)
    tensors = [t for g in params for t in g["params"]] if params and isinstance(
        params[0], dict) else params  # fmt: skip
    fused = not sharded and all(
        p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
