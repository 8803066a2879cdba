"""Metric logging: the accelerate trackers (TensorBoard by default; wandb, trackio, MLflow) plus
a JSONL file that the report and offline tools read; process-level peak memory; the quiet
console of the CLI (``quiet_libraries``); and the progress bars of long work (``progress_bar``).

    accelerator = Accelerator(log_with=resolve_report_to(cfg.report_to) or None, project_dir=out)
    start_tracking(accelerator, cfg.project, cfg.run_name, cfg)
    MetricsLog(out / "metrics.jsonl", accelerator).write(step, {"train/loss": 0.69})
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import json
import logging
import math
import os
import resource
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

# report_to name -> (module to import, pip package that provides it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
    "mlflow": ("mlflow", "mlflow"),
}
# the keyword each tracker's init takes for the run's name (TensorBoard: a subfolder instead)
RUN_NAME_KWARG = {"wandb": "name", "trackio": "name", "mlflow": "run_name"}

log = logging.getLogger(__name__)


def peak_memory_gb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def _installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKERS[name][0]) is not None


def resolve_report_to(report_to: list[str] | str) -> list[str]:
    """The trackers to log to, as ``Accelerator(log_with=...)`` takes them (``[]``: none).

    Names as in transformers' ``report_to``: tensorboard, wandb, trackio, mlflow; ``"none"``
    for no tracker; ``"all"`` for every one of them that is installed. A named tracker whose
    package is missing is an error that says what to install, never a silent skip.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip().lower() for name in names for n in str(name).split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if "none" in names:
        raise ValueError(f"report_to: 'none' cannot be combined with trackers, got {names}")
    if "all" in names:
        return [name for name in TRACKERS if _installed(name)]
    out: list[str] = []
    for name in names:
        if name not in TRACKERS:
            choices = ", ".join([*TRACKERS, "all", "none"])
            raise ValueError(f"report_to: unknown tracker {name!r} (choose from {choices})")
        if not _installed(name):
            pip = TRACKERS[name][1]
            raise ValueError(
                f"report_to={name!r} needs the package {pip!r}: pip install {pip} "
                "(or pip install 'distalign[trackers]')"
            )
        if name not in out:
            out.append(name)
    return out


