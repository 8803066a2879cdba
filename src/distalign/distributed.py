"""Whole parameters and whole state dicts from a model that may be sharded.

Under FSDP or DeepSpeed ZeRO-3 each process holds a shard of every weight. Sampling (which runs
a different number of forwards on every process) and saving (which needs every weight) must
see the whole model. Everything here is a no-op on an unsharded model (one process, DDP,
ZeRO-1/2), so the training loops call it unconditionally.

- ``full_parameters(model)``: a context in which every parameter is whole on this process.
  FSDP2 modules are unsharded once, with resharding after forward suspended, so the forwards
  inside run no collectives and the processes may stop sampling at different steps; FSDP1 is
  summoned; ZeRO-3 parameters are gathered (a ZeRO-3 engine's hooks taken off meanwhile, by
  DeepSpeed's ``unwrap_model_for_generation``). Collective: every process enters it.
- ``full_state_dict(model, prefix)``: the whole state dict (on CPU), collective; the keys
  under ``prefix`` with the prefix stripped (the policy inside a wrapper module).
- ``full_optimizer_state`` / ``load_full_optimizer_state``: the optimizer's state as one
  file every process can read back (FSDP2 and DeepSpeed ZeRO: keyed by parameter name;
  unsharded optimizers as they are; FSDP1 checkpoints go without it, with a warning).
- ``load_full_state_dict(model, state)``: load a whole state dict into a possibly sharded
  model (each process keeps its shard); ``sync_master_weights`` then hands them to a ZeRO
  optimizer's fp32 copies.
- ``micro_batch``: one micro-batch's backward of an update accumulated by hand (``no_sync``;
  DeepSpeed's engine told where the update ends). ``load_whole`` / ``loaded_in_shards``: under
  ZeRO-3, the frozen models load whole, the trained one in shards.

Tested with FSDP2 in two CPU processes (``tests/test_distributed.py``), and with DeepSpeed
ZeRO-2 and ZeRO-3 through ``accelerate launch`` in one CPU process (``tests/test_deepspeed.py``:
accelerate runs DeepSpeed on a CPU for one process only, so sharding across processes is not
exercised); the FSDP1 branches follow torch's documented APIs and have not been run on this
project's machines.
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


def _zero3_engine(model) -> bool:
    """Whether ``model`` is a DeepSpeed ZeRO-3 engine (which hooks its modules' forwards)."""
    return hasattr(getattr(getattr(model, "optimizer", None), "parameter_offload", None),
                   "forward_hooks")  # fmt: skip


def sharding(model) -> str:
    """How ``model``'s weights are split over processes: fsdp2, fsdp1, zero3 or none."""
    if _fsdp2_modules(model):
        return "fsdp2"
    if _fsdp1_root(model) is not None:
        return "fsdp1"
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # ZeRO-3 converts every one
        return "zero3"
    return "none"


def _reshards_after_forward(module) -> bool:
    groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", None) or []
    return any(getattr(g, "post_forward_mesh_info", 1) is not None for g in groups)


@contextmanager
def full_parameters(model, modify: bool = False):
    """Every parameter of ``model`` whole on this process inside the block (see the module
    docstring); the shards are restored on exit. ``modify``: what the block writes into the
    weights is kept (ZeRO-3: process 0's writes, broadcast; FSDP1: written back); without it
    ZeRO-3 drops such writes. Not for FSDP2 (``load_full_state_dict`` writes its weights)."""
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

        with FSDP.summon_full_params(_fsdp1_root(model), writeback=modify, recurse=True):
            yield model
    elif not modify and _zero3_engine(model):
        # DeepSpeed's own (0.15 on): gathered once, and its hooks, which would release and
        # fetch each layer's weights again at every forward (a collective per decoding step,
        # which processes that stop sampling at different steps would wait on), taken off
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(model):
            yield model
    else:
        import deepspeed

        rank = 0 if modify else None
        with deepspeed.zero.GatheredParameters(_zero3_parameters(model), modifier_rank=rank):
            yield model


@contextmanager
def micro_batch(accelerator, model, last: bool):
    """The backward of one micro-batch of an update accumulated by hand: before the last,
    gradients are not all-reduced (DDP, FSDP: ``no_sync``), and DeepSpeed's engine, which steps
    its optimizer inside ``backward`` at a boundary, is told this is none (ZeRO-2/3 still
    reduce-scatter each micro-batch's gradients into their shards); the last one all-reduces,
    and the engine clips and steps there."""
    if last:
        yield
        return
    accelerator.sync_gradients = False  # what accelerate hands DeepSpeed's backward
    try:
        with accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True


def engine_dtype(accelerator) -> torch.dtype | None:
    """The dtype DeepSpeed's engine casts the trained model's weights to under bf16 or fp16
    mixed precision (it keeps fp32 master copies in its optimizer); None otherwise, where
    the weights stay as loaded and autocast computes in the lower precision."""
    if deepspeed_plugin(accelerator) is None:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(accelerator.mixed_precision)
    )  # fmt: skip


