"""Atomic training checkpoints and exact resume.

A checkpoint folder holds the model (``save_pretrained``: full weights or the LoRA adapter,
safetensors), the tokenizer, ``optimizer.pt`` / ``scheduler.pt`` (state dicts, read back with
``torch.load(weights_only=True)``: tensors and numbers only, no arbitrary pickles), and
``trainer_state.json`` (the training loop's state, e.g. step and position in the data, and the
Python, NumPy, torch and CUDA RNG states).

It is written to ``<name>.tmp`` and renamed over ``<name>`` at the end, so a crash while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from distalign.distributed import (
    all_finite,
    full_optimizer_state,
    load_full_optimizer_state,
    load_full_state_dict,
    sharding,
    sync_master_weights,
    zero_optimizer,
)

log = logging.getLogger(__name__)

# the run's settings as a checkpoint was written under, beside its state (a run's own
# config.yaml is rewritten when it resumes)
RUN_CONFIG = "run_config.yaml"


def rng_state() -> dict[str, Any]:
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state().tolist(),
    }
    # this process's own GPU only, and only once CUDA is in use: asking for every device's
    # state would start a context on each GPU of the node from every process (and on a CPU run
    # of a GPU machine, start CUDA at all)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if isinstance(cuda[0], list):  # written before: one state per device of the node
            if not torch.cuda.is_initialized():  # a CPU run: CUDA is not to be started for it
                return
            here = torch.cuda.current_device()
            cuda = cuda[here] if here < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(torch.tensor(cuda, dtype=torch.uint8))


def resolve_resume(path: str | Path) -> Path:
    """The checkpoint to resume from: ``path``, or its ``.old`` copy when a crash interrupted
    the swap. Asking to resume without any is an error, never a silent fresh start."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "trainer_state.json").is_file():
            return candidate
    if path.is_dir() and any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise CheckpointError(
            f"resume_from_checkpoint: {path} holds a model only (no trainer_state.json); a run "
            "resumes from its output_dir/checkpoints/last (resume_from_checkpoint=true)"
        )
    raise CheckpointError(
        f"resume_from_checkpoint: there is no checkpoint at {path} (a run's resumable checkpoint "
        "is output_dir/checkpoints/last; without resume_from_checkpoint the run starts afresh)"
    )


# what a training run writes into its output_dir that a second run there would mix with
RUN_LOGS = ("metrics.jsonl", "history.jsonl", "summary.json")
RUN_MODELS = ("checkpoints", "final", "final_merged")


def run_folder(model_dir: str | Path) -> str | None:
    """The training run a model folder belongs to: the folder itself when it is a run's
    output_dir, else the run holding it as its ``final/`` or ``checkpoints/step_N``; a run's
    folder has its ``config.yaml`` or ``metrics.jsonl``. None when none of them is a run's."""
    folder = Path(model_dir)
    # only folders the name itself spells: a hub id ("gpt2", "org/model") is never taken for
    # a run of the working folder's
    runs = [p for p in (folder, folder.parent, folder.parent.parent) if p != Path(".")]
    marks = ("config.yaml", "metrics.jsonl")
    return next((str(p) for p in runs if any((p / m).is_file() for m in marks)), None)


