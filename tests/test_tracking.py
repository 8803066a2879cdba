"""Trackers: report_to resolution, every hyperparameter logged, run names; the quiet console;
progress bars that tqdm's environment variables still govern."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import pytest
import yaml
from accelerate import Accelerator

from distalign.models.load import set_tf32
from distalign.tracking import (
    end_run,
    flat_hparams,
    progress_bar,
    quiet_libraries,
    resolve_report_to,
    start_tracking,
)


@dataclass
class Inner:
    temperature: float = 0.7
    stop: list[str] = field(default_factory=lambda: ["<|im_end|>"])


@dataclass
class Config:
    learning_rate: float = 1e-5
    use_peft: bool = True
    run_name: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    sampling: Inner = field(default_factory=Inner)
    rewards: dict[str, str] = field(default_factory=lambda: {"scalar": "runs/rm"})


def test_report_to_names():
    assert resolve_report_to("tensorboard") == ["tensorboard"]
    assert resolve_report_to(["tensorboard", "tensorboard"]) == ["tensorboard"]
    assert resolve_report_to("none") == resolve_report_to([]) == []
    assert resolve_report_to("all") == ["tensorboard"]  # the only one installed here
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        resolve_report_to("tensorbord")
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        resolve_report_to(["none", "tensorboard"])


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow", "tensorboard"])
def test_a_missing_tracker_package_is_an_error_naming_it(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # find_spec: not installed
    with pytest.raises(ValueError, match=rf"pip install {name}\b"):
        resolve_report_to(["tensorboard", name] if name != "tensorboard" else name)
    if name == "tensorboard":
        assert resolve_report_to("all") == []


def test_every_hyperparameter_flattened_to_scalars():
    assert flat_hparams(Config()) == {
        "learning_rate": 1e-5,
        "use_peft": True,
        "run_name": "None",
        "report_to": "['tensorboard']",
        "sampling.temperature": 0.7,
        "sampling.stop": "['<|im_end|>']",
        "rewards.scalar": "runs/rm",
    }
    from transformers import SchedulerType

    shown = flat_hparams({"lr_scheduler_type": SchedulerType.COSINE})["lr_scheduler_type"]
    assert type(shown) is str and shown == "cosine"


def _hparams(folder) -> dict:
    (file,) = folder.glob("*/hparams.yml")  # accelerate writes them beside the events
    return yaml.safe_load(file.read_text())


@pytest.mark.parametrize("run_name", [None, "lr1e-5"])
def test_tensorboard_run_folder_and_hparams(tmp_path, run_name):
    accelerator = Accelerator(log_with=resolve_report_to("tensorboard"), project_dir=tmp_path)
    start_tracking(accelerator, "rm", run_name, Config())
    accelerator.log({"train/loss": 0.5}, step=1)
    accelerator.end_training()
    run_dir = tmp_path / "rm" / run_name if run_name else tmp_path / "rm"
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert _hparams(run_dir) == flat_hparams(Config())


def test_no_tracker_starts_nothing(tmp_path):
    accelerator = Accelerator(log_with=resolve_report_to("none") or None, project_dir=tmp_path)
    start_tracking(accelerator, "rm", "run", Config())
    assert accelerator.trackers == [] and not any(tmp_path.iterdir())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture()
def restore_library_logging():
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers

    levels = {
        n: logging.getLogger(n).level for n in ("accelerate", "peft", "sentence_transformers")
    }
    tf, ds = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    ds_bars = datasets.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    yield
    transformers.logging.set_verbosity(tf)
    transformers.logging.enable_progress_bar()
    datasets.logging.set_verbosity(ds)
    if ds_bars:
        datasets.enable_progress_bars()
    if not hub_bars:
        hub_utils.disable_progress_bars()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_quiet_libraries_model_loads_print_no_table(
    tiny_model_dir, capfd, caplog, restore_library_logging, monkeypatch
):
    import huggingface_hub.utils as hub_utils

    from distalign.models.lora import add_lora
    from distalign.models.reward_model import build_reward_model

    for var in (
        "TRANSFORMERS_VERBOSITY",
        "DATASETS_VERBOSITY",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
    ):
        monkeypatch.delenv(var, raising=False)
    hub_bars = not hub_utils.are_progress_bars_disabled()
    quiet_libraries()
    assert (not hub_utils.are_progress_bars_disabled()) == hub_bars  # downloads keep theirs
    capfd.readouterr()
    reports = _Records()  # transformers' logger does not propagate to pytest's handlers
    logging.getLogger("transformers").addHandler(reports)
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.filterwarnings("ignore", module="torch")  # only what the libraries raise
            model, _ = build_reward_model(str(tiny_model_dir))
            add_lora(model, "SEQ_CLS", r=4, alpha=8, dropout=0.0)
    finally:
        logging.getLogger("transformers").removeHandler(reports)
    assert not [r for r in reports.records if "LOAD REPORT" in r.getMessage()]
    assert "Loading weights" not in capfd.readouterr().err  # the progress bar
    assert not caplog.records  # the new score head is expected: not reported as missing
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    # DeepSpeed's import-time notice that it found no GPU (accelerate imports it in every
    # run where it is installed); its other warnings stay
    deepspeed_log = logging.getLogger("DeepSpeed")
    notice = deepspeed_log.makeRecord(
        "DeepSpeed",
        logging.WARNING,
        "f",
        1,
        "Setting accelerator to CPU. If you have GPU ...",
        (),
        None,
    )
    other = deepspeed_log.makeRecord("DeepSpeed", logging.WARNING, "f", 1, "a real one", (), None)
    assert not deepspeed_log.filter(notice) and deepspeed_log.filter(other)


def test_end_run_waits_for_every_process_before_the_group_goes():
    calls = []

    class Recorder:
        def wait_for_everyone(self):
            calls.append("barrier")

        def end_training(self):  # trackers, then destroy_process_group
            calls.append("end")

    end_run(Recorder())
    assert calls == ["barrier", "end"]


def test_tf32_key_sets_torch_and_unset_leaves_it():
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)  # torch's flags are global: put them back
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        set_tf32(None)
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        set_tf32(True)
        assert matmul.allow_tf32 and cudnn.allow_tf32
        set_tf32(False)
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_progress_bar_hidden_where_not_shown():
    assert progress_bar(range(3), show=False).disable  # shown: the test below, without TQDM_*


@pytest.mark.parametrize(("env", "hidden"), [("1", True), (None, False)])
def test_progress_bar_follows_tqdm_disable(env, hidden):
    """TQDM_DISABLE=1 hides the training bars (gpu_check.sh sets it for its logs); tqdm reads
    it when imported, so a fresh interpreter checks it."""
    code = (
        "import os; from distalign.tracking import progress_bar; "
        "b = progress_bar(total=3, show=True, file=open(os.devnull, 'w')); print(b.disable)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if env is not None:
        environ["TQDM_DISABLE"] = env
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == str(hidden)


def test_launched_processes_that_accelerate_runs_apart_are_refused(monkeypatch, caplog):
    """torchrun on a machine without GPUs: accelerate runs each process alone, and they would
    train side by side into one output_dir."""
    from types import SimpleNamespace

    from distalign.config import ConfigError
    from distalign.tracking import _check_processes

    alone = SimpleNamespace(num_processes=1, distributed_type="NO", device="cpu",
                            is_main_process=True, mixed_precision="no")  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=true torchrun"):
        _check_processes(alone)
    # a DeepSpeed config on CPUs: accelerate starts DeepSpeed's engine for one process only
    zero = SimpleNamespace(**{**vars(alone), "distributed_type": "DistributedType.DEEPSPEED"})
    with pytest.raises(ConfigError, match=r"DeepSpeed on CPUs in one process only.*ddp\.yaml"):
        _check_processes(zero)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with caplog.at_level(logging.INFO, logger="distalign.tracking"):
        _check_processes(alone)
    assert "training on 1 process(es), cpu (NO), mixed precision no" in caplog.text
    # an FSDP or DeepSpeed config that accelerate does not apply (CPU processes): refused
    # rather than run unsharded, or crash on the weights' meta tensors
    from accelerate.utils import DistributedType

    two = SimpleNamespace(**{**vars(alone), "num_processes": 2,
                             "distributed_type": DistributedType.MULTI_CPU})  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.setenv(flag, "true")
        with pytest.raises(
            ConfigError,
            match=f"asks for .* \\({flag}\\), but accelerate runs "
            "MULTI_CPU here.*configs/accelerate/ddp.yaml",
        ):
            _check_processes(two)
        monkeypatch.delenv(flag)
    _check_processes(two)
    # accelerate's one-process launcher, asked for more: MASTER_ADDR without WORLD_SIZE
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    asked = "one process trains, though the launcher was asked for more"
    with caplog.at_level(logging.WARNING, logger="distalign.tracking"):
        caplog.clear()
        _check_processes(alone)  # a cluster job's own MASTER_ADDR, a plain process: no launch
        assert asked not in caplog.text
        monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what accelerate launch exports
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
        _check_processes(alone)
    assert asked in caplog.text


def test_the_runs_accumulation_wins_over_the_launchers(tiny_model_dir, tmp_path, monkeypatch):
    """`accelerate launch` exports ACCELERATE_GRADIENT_ACCUMULATION_STEPS (its option, or a
    DeepSpeed config's): the run's gradient_accumulation_steps decides, as in transformers."""
    from distalign.rm.train import run
    from tests.conftest import write_jsonl
    from tests.rm.test_train import config, make_pairs

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(32, seed=0))
    write_jsonl(data / "test.jsonl", make_pairs(4, seed=1))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    run(config(tiny_model_dir, data, tmp_path, per_device_train_batch_size=4,
               gradient_accumulation_steps=4, max_steps=-1, num_train_epochs=1))  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/pairs_seen"] for r in rows if "train/pairs_seen" in r] == [16, 32]


def test_json_safe_writes_nan_as_null():
    import json
    import math

    from distalign.tracking import json_safe

    value = {"p": float("nan"), "ci": (float("nan"), 0.5), "n": [1, {"x": math.inf}], "s": "a"}
    assert json.loads(json.dumps(json_safe(value), allow_nan=False)) == {
        "p": None, "ci": [None, 0.5], "n": [1, {"x": None}], "s": "a"}  # fmt: skip


def test_a_run_stopped_by_an_error_closes_its_trackers(tiny_model_dir, tmp_path, monkeypatch):
    """A notebook's failed run leaves no TensorBoard writer thread behind."""
    import threading

    import distalign.rm.train as rm_train
    from distalign import tracking
    from tests.conftest import write_jsonl
    from tests.rm.test_train import config, make_pairs

    def writers() -> int:
        return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())

    def fails(*args, **kwargs):
        raise RuntimeError("the evaluation broke")

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(8, seed=0))
    write_jsonl(data / "test.jsonl", make_pairs(4, seed=1))
    before = writers()
    monkeypatch.setattr(rm_train, "held_out_metrics", fails)
    with pytest.raises(RuntimeError, match="the evaluation broke"):
        rm_train.run(config(tiny_model_dir, data, tmp_path, max_steps=1,
                            report_to="tensorboard"))  # fmt: skip
    assert tracking._OPEN == [] and writers() == before