def _first_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def deepspeed_plugin(accelerator):
    """accelerate's DeepSpeed plugin of a run launched under DeepSpeed, else None."""
    return getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)


def _zero3_plugin(accelerator):
    plugin = deepspeed_plugin(accelerator)
    return plugin if plugin is not None and plugin.deepspeed_config.get(
        "zero_optimization", {}).get("stage") == 3 else None  # fmt: skip


def load_whole(accelerator) -> None:
    """From here on, models load whole on every process (``loaded_in_shards`` aside). Under
    DeepSpeed ZeRO-3, transformers' ``from_pretrained`` otherwise loads every model in shards
    (``zero.Init``), which only a DeepSpeed engine runs: a frozen model that is never prepared
    (the reference, a reward model, the gold judge's encoder) would have empty weights, and
    ``generate`` would wait for the other processes at every token."""
    if _zero3_plugin(accelerator) is not None:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


@contextmanager
def loaded_in_shards(accelerator):
    """Under DeepSpeed ZeRO-3, the model loaded inside (the one to train) is loaded in shards
    from the start, as transformers does under accelerate's DeepSpeed plugin; no-op otherwise."""
    plugin = _zero3_plugin(accelerator)
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    plugin.set_deepspeed_weakref()  # accelerate's: transformers reads the config from it
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


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
    if kind == "zero3":  # gathered here: accelerate's get_state_dict would refuse a config
        # without stage3_gather_16bit_weights_on_model_save, after the run's first steps
        from accelerate.utils import extract_model_from_parallel

        with full_parameters(model):  # every process gathers; the first one keeps a copy
            if not _first_process():
                return {}  # as FSDP2's full state dict with cpu_offload
            whole = extract_model_from_parallel(model).state_dict()
            copies: dict[int, torch.Tensor] = {}  # tied weights stay one tensor, saved once
            for v in whole.values():
                copies.setdefault(v.data_ptr(), v.detach().cpu().clone())
            return _strip({k: copies[v.data_ptr()] for k, v in whole.items()}, prefix)
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
    with full_parameters(model, modify=True):
        model.load_state_dict(state, strict=False)


def zero_optimizer(optimizer):
    """The DeepSpeed ZeRO optimizer inside accelerate's wrapper, or None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if type(inner).__module__.startswith("deepspeed.") else None


def _zero_state(model, zero) -> dict[str, Any]:
    """A ZeRO optimizer's state (stages 1 to 3), whole and keyed by parameter name, read with
    DeepSpeed's ``safe_get_full_optimizer_state`` (collective under ZeRO-3): tensors and
    numbers only, so that ``torch.load(weights_only=True)`` reads it, and any number of
    processes can load it back. ZeRO's own ``state_dict`` pickles objects and holds this
    process's partition alone."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = zero.optimizer.state  # the torch optimizer's, over ZeRO's flat fp32 partitions
    first = next(iter(inner.values()), {})
    keys = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
    step = first.get("step", 0)
    moments, keep = {}, _first_process()  # every process gathers; the first one keeps them
    for name, param in model.named_parameters():
        if param.requires_grad:
            got = {k: safe_get_full_optimizer_state(param, k) for k in keys}
            if keep:
                moments[name] = {k: v.detach().cpu().clone() for k, v in got.items()
                                 if v is not None}  # fmt: skip
    return {"zero": moments, "step": float(step)}