def prepare_output_dir(
    out: str | Path,
    resume: str | None,
    overwrite: bool,
    inputs: Sequence[str] = (),
    tracker_dirs: Sequence[str] = (),
) -> None:
    """Before a fresh run (``resume`` None) writes into ``out``, where an earlier run's logs,
    checkpoints and final model would mix with the new run's, they are moved aside into
    ``out/replaced/<time>/`` with its ``config.yaml`` and tracker folders (``tracker_dirs``,
    relative to ``out``); nothing is deleted.

    - Logs of a run that saved nothing (no checkpoint: it stopped early) move without asking.
    - An earlier run with checkpoints or a final model moves only with ``overwrite``
      (transformers' ``overwrite_output_dir``); without it the run is refused.
    - An input of the run (``inputs``: a model, reward model or data file; ``out`` itself
      stands for its ``final/``) among what would move is refused.

    A resumed run keeps everything (resuming cuts the logs back to its checkpoint). Only the
    first process moves anything."""
    out = Path(out)
    if resume or not out.is_dir():
        return
    found = [out / name for name in (*RUN_MODELS, *RUN_LOGS) if (out / name).exists()]
    if not found:
        return
    from distalign.config import ConfigError

    named = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
    saved = any(p.name in RUN_MODELS for p in found)
    if saved and not overwrite:
        raise ConfigError(
            f"output_dir {out} holds an earlier run ({named}), whose logs and checkpoints this "
            "run would mix with: resume it (resume_from_checkpoint=true), give another "
            "output_dir, or overwrite_output_dir=true to move them aside (to "
            f"{out / 'replaced'})"
        )
    inside = out.resolve()
    extra = [out / n for n in ("config.yaml", *tracker_dirs)
             if n and (out / n).exists() and inside in (out / n).resolve().parents]  # fmt: skip
    moving = [p.resolve() for p in [*found, *extra]]
    for spec in inputs:
        path = Path(spec).expanduser().resolve()
        path = path / "final" if path == out.resolve() else path  # a run stands for its final/
        if any(path == m or m in path.parents for m in moving):
            raise ConfigError(
                f"{spec} is an input of this run and lies in the earlier run in {out}, which "
                "would move aside: copy it elsewhere, or give another output_dir"
            )
    if os.environ.get("RANK", "0") == "0":  # one shared output_dir: the first process moves
        target = _new_folder(out / "replaced", time.strftime("%Y%m%d-%H%M%S"))
        for path in [*found, *extra]:
            path.rename(target / path.name)
        log.warning("output_dir %s: the earlier run's %s moved to %s", out, named, target)


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-1``, ``name-2``, … when it exists: always a new folder."""
    for n in range(10_000):
        folder = parent / (name if n == 0 else f"{name}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise CheckpointError(f"{parent}: no free folder name for {name}")


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row with a non-finite loss or gradient: the run stops
    (its last checkpoint still holds finite weights)."""


class CheckpointError(OSError):
    """A checkpoint that could not be written or read; the message says which and why."""


def optimizer_to_save(model, optimizer, weights: dict | None, keep: bool) -> tuple[Any, Any]:
    """``save_checkpoint``'s (optimizer, optimizer_state): with ``keep`` false
    (``save_only_model``) neither; for a sharded model (``weights`` gathered) its state
    gathered too (a collective: every process calls this), else the optimizer, for
    ``save_checkpoint`` to read."""
    if not keep:
        return None, None
    if weights is None and zero_optimizer(optimizer) is None:
        return optimizer, None
    return optimizer, full_optimizer_state(model, optimizer)


