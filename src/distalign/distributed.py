"""Whole parameters and whole state dicts from a model that may be sharded.

Under FSDP or DeepSpeed ZeRO-3 each process holds a shard of every weight. Sampling (which runs
a different number of forwards on every process) and saving (which needs every weight) must
see the whole model. Everything here is a no-op on an unsharded model (one process, DDP,
ZeRO-1/2), so the training loops call it unconditionally.

- ``full_parameters(model)``: a context in which every parameter is whole on this process.
  FSDP2 modules are unsharded once, with resharding after forward suspended, so the forwards
  inside run no collectives and the processes may stop sampling at different steps; FSDP1 is
  summoned; ZeRO-3 parameters are gathered. Collective: every process enters it.
- ``full_state_dict(model, prefix)``: the whole state dict (on CPU), collective; the keys
  under ``prefix`` with the prefix stripped (the policy inside a wrapper module).
- ``full_optimizer_state`` / ``load_full_optimizer_state``: the optimizer's state as one
  file every process can read back (FSDP2; unsharded optimizers as they are; FSDP1 and
  ZeRO-3 checkpoints go without it, with a warning).
- ``load_full_state_dict(model, state)``: load a whole state dict into a possibly sharded
  model (each process keeps its shard).

Tested with FSDP2 in two CPU processes (``tests/test_distributed.py``); the FSDP1 and ZeRO-3
branches follow the libraries' documented APIs and have not been run on this project's machines.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)


# logging's ``extra`` for a warning about this process's own share of the work (its samples,
# its rewards): under a launcher, every process says it (``cli.replica_logs``)
EVERY_PROCESS = {"every_process": True}


def is_sharded(accelerator) -> bool:
    """Whether accelerate will shard the model or its optimizer (FSDP, DeepSpeed)."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1] in {"FSDP", "DEEPSPEED"}


def _fsdp2_modules(model) -> list:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _fsdp1_root(model):
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return None
    for m in model.modules():  # the outermost FSDP1 wrapper
        if isinstance(m, FSDP):
            return m
    return None


def _zero3_parameters(model) -> list:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def sharding(model) -> str:
    """How ``model``'s weights are split over processes: fsdp2, fsdp1, zero3 or none."""
    if _fsdp2_modules(model):
        return "fsdp2"
    if _fsdp1_root(model) is not None:
        return "fsdp1"
    if _zero3_parameters(model):
        return "zero3"
    return "none"


def _reshards_after_forward(module) -> bool:
    groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", None) or []
    return any(getattr(g, "post_forward_mesh_info", 1) is not None for g in groups)


@contextmanager
def full_parameters(model):
    """Every parameter of ``model`` whole on this process inside the block (see the module
    docstring); the shards are restored on exit."""
    kind = sharding(model)
    if kind == "none":
        yield model
    elif kind == "fsdp2":
        modules = _fsdp2_modules(model)
        before = [_reshards_after_forward(m) for m in modules]
        for m in modules:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield model
        finally:
            for m, again in zip(modules, before, strict=True):
                m.reshard()
                m.set_reshard_after_forward(again, recurse=False)
    elif kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(_fsdp1_root(model), writeback=False, recurse=True):
            yield model
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(_zero3_parameters(model)):
            yield model


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if not prefix:
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def full_state_dict(model, prefix: str = "", accelerator=None) -> dict[str, Any] | None:
    """The whole state dict of ``model`` (tensors on CPU), keys under ``prefix`` only, with it
    stripped. None for an unsharded model: its own ``state_dict`` is whole already, and
    ``save_pretrained`` reads it directly. Collective under FSDP and ZeRO-3."""
    kind = sharding(model)
    if kind == "none":
        return None
    if kind == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return _strip(get_model_state_dict(model, options=options), prefix)
    if accelerator is None:
        raise ValueError(f"saving a {kind} model needs its Accelerator")
    return _strip(accelerator.get_state_dict(model), prefix)


def load_full_state_dict(model, state: dict[str, Any], prefix: str = "") -> None:
    """Load a whole state dict (keys without ``prefix``) into a possibly sharded ``model``;
    missing keys are allowed (a LoRA checkpoint holds the adapters only)."""
    state = {prefix + k: v for k, v in state.items()}
    if sharding(model) == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, state, options=options)
        return
    with full_parameters(model):
        model.load_state_dict(state, strict=False)


def full_optimizer_state(model, optimizer) -> dict[str, Any] | None:
    """The optimizer's state, whole (FSDP2: gathered and keyed by parameter name, so any
    world size can load it back); an unsharded optimizer's own ``state_dict``. None, with a
    warning, for FSDP1 and ZeRO-3: their checkpoints then hold no optimizer state."""
    kind = sharding(model)
    if kind == "fsdp2":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    if kind != "none":
        log.warning(
            "%s: the checkpoint holds the weights but not the optimizer state (a resumed run "
            "restarts AdamW's moments); FSDP2 (configs/accelerate/fsdp.yaml) or ZeRO-2 save it",
            kind,
        )
        return None
    return optimizer.state_dict()


def load_full_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    """Load what ``full_optimizer_state`` wrote."""
    if sharding(model) == "fsdp2":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    optimizer.load_state_dict(state)


def all_finite(state: dict[str, Any] | None, model) -> bool:
    """Whether every floating weight is finite: of ``state`` when given (the gathered
    weights), else of ``model``'s trainable parameters."""
    if state is None:
        tensors = [p for p in model.parameters() if p.requires_grad]
    else:
        tensors = [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