def test_a_deepspeed_config_takes_the_runs_batch_accumulation_and_clipping(caplog):
    """As transformers' Trainer fills a DeepSpeed config: "auto" (or absent) becomes the run's
    value, and a config file's other number gives way to the run's, with a warning."""
    from types import SimpleNamespace

    from distalign.tracking import _fill_deepspeed

    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 0.3}
    plugin = SimpleNamespace(deepspeed_config=ds)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin),
                                  num_processes=4, is_main_process=True)  # fmt: skip
    cfg = SimpleNamespace(per_device_train_batch_size=8, max_grad_norm=1.0)
    with caplog.at_level(logging.WARNING, logger="distalign.tracking"):
        _fill_deepspeed(accelerator, cfg, 2)
    assert ds == {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
                  "train_batch_size": 64, "gradient_clipping": 1.0}  # fmt: skip
    assert "gradient_clipping 0.3 gives way to the run's 1.0" in caplog.text
    assert "train_micro_batch_size_per_gpu" not in caplog.text  # "auto" is no other number
    _fill_deepspeed(accelerator, SimpleNamespace(per_device_train_batch_size=8,
                                                 max_grad_norm=None), 2)  # fmt: skip
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"
    from distalign.config import ConfigError

    ds["scheduler"] = {"type": "WarmupLR"}  # a DeepSpeed JSON's own: it would step twice
    with pytest.raises(ConfigError, match="sets its own scheduler: distalign builds AdamW"):
        _fill_deepspeed(accelerator, cfg, 2)
    # rl train: its own accumulation by hand, DeepSpeed's 1, and a file's 4 said to give way
    ds.pop("scheduler")
    ds.update(gradient_accumulation_steps=4, zero_optimization={"compute_grad_norm": False})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distalign.tracking"):
        rl = SimpleNamespace(per_device_train_batch_size=8, max_grad_norm=1.0,
                             gradient_accumulation_steps=2)  # fmt: skip
        _fill_deepspeed(accelerator, rl, 1)
    assert ds["gradient_accumulation_steps"] == 1 and ds["train_batch_size"] == 32
    assert "gradient_accumulation_steps 4 gives way to the run's 2" in caplog.text
    assert ds["zero_optimization"]["compute_grad_norm"] is True
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distalign.tracking"):
        ds["gradient_accumulation_steps"] = 2  # what the run asks: nothing to say
        _fill_deepspeed(accelerator, rl, 1)
    assert "gradient_accumulation_steps" not in caplog.text
