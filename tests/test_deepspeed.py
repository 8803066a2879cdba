"""DeepSpeed ZeRO-2 and ZeRO-3 through ``accelerate launch`` with the repository's configs, in
one CPU process: accelerate starts DeepSpeed's engine on a CPU (gloo) for a single process,
never for several (their ranks would each run alone), so this is the engine's path, not
its sharding across processes. What it shows: the engine steps once per update of
micro-batches accumulated by hand (``rl train``), clips as ``max_grad_norm`` says, loads the
trained model in shards and the frozen ones whole (ZeRO-3), gathers weights for sampling
and saving, and a checkpoint's weights and AdamW moments resume the run exactly. Each run is
checked against the same run without DeepSpeed, weight for weight."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import run_launcher, write_jsonl
from tests.rm.test_train import make_pairs

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, stage: int, json_file: bool = False) -> Path:
    """The repository's ZeRO config for one CPU process in float32; ``json_file``: with a
    DeepSpeed JSON whose sizes are "auto", as transformers' docs write one."""
    config = yaml.safe_load((REPO / f"configs/accelerate/deepspeed_zero{stage}.yaml").read_text())
    config.update(num_processes=1, mixed_precision="no")
    if json_file:
        auto = ["reduce_bucket_size", "stage3_prefetch_bucket_size",
                "stage3_param_persistence_threshold"]  # fmt: skip
        ds = {
            "zero_optimization": {"stage": stage, **dict.fromkeys(auto, "auto"),
                                  "stage3_gather_16bit_weights_on_model_save": True},
            **dict.fromkeys(["train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                             "train_batch_size", "gradient_clipping"], "auto"),
            "bf16": {"enabled": "auto"},
        }  # fmt: skip
        (tmp_path / "ds.json").write_text(json.dumps(ds))
        config.pop("mixed_precision")  # the JSON's bf16 "auto" says it (off: float32)
        config["deepspeed_config"] = {"deepspeed_config_file": str(tmp_path / "ds.json"),
                                      "zero3_init_flag": stage == 3}  # fmt: skip
    path = tmp_path / f"zero{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def distalign(*args: str, config: Path | None = None) -> str:
    """``distalign ARGS``, alone or under ``accelerate launch --config_file CONFIG``."""
    run = [sys.executable, "-m", "distalign.cli", *args]
    if config is not None:
        run = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "-m", "distalign.cli", *args]  # fmt: skip
    # DeepSpeed on the CPU (its accelerator falls back to it without a GPU); not
    # ACCELERATE_USE_CPU, under which accelerate leaves DeepSpeed out
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)
    done = run_launcher(run, env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("model*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        # float rounding (ZeRO-3 reduces gradients in its own order) moves a weight by ~2e-6;
        # one update at these learning rates moves it by ~1e-3
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("stage", "json_file"), [(2, False), (3, True)])
def test_rm_train_under_zero_matches_a_plain_run_and_resumes_exactly(
    stage, json_file, tiny_model_dir, tmp_path
):
    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(32, seed=0))
    write_jsonl(data / "test.jsonl", make_pairs(9, seed=1))
    args = [
        f"model_name_or_path={tiny_model_dir}", f"dataset_name={data}", "max_length=64",
        "max_prompt_length=32", "learning_rate=3e-3", "report_to=none",
        "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "save_steps=2",
        "max_grad_norm=0.5", "lr_scheduler_type=constant",  # 2 steps, then 3: one schedule
    ]  # fmt: skip
    # ZeRO-3 through a DeepSpeed JSON file of "auto" values, which the run's keys and the
    # model's hidden size fill
    config, zero = _config(tmp_path, stage, json_file), tmp_path / "zero"
    distalign("rm", "train", *args, "max_steps=3", f"output_dir={tmp_path / 'plain'}")
    said = distalign("rm", "train", *args, "max_steps=2", f"output_dir={zero}", config=config)
    assert "(DEEPSPEED)" in said  # the engine ran, not a plain process
    # resumed from step 2: the weights, ZeRO's fp32 copies of them and AdamW's moments
    distalign("rm", "train", *args, "max_steps=3", f"output_dir={zero}",
              "resume_from_checkpoint=true", config=config)  # fmt: skip
    assert_same_weights(tmp_path / "plain" / "final", tmp_path / "zero" / "final")
    plain, zero = metrics(tmp_path / "plain"), metrics(tmp_path / "zero")
    # the engine clipped at max_grad_norm (the norms are above it) and stepped once per update
    norms = [m["train/grad_norm"] for m in plain if "train/grad_norm" in m]
    assert norms and max(norms) > 0.5
    # the steps' rows, and the last evaluation (the first run's, at step 2, stays in the log)
    steps = [[m for m in rows if "train/loss" in m] + [rows[-1]] for rows in (plain, zero)]
    assert [m["step"] for m in steps[1]] == [1, 2, 3, 3]
    for a, b in zip(*steps, strict=True):
        for key in ("train/loss", "train/grad_norm", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.parametrize("stage", [2, 3])
def test_rl_train_under_zero_matches_a_plain_run_and_resumes_exactly(stage, tiny_model_dir,
                                                                     tmp_path):  # fmt: skip
    args = [
        f"model_name_or_path={tiny_model_dir}", "reward=tests.rl.test_train:reward_minus_length",
        "dataset_name=gold", "eval_dataset_name=gold", "max_eval_samples=4",
        # two micro-batches per update, accumulated by hand: one engine step for both
        "num_generations=4", "per_device_train_batch_size=2", "gradient_accumulation_steps=2",
        "max_completion_length=6", "use_peft=false", "learning_rate=1e-3", "max_grad_norm=1.0",
        "save_steps=2", "eval_steps=0", "report_to=none",
    ]  # fmt: skip
    config = _config(tmp_path, stage)
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    distalign("rl", "train", *args, "max_steps=3", f"output_dir={plain}")
    said = distalign("rl", "train", *args, "max_steps=2", f"output_dir={zero}", config=config)
    assert "(DEEPSPEED)" in said
    distalign("rl", "train", *args, "max_steps=3", f"output_dir={zero}",
              "resume_from_checkpoint=true", config=config)  # fmt: skip
    # the resumed run's third update took the checkpoint's AdamW moments and fp32 weights:
    # its model is the plain run's, which never stopped
    assert_same_weights(plain / "final", zero / "final")
    steps = [m for m in metrics(zero) if "train/loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    expected = [m for m in metrics(plain) if "train/loss" in m]
    norms = [m["train/grad_norm"] for m in expected]
    assert max(norms) > 1.0  # clipped, by DeepSpeed under it
    for a, b in zip(expected, steps, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4, abs=1e-6)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)


def test_a_zero3_weight_is_written_as_each_process_holds_its_padded_share(monkeypatch):
    """ZeRO-3 pads a weight whose size does not divide by the processes at the end of the last
    share; each process writes its own share, the last one's padded with zeros."""
    from types import SimpleNamespace

    import deepspeed.utils

    from distalign.distributed import _set_full

    written = {}
    monkeypatch.setattr(deepspeed.utils, "safe_set_local_fp32_param",
                        lambda p, v: written.update(fp32=v.clone()))  # fmt: skip
    monkeypatch.setattr(deepspeed.utils, "safe_set_local_optimizer_state",
                        lambda p, v, k: written.update({k: v.clone()}))  # fmt: skip
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    value = torch.arange(10.0).reshape(2, 5)  # 10 numbers over 4 processes: shares of 3
    param = SimpleNamespace(ds_id=0, ds_tensor=torch.empty(3), device="cpu", ds_process_group=None)
    for rank, share in [(0, [0, 1, 2]), (2, [6, 7, 8]), (3, [9, 0, 0])]:
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, r=rank: r)
        _set_full(param, value)
        _set_full(param, value * 2, "exp_avg")
        assert written["fp32"].tolist() == share
        assert written["exp_avg"].tolist() == [2 * x for x in share]
