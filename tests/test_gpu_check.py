"""scripts/gpu_check.sh's plan files, on the CPU: which runs start with which keys. A stand-in
for python records each training command instead of running it, so no GPU or model is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = """#!/usr/bin/env bash
case "$1" in -m) echo "$*" >> "$CALLS" ;; esac
cat > /dev/null
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_stage(tmp_path: Path, stage: str, **env: str) -> tuple[str, list[str]]:
    """Runs a stage with python stubbed out; returns its output and the training commands."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls.txt"
    environ = {**os.environ, "PY": str(stub), "WORK": str(tmp_path / "work"), "CALLS": str(calls)}
    out = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path / "out"), stage],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    runs = calls.read_text().splitlines() if calls.is_file() else []
    return out.stdout, [r.split("rm_scalar_full.yaml ", 1)[1] for r in runs]


def test_recipes_plan_with_comments_crlf_and_no_final_newline(tmp_path):
    plan = tmp_path / "my_plan.txt"
    plan.write_bytes(b"# a comment\r\na1 seed=0 lr=1 # why\r\n\r\n   \nb1 seed=1")
    out, runs = run_stage(tmp_path, "recipes", RECIPES=str(plan))
    assert "my_plan: a1 b1, 9 at a time" in out
    assert sorted(r.split(" save_steps")[0] for r in runs) == ["seed=0 lr=1", "seed=1"]
    assert all(f"output_dir={tmp_path}/work/my_plan/" in r for r in runs)  # OUT/<plan name>/
    assert (tmp_path / "out" / "my_plan").is_dir()


@pytest.mark.parametrize(
    ("text", "message"),
    [("a1 x=1\na1 x=2\n", "run names used twice: a1"), ("# nothing\n\n", "no runs")],
)
def test_recipes_plan_refused(tmp_path, text, message):
    plan = tmp_path / "p.txt"
    plan.write_text(text)
    out, runs = run_stage(tmp_path, "recipes", RECIPES=str(plan))
    assert message in out and runs == []


def test_sweep_runs_the_scalar_and_each_rate_and_seed(tmp_path):
    out, runs = run_stage(tmp_path, "sweep", SWEEP_RATES="2e-3 1e-2", SWEEP_SEEDS="0 1")
    assert "sweep: scalar_s0 lr2e-3_s0 lr2e-3_s1 lr1e-2_s0 lr1e-2_s1," in out
    keys = [r.split(" save_steps")[0] for r in runs]
    assert sorted(keys) == sorted(
        ["head=scalar seed=0"]
        + [
            f"head=mixture n_components=2 head_learning_rate={lr} seed={s}"
            for lr in ("2e-3", "1e-2")
            for s in (0, 1)
        ]
    )