def flat_hparams(config: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Every field of a config dataclass, nested dataclasses and dicts flattened with dots
    (``sampling.temperature``). Values other than bool/int/float/str (None, lists, paths) become
    strings: TensorBoard's hparams take scalars only."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]
    else:
        items = list(config.items())
    out: dict[str, bool | int | float | str] = {}
    for name, value in items:
        key = f"{prefix}{name}"
        nested = dataclasses.is_dataclass(value) and not isinstance(value, type)
        if isinstance(value, enum.Enum):  # transformers' SchedulerType.COSINE
            value = value.value
        if nested or (isinstance(value, dict) and value):
            out.update(flat_hparams(value, key + "."))
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def start_run(cfg: Any, out: Path, **accelerator_kwargs):
    """A training run's Accelerator (mixed precision from ``cfg.bf16``/``cfg.fp16``, or what
    ``accelerate launch`` set; trackers from ``cfg.report_to``), the global seed, TF32 as
    ``cfg.tf32`` asks (deterministic kernels with ``cfg.full_determinism``), the process
    group's timeout ``cfg.ddp_timeout``, and the resolved config
    saved in ``out`` by the main process; an
    earlier run in ``out`` is refused or replaced first (``checkpoint.prepare_output_dir``).
    With ``push_to_hub``, the hub repository is created (or found) before anything else.
    Under DeepSpeed, its config takes the run's batch, accumulation and clipping
    (``_fill_deepspeed``)."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, set_seed

    from distalign.checkpoint import prepare_output_dir
    from distalign.config import mixed_precision, save_config
    from distalign.distributed import deepspeed_plugin
    from distalign.hub import HubKeys, hub_repo
    from distalign.models.load import set_tf32

    for key in ("project", "run_name"):
        _check_tracker_name(key, getattr(cfg, key, None))
    precision = mixed_precision(cfg.bf16, cfg.fp16)
    cpu = getattr(cfg, "use_cpu", False)  # the training commands' key (TRL's use_cpu)
    _forget_other_precision(precision, cpu)
    trackers = resolve_report_to(cfg.report_to)
    # the run's own accumulation, as transformers' Trainer gives it: passed as a number,
    # accelerate would take ACCELERATE_GRADIENT_ACCUMULATION_STEPS (which `accelerate launch`
    # sets from its options or a DeepSpeed config's) in its place, and a pass would see a
    # share of the pairs the schedule was not made for
    steps = accelerator_kwargs.pop("gradient_accumulation_steps", None)
    if steps is not None:
        accelerator_kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(
            num_steps=steps
        )
    accelerator = Accelerator(
        mixed_precision=precision,
        cpu=cpu,
        log_with=trackers or None,
        project_dir=str(out),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
        **accelerator_kwargs,
    )
    if deepspeed_plugin(accelerator) is not None:
        _fill_deepspeed(accelerator, cfg, steps)
    _check_processes(accelerator)  # before anything in out moves
    if isinstance(cfg, HubKeys) and accelerator.is_main_process:
        hub_repo(cfg, out)  # no login or network for push_to_hub: fails before the run
    events = [cfg.project] if "tensorboard" in trackers and getattr(cfg, "project", None) else []
    prepare_output_dir(out, cfg.resume_from_checkpoint, cfg.overwrite_output_dir, _inputs(cfg),
                       events)  # fmt: skip
    if getattr(cfg, "full_determinism", False):
        from transformers import enable_full_determinism

        enable_full_determinism(cfg.seed)  # set_seed's, and deterministic kernels
    else:
        set_seed(cfg.seed)
    set_tf32(cfg.tf32)
    if accelerator.is_main_process:
        save_config(cfg, out)
    return accelerator


def _fill_deepspeed(accelerator, cfg: Any, steps: int | None) -> None:
    """The DeepSpeed config's batch and clipping keys from the run's, as transformers' Trainer
    fills them: ``train_micro_batch_size_per_gpu`` (``per_device_train_batch_size``),
    ``gradient_accumulation_steps``, ``train_batch_size`` (their product over the processes)
    and ``gradient_clipping`` (``max_grad_norm``; DeepSpeed's engine clips inside its step,
    where ``clip_grad_norm_`` only reads the norm). A config file's other number gives way to
    the run's, with a warning: the run's schedule and the saved config were made for it."""
    from distalign.config import ConfigError
    from distalign.distributed import deepspeed_plugin

    ds = deepspeed_plugin(accelerator).deepspeed_config
    if own := [key for key in ("optimizer", "scheduler") if key in ds]:
        raise ConfigError(
            f"the DeepSpeed config sets its own {' and '.join(own)}: distalign builds AdamW "
            "and its schedule from the run's keys (learning_rate, weight_decay, adam_*, "
            "lr_scheduler_type, warmup_ratio); remove those sections and set the keys"
        )
    micro, steps = cfg.per_device_train_batch_size, steps or 1
    written = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": steps,
        "train_batch_size": micro * steps * accelerator.num_processes,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),  # 0: DeepSpeed clips nothing
    }
    # what a config file's number is compared with: the run's accumulation (rl train's is by
    # hand, DeepSpeed's own stays 1)
    runs = {**written, "gradient_accumulation_steps": getattr(cfg, "gradient_accumulation_steps",
                                                              steps)}  # fmt: skip
    for key, value in written.items():
        given = ds.get(key, "auto")
        if given not in ("auto", runs[key]) and accelerator.is_main_process:
            log.warning("the DeepSpeed config's %s %s gives way to the run's %s", key, given,
                        runs[key])  # fmt: skip
        ds[key] = value
    zero = ds.get("zero_optimization", {})
    if zero.get("compute_grad_norm") is False:  # rl train reads the norm DeepSpeed reports
        log.warning("the DeepSpeed config's compute_grad_norm false gives way to true: the "
                    "run logs the gradient norm and counts non-finite updates")  # fmt: skip
        zero["compute_grad_norm"] = True


def _check_tracker_name(key: str, name: str | None) -> None:
    """``project`` and ``run_name`` name TensorBoard's folders under the output_dir: an
    absolute path or a ``..`` would put them (and move earlier runs' logs) outside it."""
    from distalign.config import ConfigError

    if name and (Path(name).is_absolute() or ".." in Path(name).parts):
        raise ConfigError(f"{key} {name!r} names a folder under output_dir: no absolute path "
                          "or '..'")  # fmt: skip


def _check_processes(accelerator) -> None:
    """Say how many processes train; refuse launched processes that accelerate runs apart
    (torchrun on a machine without GPUs: each would train alone into the same output_dir)."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    from distalign.config import ConfigError

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        kind = str(accelerator.distributed_type)
        instead = (
            "accelerate runs DeepSpeed on CPUs in one process only: for several, use "
            "configs/accelerate/ddp.yaml"
            if kind.endswith("DEEPSPEED")
            else "on CPUs launch with ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m "
            "distalign.cli ..."
        )
        raise ConfigError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate runs each alone "
            f"({kind}), so they would train the same model side by side into one output_dir; "
            f"{instead} (docs/gpu.md)"
        )
    # accelerate's one-process launcher (which always exports ACCELERATE_USE_CPU and
    # ACCELERATE_MIXED_PRECISION) sets MASTER_ADDR, and no WORLD_SIZE, only when more processes
    # were asked for; a cluster job that exports MASTER_ADDR for a plain process is no launch
    launched = all(f"ACCELERATE_{v}" in os.environ for v in ("USE_CPU", "MIXED_PRECISION"))
    alone = launched and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ
    if accelerator.num_processes == 1 and alone:
        log.warning("one process trains, though the launcher was asked for more (MASTER_ADDR "
                    "is set): on CPUs `accelerate launch --cpu` starts one; use "
                    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N, or "
                    "torchrun (docs/gpu.md)")  # fmt: skip
    kind = getattr(accelerator.distributed_type, "value", accelerator.distributed_type)
    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        flag = f"ACCELERATE_USE_{engine.value}"  # what `accelerate launch` sets for its config
        if parse_flag_from_env(flag) and accelerator.distributed_type != engine:
            raise ConfigError(
                f"the accelerate config asks for {engine.value} ({flag}), but accelerate runs "
                f"{kind} here (it applies {engine.value} to several GPUs or other "
                "accelerators, never to CPU processes). On CPUs use "
                "configs/accelerate/ddp.yaml (docs/gpu.md)"
            )
    if accelerator.is_main_process:
        log.info("training on %d process(es), %s (%s), mixed precision %s",
                 accelerator.num_processes, accelerator.device, kind,
                 accelerator.mixed_precision)  # fmt: skip


def _inputs(cfg: Any) -> list[str]:
    """The local files and folders a run's config names (models, reward models, data), its
    output_dir aside."""
    values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "output_dir"]
    flat = [x for v in values for x in (v if isinstance(v, list | tuple) else [v])]
    from distalign.data.mixture import Mixture, mixture_sources

    # a data set mixture names its sources' paths: each entry's, and the data it reads there
    flat = [
        y
        for x in flat
        for y in (
            [p.path for p in x.parts] + [s for s, _ in mixture_sources(x.parts)]
            if isinstance(x, Mixture)
            else [x]
        )
    ]
    return [x for x in flat if isinstance(x, str) and x and Path(x).expanduser().exists()]


def _forget_other_precision(precision: str | None, cpu: bool = False) -> None:
    """In one process (a notebook, a script training an RM and then a policy), a second run
    with another mixed precision or ``use_cpu`` than the first: accelerate keeps the first
    run's state and refuses the new setting (or keeps the old one), so its state is dropped
    first. Launched runs keep theirs."""
    import torch
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:
        return
    # None: what `accelerate launch` (its environment) or accelerate's default says
    wanted = precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    state = AcceleratorState()
    other_device = (state.device.type == "cpu") != (cpu or not torch.cuda.is_available())
    if state.num_processes == 1 and (str(state.mixed_precision) != wanted or other_device):
        AcceleratorState._reset_state()


def end_run(accelerator, then: Callable[[], Any] | None = None) -> None:
    """Close the trackers and the process group once every process is done. The barrier
    first: tearing down the group while another process is still at work can hang
    (pytorch/pytorch#75097; a two-process CPU run once hung after its last output).
    ``then`` (the main process's hub upload) runs after both, so no process waits on it."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator in _OPEN:
        _OPEN.remove(accelerator)
    if then is not None:
        then()


def start_tracking(
    accelerator, project: str, run_name: str | None, config: Any, resumed_at: int = 0
) -> None:
    """Start the accelerator's trackers (main process) with every hyperparameter of ``config``.

    The run is named ``run_name`` where the tracker names runs (wandb, trackio, MLflow); for
    TensorBoard it is the subfolder ``<logging dir>/<project>/<run_name>``. Without a
    ``run_name`` the trackers pick one (TensorBoard: ``<logging dir>/<project>``).
    ``resumed_at``: the step of the checkpoint a resumed run goes on from; TensorBoard drops
    what the earlier run logged after it (``SummaryWriter``'s ``purge_step``), since those
    steps run again, as the JSONL logs are cut back.
    """
    for key, name in (("project", project), ("run_name", run_name)):
        _check_tracker_name(key, name)
    if not accelerator.is_main_process or not accelerator.log_with:
        return
    init_kwargs: dict[str, dict[str, Any]] = {}
    purge = {"purge_step": resumed_at + 1} if resumed_at else {}
    if purge:
        init_kwargs["tensorboard"] = purge
    if run_name:
        init_kwargs |= {name: {kwarg: run_name} for name, kwarg in RUN_NAME_KWARG.items()}
        from accelerate.tracking import TensorBoardTracker

        # accelerate names the TensorBoard folder after the project; the run goes beneath it
        accelerator.log_with = [
            TensorBoardTracker(os.path.join(project, run_name), accelerator.logging_dir, **purge)
            if str(tracker) == "tensorboard"
            else tracker
            for tracker in accelerator.log_with
        ]
    accelerator.init_trackers(project, config=flat_hparams(config), init_kwargs=init_kwargs)
    _OPEN.append(accelerator)


# accelerators whose trackers start_tracking opened, until end_run (or an error) closes them
_OPEN: list = []


def _finish_failed(tracker) -> None:
    """Close a tracker of a run an error stopped, marked as failed where the tracker keeps a
    run's state (wandb and MLflow would record accelerate's plain ``finish`` as a success)."""
    if tracker.name == "wandb":
        tracker.run.finish(exit_code=1)
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.end_run(status="FAILED")
    else:
        tracker.finish()


def closes_trackers_on_error(run: Callable) -> Callable:
    """``run`` (a training loop) that, stopped by an error, still closes the trackers it
    opened: in a notebook, each failed run would otherwise leave TensorBoard's writer thread
    (or an unfinished wandb run) behind for the next."""

    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except BaseException:
            while _OPEN:
                for tracker in _OPEN.pop().trackers:
                    try:
                        _finish_failed(tracker)
                    except Exception as e:  # the run's own error is the one to see
                        log.warning("could not close the %s tracker: %s", tracker.name, e)
            raise

    return wrapped


def json_safe(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, numbers) with every NaN or infinity as None: JSON has
    no NaN, and strict parsers (jq, a browser's JSON.parse) refuse Python's."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return _plain(value)  # a log row's values, as metrics.jsonl writes them


def nan_to_none(x: float) -> float | None:
    """A number for a JSON row: NaN (a value nothing gave, e.g. a reward no source scored) as
    None, which JSON has; any other number as it is."""
    return None if x != x else x


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """``write(step, metrics)`` -> the tracker and one JSON line in ``path`` (main process).

    ``add(step, metrics)`` is ``write`` every ``every`` steps (``logging_steps``), and at step 1
    with ``first`` (``logging_first_step``): it keeps the steps between and writes their means,
    except for the keys in ``current`` (a learning rate, a running total), written as they
    stand at the logged step. ``flush`` writes what is kept (the run's last steps)."""

    def __init__(self, path: str | Path, accelerator=None, every: int = 1, current=(),
                 first: bool = False):  # fmt: skip
        self.path = Path(path)
        self.accelerator = accelerator
        self.main = accelerator is None or accelerator.is_main_process
        self.every, self.current = max(1, int(every)), frozenset(current)
        self.first = first
        self.kept: list[dict[str, Any]] = []
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        metrics = {k: _plain(v) for k, v in metrics.items()}
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(
                {k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step
            )
        if self.main:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.kept.append({k: _plain(v) for k, v in metrics.items()})
        if step % self.every == 0 or (self.first and step == 1):
            self.flush(step)

    def flush(self, step: int) -> None:
        if self.kept:
            self.write(step, _window_means(self.kept, self.current))
            self.kept = []


def _window_means(rows: list[dict[str, Any]], current: frozenset) -> dict[str, Any]:
    """Per key, the mean of its numbers over ``rows`` (None where it had none), or its last
    value for keys in ``current`` and for values that are not numbers."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row[key] for row in rows if key in row]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if key in current or len(numbers) < len(values) - values.count(None):
            out[key] = values[-1]
        else:
            out[key] = sum(numbers) / len(numbers) if numbers else None
    return out


def truncate_log(path: str | Path, step: int) -> int:
    """Drop the rows of a JSONL log (``metrics.jsonl``, ``history.jsonl``) written after
    ``step``, atomically; returns how many were dropped. On resume from a checkpoint of step
    N, the steps after N run again, so without this they would be logged twice (and counted
    twice by every curve). A torn last line from a killed writer goes too."""
    return _drop(path, lambda row: row.get("step", 0) > step)


def drop_rows(path: str | Path, step: int, prefix: str) -> int:
    """Drop the rows of a JSONL log at ``step`` whose metrics all start with ``prefix`` (an
    evaluation's ``eval/`` row), atomically; returns how many were dropped."""

    def of_it(row: dict) -> bool:
        keys = [k for k in row if k != "step"]
        return row.get("step") == step and bool(keys) and all(k.startswith(prefix) for k in keys)

    return _drop(path, of_it)


def _drop(path: str | Path, drop) -> int:
    """Drop the rows of a JSONL log for which ``drop(row)`` holds, and torn lines; atomically."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and drop(row):
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log (``metrics.jsonl``); [] when there is none. A line that is not a
    JSON object (the torn last line of a writer that was killed) is skipped, with a warning
    that counts them."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn += 1
    if torn:
        log.warning("%s: %d line(s) that are not JSON objects skipped", path, torn)
    return rows


def read_run_config(folder: str | Path) -> dict[str, Any] | None:
    """The ``config.yaml`` a training run saved in ``folder``, as a dict; None when there is
    none or it is not a YAML mapping (a folder that is not a run's, or a damaged file)."""
    import yaml

    path = Path(folder) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


LIBRARIES = ("transformers", "datasets", "accelerate", "peft", "huggingface_hub")


def progress_bar(iterable=None, *, show: bool = True, **kwargs):
    """A tqdm bar (``tqdm.auto``), hidden where ``show`` is false: on every process but the
    node's first, or when the caller asked for none. Where shown, tqdm's own ``TQDM_*``
    environment variables still apply (``TQDM_DISABLE=1`` hides it, as in a log file): tqdm
    reads them as defaults, so an explicit ``disable=False`` would override them."""
    from tqdm.auto import tqdm

    if not show:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def _no_cpu_fallback_notice(record: logging.LogRecord) -> bool:
    return "Setting accelerator to CPU" not in record.getMessage()


def quiet_libraries() -> None:
    """Only what a user can act on, once at CLI start: the libraries log errors only, their
    progress bars are off (ours stay: sampling, training), and their deprecation notices —
    about their own internals, e.g. PEFT calling a deprecated transformers method — are dropped.

    Silenced that way: transformers' weights LOAD REPORT, a table logged as a warning by every
    load that misses or skips a checkpoint weight, expected ones included (a reward model's new
    ``score`` head). Real load errors still raise, and weights missing where none should be are
    logged by ``models/load.py``. ``TRANSFORMERS_VERBOSITY`` / ``DATASETS_VERBOSITY`` keep their
    say. Model downloads keep their progress bars (a long wait); datasets' map bars, our
    tokenisation's included, go.
    """
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers

    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers.logging.set_verbosity_error()
    if "DATASETS_VERBOSITY" not in os.environ:
        datasets.logging.set_verbosity_error()
    # sentence-transformers (the gold judge) also shows its encode bars at INFO level
    for name in ("accelerate", "peft", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed, where installed, says at import that it found no GPU ("Setting accelerator
    # to CPU"), and accelerate imports it to look for its engine in every run; its logger
    # sets its own level when made, so a filter (kept by that logger) drops the notice
    logging.getLogger("DeepSpeed").addFilter(_no_cpu_fallback_notice)
    hub_utils.logging.disable_propagation()  # it prints its warnings itself: not twice
    # "Loading weights" bars; transformers' switch also turns off the hub's download bars,
    # which are worth keeping, so those are switched back on when they were on
    downloads_on = not hub_utils.are_progress_bars_disabled()
    transformers.logging.disable_progress_bar()
    if downloads_on:
        hub_utils.enable_progress_bars()
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        datasets.disable_progress_bars()  # map/filter/split bars
    libraries = "|".join(LIBRARIES)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({libraries})(\.|$)")
