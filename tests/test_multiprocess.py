"""Two processes through torchrun on CPU (gloo): the code path that multi-GPU DDP runs take —
sharded data, gathered metrics, one checkpoint written by process 0, and resume."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from tests.conftest import run_launcher, write_jsonl
from tests.rm.test_train import make_pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str) -> str:
    """``distalign ARGS`` in two processes; returns the output, fails the test on an error."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "distalign.cli", *args,
    ]  # fmt: skip
    # the CPU path on any machine: on a GPU box two processes would share (or want) GPUs
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = run_launcher(cmd, env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def test_rm_train_on_two_processes(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(64, seed=0))
    held_out = make_pairs(21, seed=1)  # not a multiple of 2
    for i, row in enumerate(held_out):  # known truths, as the gold benchmark's rows carry
        row["p_chosen"] = 0.05 + 0.9 * i / 20
    write_jsonl(data / "test.jsonl", held_out)
    out = tmp_path / "rm"
    common = [
        f"model_name_or_path={tiny_model_dir}", f"dataset_name={data}", "max_length=64",
        "max_prompt_length=32", "learning_rate=3e-3", "report_to=none", "group_by_length=false",
    ]  # fmt: skip
    launch("rm", "train", *common, "per_device_train_batch_size=4", "save_steps=2",
           f"output_dir={out}", "max_steps=2")  # fmt: skip
    # the logged loss is both processes' batches: one process with both in one batch logs it
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run
    from tests.test_config import from_cli

    alone = ["per_device_train_batch_size=8", "max_steps=1", "eval_strategy=no",
             f"output_dir={tmp_path / 'one'}"]  # fmt: skip
    run(from_cli(RMTrainConfig, [*common, *alone]))
    first = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0])
             for d in (out, tmp_path / "one")]  # fmt: skip
    for key in ("train/loss", "train/accuracy"):
        assert first[0][key] == pytest.approx(first[1][key], abs=1e-5), key
    # load_best_model_at_end reads checkpoints/best after the end's evaluation, which may have
    # just written it: every process waits for it
    launch("rm", "train", *common, "per_device_train_batch_size=4", "save_steps=2",
           f"output_dir={out}", "load_best_model_at_end=true", "eval_strategy=no",
           "--max_steps", "4", "--resume_from_checkpoint")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval"]["best_step"] in (2, 4)
    assert summary["eval"]["pairs"] == 21  # gathered from both processes, padding dropped
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [1, 2, 3, 4]  # one writer; the resumed run goes on at 3
    assert (out / "final" / "model.safetensors").is_file()
    # gathered scores line up with the rows' p_chosen: one process scores the same
    from distalign.eval.rm import run_rm_eval

    alone = run_rm_eval(str(out / "final"), str(data), "test", max_length=64,
                        output=str(tmp_path / "alone.json"))  # fmt: skip
    for key in ("accuracy", "accuracy_vs_truth", "bayes_ceiling"):
        assert summary["eval"][key] == pytest.approx(alone[key], abs=1e-6), key


def test_rm_train_resumed_on_two_processes_keeps_its_data_and_schedule(tiny_model_dir, tmp_path):
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(64, seed=0))  # 16 batches of 4
    write_jsonl(data / "test.jsonl", make_pairs(8, seed=1))
    out = tmp_path / "rm"
    common = dict(
        model_name_or_path=str(tiny_model_dir), dataset_name=str(data), max_length=64,
        max_prompt_length=32, per_device_train_batch_size=4, learning_rate=1e-3,
        lr_scheduler_type="linear", warmup_steps=0, report_to="none", output_dir=str(out),
    )  # fmt: skip
    run(RMTrainConfig(**common, max_steps=4, save_steps=4))  # one process: 4 batches
    args = [f"{k}={v}" for k, v in common.items()]
    launch("rm", "train", *args, "num_train_epochs=1", "resume_from_checkpoint=true")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if "train/loss" in r}
    # 4 batches seen = step 2 of two processes' steps; 8 steps make the epoch
    assert sorted(train) == list(range(1, 9))
    assert train[8]["train/pairs_seen"] == 64
    for step in range(3, 9):  # the linear schedule of 8 steps, where these steps stand in it
        assert train[step]["train/learning_rate"] == pytest.approx(1e-3 * (1 - step / 8)), step


def test_rl_train_on_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "rl"
    common = [
        f"model_name_or_path={tiny_model_dir}", "reward=tests.rl.test_train:reward_apple",
        "dataset_name=gold", "eval_dataset_name=gold", "max_eval_samples=4",
        # TRL's generation_batch_size over both processes: 2 prompts per step and process,
        # their 8 completions in micro-batches of 1 (TRL's shape: a micro-batch holds part of
        # a group), 2 updates per pass on 4 each, 2 passes (the later updates clipped)
        "num_generations=4", "per_device_train_batch_size=1", "gradient_accumulation_steps=4",
        "generation_batch_size=16", "num_iterations=2", "max_completion_length=6",
        "baseline=moving_average",
        # TRL GRPO's token-level ratio and entropy quantile: the quantile over both processes'
        # tokens of replies of different lengths (padded across processes to gather)
        "importance_sampling_level=token", "top_entropy_quantile=0.5",
        "use_peft=false",
        "learning_rate=1e-3", "save_steps=2", "eval_steps=0", "report_to=none",
        f"output_dir={out}",
    ]  # fmt: skip
    launch("rl", "train", *common, "max_steps=2")
    state = json.loads((out / "checkpoints" / "last" / "trainer_state.json").read_text())
    # both processes' rewards went into the baseline: 2 steps x 2 processes x 2 prompts x k = 4
    assert state["baseline_count"] == 32
    launch("rl", "train", *common, "max_steps=3", "resume_from_checkpoint=true")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # every completion of both processes, once: 2 processes x 2 prompts x k = 4 per step
    assert [sum(row["step"] == s for row in history) for s in (1, 2, 3)] == [16, 16, 16]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("train/clip_ratio" in m for m in metrics) == 3