def _materialise_state(zero) -> None:
    """Give a ZeRO optimizer that has not stepped yet its state, for a checkpoint's moments to
    be written into: torch's AdamW makes it at its first step, so it takes one over ZeRO's
    flat fp32 partitions with zero gradients at a learning rate of 0 (no weight changes; the
    step count is the checkpoint's after), and ZeRO 1/2 links each weight's share of it.
    ZeRO-3 hands its torch optimizer one partition at a time, as here."""
    inner = zero.optimizer
    if any(inner.state.values()):
        return
    if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3: (group, partition) pairs
        pairs = [(inner.param_groups[zero.sub_group_to_group_id[i]], [flat])
                 for i, flat in enumerate(zero.fp32_partitioned_groups_flat)]  # fmt: skip
    else:
        pairs = [(group, group["params"]) for group in inner.param_groups]
    for group, flats in pairs:
        held, rate = group["params"], group["lr"]
        buffers = [flat.grad for flat in flats]  # with optimizer offload, ZeRO's own buffers
        group["params"], group["lr"] = flats, 0.0
        for flat in flats:
            flat.grad = torch.zeros_like(flat)
        try:
            inner.step()
        finally:
            for flat, buffer in zip(flats, buffers, strict=True):
                flat.grad = buffer
            group["params"], group["lr"] = held, rate
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2: links fragments
        zero._lazy_init_hp_params_optimizer_state()


def _set_full(param, value: torch.Tensor, key: str | None = None) -> None:
    """Write a whole weight's fp32 master copy (``key`` None) or optimizer state into a ZeRO
    optimizer. ZeRO-3 takes this process's share of the flat weight, padded at its end as
    ZeRO-3 pads partitions (DeepSpeed's full setter reads past the end of a weight whose
    size does not divide by the processes); ZeRO 1/2 map it themselves."""
    from deepspeed import utils as ds

    value = value.to(param.device)
    if not hasattr(param, "ds_id"):
        if key is None:
            ds.safe_set_full_fp32_param(param, value)
        else:
            ds.safe_set_full_optimizer_state(param, value, key)
        return
    share = param.ds_tensor.numel()
    rank = 0
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank(group=getattr(param, "ds_process_group", None))
    piece = value.flatten().float()[share * rank : share * (rank + 1)]
    local = piece.new_zeros(share)  # the last process's share ends in padding
    local[: piece.numel()] = piece
    if key is None:
        ds.safe_set_local_fp32_param(param, local)
    else:
        ds.safe_set_local_optimizer_state(param, local, key)


def _load_zero_state(model, zero, state: dict[str, Any]) -> None:
    if "zero" not in state:
        raise ValueError("its optimizer state was written without DeepSpeed: resume it without "
                         "DeepSpeed (or set resume_from_checkpoint to false)")  # fmt: skip
    params = dict(model.named_parameters())
    if missing := [name for name in state["zero"] if name not in params]:
        raise ValueError(f"the checkpoint's optimizer state has {missing[0]!r}, which the "
                         "model has not")  # fmt: skip
    _materialise_state(zero)
    for name, moments in state["zero"].items():
        for key, value in moments.items():
            _set_full(params[name], value, key)
    for per_partition in zero.optimizer.state.values():
        if "step" in per_partition:
            old = per_partition["step"]
            per_partition["step"] = torch.as_tensor(state["step"], dtype=old.dtype) if \
                torch.is_tensor(old) else type(old)(state["step"])  # fmt: skip


def sync_master_weights(model, optimizer) -> None:
    """After weights were loaded into ``model``: a DeepSpeed ZeRO optimizer's fp32 master copy
    of each weight takes them (``safe_set_full_fp32_param``), else its next step would start
    from the weights it held. No-op for other optimizers."""
    if zero_optimizer(optimizer) is None:
        return
    with full_parameters(model):  # read whole (ZeRO-3)
        for param in model.parameters():
            if param.requires_grad:
                _set_full(param, param.detach().float().clone())


def full_optimizer_state(model, optimizer) -> dict[str, Any] | None:
    """The optimizer's state, whole (FSDP2 and DeepSpeed: gathered and keyed by parameter
    name, so any world size can load it back); an unsharded optimizer's own ``state_dict``.
    None, with a warning, for FSDP1: its checkpoints then hold no optimizer state."""
    if (zero := zero_optimizer(optimizer)) is not None:
        return _zero_state(model, zero)
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
            "restarts AdamW's moments); FSDP2 (configs/accelerate/fsdp.yaml) and DeepSpeed "
            "save it",
            kind,
        )
        return None
    return optimizer.state_dict()


def load_full_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    """Load what ``full_optimizer_state`` wrote. Across engines only ZeRO's stages read
    each other's: a DeepSpeed checkpoint resumes under DeepSpeed, another one without it."""
    if (zero := zero_optimizer(optimizer)) is not None:
        _load_zero_state(model, zero, state)
        return
    if "zero" in state:
        raise ValueError("its optimizer state was written under DeepSpeed: resume it under "
                         "DeepSpeed, with the accelerate config it ran with")  # fmt: skip
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