def save_checkpoint(
    path: str | Path,
    model,
    tokenizer,
    optimizer,
    scheduler,
    state: dict[str, Any],
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint atomically, with ``files`` (name -> text) beside the model.
    ``model`` is the unwrapped (PEFT or HF) model; a sharded model's weights and optimizer
    state come gathered as ``model_state`` / ``optimizer_state`` (``distalign.distributed``),
    else they are read from ``model`` and ``optimizer``.

    Everything goes to ``<name>.tmp`` first; only a complete folder replaces ``<name>``. A
    full disk or a read-only folder is a ``CheckpointError`` that says the previous
    checkpoint is intact, and weights that are no longer finite are refused the same way.
    """
    path = Path(path)
    if not all_finite(model_state, model):
        raise CheckpointError(
            f"not writing {path}: the weights are not finite (the previous checkpoint is intact)"
        )
    try:
        with whole_folder(path) as tmp:
            model.save_pretrained(tmp, state_dict=model_state, safe_serialization=True)
            # PEFT writes an empty template card ("[More Information Needed]") beside an
            # adapter; a checkpoint is not a model to publish, so it goes
            (tmp / "README.md").unlink(missing_ok=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if optimizer_state is None and model_state is None and optimizer is not None:
                # an unsharded model's (DeepSpeed's comes gathered): read it here
                optimizer_state = optimizer.state_dict()
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            for name, content in (files or {}).items():
                (tmp / name).write_text(content, encoding="utf-8")
            text = json.dumps({**state, "rng": rng_state()}, indent=1)
            (tmp / "trainer_state.json").write_text(text, encoding="utf-8")
            settings = path.parent.parent / "config.yaml"  # output_dir/checkpoints/<name>
            if settings.is_file():
                shutil.copyfile(settings, tmp / RUN_CONFIG)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason} (the previous checkpoint is intact)"
        ) from e
    return path


def write_state(path: str | Path, state: dict[str, Any]) -> None:
    """Put ``state`` in the checkpoint at ``path`` in place of the one it was saved with (its
    random state kept): one file, replaced whole."""
    file = Path(path) / "trainer_state.json"
    try:
        rng = json.loads(file.read_text(encoding="utf-8"))["rng"]
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(json.dumps({**state, "rng": rng}, indent=1), encoding="utf-8")
        os.replace(tmp, file)
    except OSError as e:
        raise CheckpointError(f"could not update {file}: {e.strerror or e}") from e


@contextlib.contextmanager
def whole_folder(path: Path) -> Iterator[Path]:
    """The folder to write ``path``'s content into (``<name>.tmp``), put in the place of
    ``path`` (``swap_in``) only when the block ends without an error: a stop or a full disk
    leaves the previous one, and nothing half-written."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a write that was stopped
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, path)


def swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` in the place of ``path``: the old one moves to
    ``<name>.old`` first and goes once the new one is there, so a kill leaves one whole."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():  # a run stopped while removing it: ``path`` is whole, ``old`` stale
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def step_folder(run_dir: str | Path, step: int) -> Path:
    """Where an RL run keeps the policy of ``step`` (``checkpoints/step_N``)."""
    return Path(run_dir) / "checkpoints" / f"step_{step:05d}"


def kept_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of the policies an RL run kept, in step order: ``checkpoints/step_N``
    folders that hold weights. Another name (a save's ``.tmp`` or ``.old`` copy) is not one;
    a folder without weights (left by a kill, before saves were atomic) is passed over, with a
    warning."""
    out = []
    for folder in Path(run_dir).glob("checkpoints/step_*"):
        number = folder.name.removeprefix("step_")
        if not (folder.is_dir() and number.isdigit()):
            continue
        if not holds_weights(folder):
            log.warning("%s holds no weights (a save that was stopped): passed over", folder)
            continue
        out.append((int(number), folder))
    return sorted(out)


def holds_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a model's or an adapter's safetensors weights."""
    return (folder / "adapter_model.safetensors").is_file() or any(
        folder.glob("model*.safetensors")
    )


def load_model_weights(model, path: str | Path) -> None:
    """Load weights saved by ``save_pretrained`` into ``model`` in place (full or LoRA)."""
    path = Path(path)
    adapter = path / "adapter_model.safetensors"
    if adapter.is_file():
        if sharding(model) != "none":  # the adapter file's keys lack the adapter's name
            saved = _reading(adapter, load_file)
            names = {_adapter_key(k, model): k for k in model.state_dict()}
            load_full_state_dict(model, {names[k]: v for k, v in saved.items() if k in names})
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, _reading(adapter, load_file))
        missing = [k for k in result.missing_keys if "lora_" in k]  # the base's are not saved
        if result.unexpected_keys or missing:  # PEFT loads what fits and says nothing
            raise RuntimeError(
                f"{path}: the adapter does not fit the model (missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
        return
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no safetensors weights to resume from")
    state = {}
    for f in files:
        state.update(_reading(f, load_file))
    if sharding(model) != "none":
        load_full_state_dict(model, state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )


def _adapter_key(key: str, model) -> str:
    """A PEFT model's parameter name as ``save_pretrained`` writes it (no adapter name)."""
    for name in getattr(model, "peft_config", {}):
        key = key.replace(f".{name}.", ".")
    return key


def _load_tensors(file: Path) -> Any:
    """A state dict saved by ``torch.save``, read without unpickling arbitrary objects: a file
    that holds anything but tensors, numbers and containers is refused."""
    try:
        # mapped, not read: every process of a sharded run reads the whole file, and the
        # pages are shared between them rather than copied into each (AdamW's moments are
        # twice the weights)
        return _reading(file, lambda f: torch.load(f, weights_only=True, mmap=True))
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{file}: refusing to unpickle objects other than tensors ({first})"
        ) from None


def _lambda_lr(scheduler):
    """The ``LambdaLR`` inside ``scheduler`` (accelerate wraps it), or None."""
    inner = getattr(scheduler, "scheduler", scheduler)
    return inner if isinstance(inner, torch.optim.lr_scheduler.LambdaLR) else None


def follow_schedule(optimizer, scheduler, peaks: list[float] | None = None) -> None:
    """Set the optimizer's learning rates to this run's schedule at the restored step.

    The saved optimizer carries the rate the saved run's schedule gave its next step; a run
    resumed with another horizon (``max_steps``, epochs) or peak (``learning_rate``) would take
    that step at the old rate (at the old last step: 0). A ``LambdaLR``'s state keeps the step,
    not the lambdas, so the new schedule's rate is ``base_lr · λ(step)`` (``peaks``: this
    run's ``base_lrs``, which loading the saved state replaced); for an unchanged schedule it
    is the same float.
    The step counts scheduler steps, so a run resumed on another number of processes than it
    was saved with lands elsewhere on an RM schedule (counted in process-steps).
    """
    inner = _lambda_lr(scheduler)
    if inner is None:
        return
    if peaks:
        inner.base_lrs = list(peaks)
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["initial_lr"] = peak
    rates = [
        base * fn(inner.last_epoch)
        for base, fn in zip(inner.base_lrs, inner.lr_lambdas, strict=True)
    ]
    saved = [g["lr"] for g in optimizer.param_groups]
    if rates != saved:
        log.info(
            "learning rate %.3g at the restored step (the saved run's: %.3g): the schedule "
            "follows this run's settings",
            rates[0],
            saved[0],
        )
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    inner._last_lr = rates


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from a checkpoint; return its state."""
    path = Path(path)
    state = _reading(path / "trainer_state.json", lambda f: json.loads(f.read_text()))
    moments = optimizer is not None and (path / "optimizer.pt").is_file()
    try:
        load_model_weights(model, path)
        if optimizer is not None:
            sync_master_weights(model, optimizer)  # DeepSpeed's fp32 copies
        if moments:
            # this run's AdamW settings, as its learning rate (follow_schedule), not the
            # checkpoint's: a changed adam_beta2 or weight_decay takes effect, as it is said to
            settings = [{k: g[k] for k in _OWN_SETTINGS if k in g} for g in optimizer.param_groups]
            load_full_optimizer_state(model, optimizer, _load_tensors(path / "optimizer.pt"))
            for group, own in zip(optimizer.param_groups, settings, strict=True):
                group.update(own)
    except (RuntimeError, ValueError, KeyError) as e:  # another model, LoRA rank, target set
        lines = [line.strip() for line in str(e).splitlines() if line.strip()][:2]
        reason = " ".join(lines)[:300] or type(e).__name__
        saved = path / RUN_CONFIG
        settings = saved if saved.is_file() else "the run's first config.yaml"
        raise CheckpointError(
            f"{path} does not fit this run's model or optimizer ({reason}): resume with the "
            f"settings it was written under ({settings}: the model, use_peft, lora_r, "
            "lora_target_modules, the head)"
        ) from e
    if optimizer is not None and not moments:
        log.warning("%s holds no optimizer state: AdamW's moments start from zero", path)
    if scheduler is not None and (path / "scheduler.pt").is_file():
        inner = _lambda_lr(scheduler)
        peaks = list(inner.base_lrs) if inner is not None else None  # this run's rate(s)
        scheduler.load_state_dict(_load_tensors(path / "scheduler.pt"))
        if optimizer is not None:
            follow_schedule(optimizer, scheduler, peaks)
    elif scheduler is not None:
        log.warning("%s holds no scheduler state: the learning-rate schedule starts again "
                    "(warm-up included) at step %s", path, state.get("step"))  # fmt: skip
    set_rng_state(state.pop("rng"))
    return state


# AdamW's, besides the learning rate; and its kernel (fused where the run is not sharded)
_OWN_SETTINGS = ("betas", "eps", "weight_decay", "fused", "foreach")


def _reading(file: Path, load: Callable[[Path], Any]) -> Any:
    """``load(file)``; a file cut short (a full disk, a copy stopped) is a CheckpointError that
    names it, not the error of another model's weights."""
    from safetensors import SafetensorError

    try:
        return load(file)
    except Exception as e:
        text = str(e)
        torn_zip = isinstance(e, RuntimeError) and ("zip archive" in text or "PytorchStreamReader"
                                                     in text)  # fmt: skip
        cut = SafetensorError | EOFError | json.JSONDecodeError | UnicodeDecodeError
        if not (torn_zip or isinstance(e, cut)):
            raise
        reason = (text.strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(
            f"{file} is damaged ({reason}): resume from another checkpoint (the folder's .old "
            "copy, if there, or an earlier one)"
        ) from e


def changed_settings(cfg: Any, checkpoint: Path) -> dict[str, tuple[Any, Any]] | None:
    """``key: (old, new)`` of each setting of ``cfg`` other than the checkpoint's (its
    ``run_config.yaml``); None where that file is missing or unreadable."""
    from distalign.config import config_dict, read_yaml

    path = Path(checkpoint) / RUN_CONFIG
    try:  # read as configs are (save_config wrote it)
        saved = read_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(saved, dict):
        return None
    skip = {"resume_from_checkpoint", "overwrite_output_dir"}
    return {
        key: (saved[key], value)
        for key, value in config_dict(cfg).items()
        if key not in skip and key in saved and saved[key] != value
    }


def say_changed_settings(cfg: Any, checkpoint: Path) -> None:
    """A resumed run whose settings differ from those the checkpoint was written under (its
    ``run_config.yaml``) says which, in one warning: the checkpoint's state goes on under the
    new ones (a longer ``max_steps`` is meant; another ``seed`` or ``beta`` may not be)."""
    if changed := changed_settings(cfg, checkpoint):
        log.warning(
            "resuming with settings other than %s: %s",
            Path(checkpoint) / RUN_CONFIG,
            "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
        )


# settings that change nothing a finished run's end computes: a relaunch that changes only
# them is the run that ended (the step count is checked on its own)
_NOT_OF_THE_END = frozenset({
    "per_device_eval_batch_size", "logging_steps", "logging_first_step", "report_to", "project",
    "run_name", "ddp_timeout", "save_steps", "save_strategy", "save_total_limit", "eval_steps",
    "save_only_model",
    "eval_strategy", "eval_on_start", "keep_checkpoints", "max_steps", "num_train_epochs",
})  # fmt: skip


def finished_summary(
    out: Path, cfg: Any, step: int, total_steps: int, main_process: bool = True
) -> dict | None:
    """The ``summary.json`` (written last) of a resumed run that had ended at its checkpoint's
    ``step`` already, every one of ``total_steps`` run, under the settings ``cfg`` gives (but
    for those that change nothing the end computes, such as logging_steps): a job relaunched
    with ``resume_from_checkpoint=true`` after its end, which need not run, log or write
    anything again.

    None otherwise; the summary of an earlier end then goes (the main process removes it), so
    a stopped end cannot leave it to a later relaunch, and where no step is left to run, the
    evaluation rows already logged at ``step`` go from ``metrics.jsonl``: the end evaluates
    there again (other held-out data, another reward), and the log keeps one evaluation per
    step, this end's."""
    from distalign.config import PYTHON_OBJECT, checkpoint_path, config_dict

    if not cfg.resume_from_checkpoint:
        return None
    path = out / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:  # written when the run was stopped: the end runs again
        summary = {}
    checkpoint = resolve_resume(checkpoint_path(cfg.resume_from_checkpoint, out))
    changed = changed_settings(cfg, checkpoint)
    # a Python object given through the API (a reward function) is saved by its type alone
    opaque = PYTHON_OBJECT in json.dumps(config_dict(cfg))
    ended_here = summary.get("steps") == step and step >= total_steps
    if ended_here and changed is not None and not opaque and set(changed) <= _NOT_OF_THE_END:
        log.info("%s: the run ended at step %d already; its outputs stand (a larger max_steps "
                 "trains on)", out, step)  # fmt: skip
        return summary
    if main_process:
        path.unlink(missing_ok=True)
        if step >= total_steps:  # no step left: the end's evaluation is of this step again
            from distalign.tracking import drop_rows

            if dropped := drop_rows(out / "metrics.jsonl", step, "eval/"):
                log.info("%s: the end evaluates step %d again, in place of %d evaluation "
                         "row(s) logged there", out, step, dropped)  # fmt: skip
    return None


def same_precision(saved: str | None, accelerator) -> str:
    """The run's mixed precision, for its checkpoints to keep; said in a warning where the
    checkpoint resumed from (``saved``; None: written before checkpoints kept it) was trained
    in another. ``accelerate launch`` can set it without the run's own bf16/fp16 keys, so the
    settings compared on resuming do not always show it."""
    now = str(accelerator.mixed_precision)
    if saved is not None and saved != now and accelerator.is_main_process:
        log.warning("the checkpoint was trained with mixed precision %s and this run computes "
                    "with %s (bf16/fp16, or the launcher's): its next steps round differently",
                    saved, now)  # fmt: skip
    return now


def resume_training(
    path: str | Path,
    model,
    optimizer,
    scheduler,
    logs: list[Path],
    main_process: bool,
    cfg: Any = None,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore a run from the checkpoint at ``path`` (or its ``.old`` copy) and cut its JSONL
    logs back to the checkpoint's step, so the steps that run again are logged once. With
    ``cfg``, settings that differ from the checkpoint's are said first. ``check(state)``
    raises where this run cannot go on from the checkpoint's state: before the logs are cut,
    so a refused resume leaves them whole."""
    from distalign.tracking import truncate_log

    path = resolve_resume(path)
    if cfg is not None and main_process:
        say_changed_settings(cfg, path)
    state = load_checkpoint(path, model, optimizer, scheduler)
    if check is not None:
        check(state)
    if main_process:
        dropped = sum(truncate_log(f, state["step"]) for f in logs)
        if dropped:
            log.info("dropped %d log rows written after step %d", dropped, state["step"])
    log.info("resumed from %s at step %d", path, state["step"])
    return state


def count_nonfinite(state: Any, finite: bool, limit: int) -> None:
    """Book one optimizer step in ``state`` (``skipped_steps``, ``nonfinite_in_a_row``): a
    non-finite one was skipped; ``limit`` of them in a row stop the run with NonFiniteError."""
    if finite:
        state.nonfinite_in_a_row = 0
        return
    state.skipped_steps += 1
    state.nonfinite_in_a_row += 1
    log.warning("step %d: non-finite loss or gradient, update skipped", state.step)
    if state.nonfinite_in_a_row >= limit:
        raise NonFiniteError(
            f"{state.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
            f"(last at step {state.step}); stopped. The last checkpoint holds finite weights: "
            "lower learning_rate, set max_grad_norm, or check the data and the reward"
        )
