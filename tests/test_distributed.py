"""FSDP2 in two CPU processes: sampling under ``full_parameters`` matches the unsharded model
(with ranks stopping at different steps), and checkpoints gathered with ``full_state_dict`` /
``full_optimizer_state`` are the unsharded model's and resume exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import run_launcher, subprocess_env
from tests.test_multiprocess import _free_port


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fsdp2_sample_save_resume(tiny_model_dir, tmp_path, kind):
    worker = Path(__file__).with_name("fsdp2_worker.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(worker), str(tiny_model_dir), str(tmp_path / "ckpt"), kind,
    ]  # fmt: skip
    env = subprocess_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # FSDP2 over gloo, CPU
    done = run_launcher(cmd, env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"FSDP2 OK {kind}" in done.stdout
    assert (tmp_path / "ckpt" / "optimizer.pt").is_file()
