"""What breaks runs, injected on purpose: SIGKILL mid-run and mid-checkpoint, non-finite
losses, a full disk, pickles in a checkpoint, fuzzed configs. Each test names the fault and
checks what must survive it."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distalign.checkpoint import CheckpointError, NonFiniteError, load_checkpoint, save_checkpoint
from distalign.config import ConfigError, load_config
from distalign.tracking import read_metrics
from tests.conftest import subprocess_env, write_jsonl


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    from tests.rm.test_train import make_pairs

    d = tmp_path_factory.mktemp("pairs")
    write_jsonl(d / "train.jsonl", make_pairs(64, seed=0))
    write_jsonl(d / "test.jsonl", make_pairs(16, seed=1))
    return d


def rm_args(model_dir, data, out, *extra) -> list[str]:
    return [
        "rm", "train", f"model_name_or_path={model_dir}", f"dataset_name={data}",
        "max_length=64", "max_prompt_length=32", "per_device_train_batch_size=4",
        "learning_rate=3e-3", "warmup_steps=0", "max_steps=6", "save_steps=2", "eval_steps=0",
        "report_to=none", f"output_dir={out}", *extra,
    ]  # fmt: skip


# The CLI in a child process whose N-th checkpoint save kills it with SIGKILL: "before" the
# save (the step is logged, its checkpoint never written) or "during" it (half a checkpoint
# on disk in <name>.tmp when the process dies).
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import distalign.checkpoint as ck
    module = __import__(sys.argv[1], fromlist=["save_checkpoint"])
    kill_at, mode, real, calls = int(sys.argv[2]), sys.argv[3], ck.save_checkpoint, [0]

    def save(path, model, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            if mode == "during":
                tmp = Path(path).with_name(Path(path).name + ".tmp")
                tmp.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(tmp)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, model, *args, **kwargs)

    module.save_checkpoint = save
    from distalign.cli import main
    sys.argv = ["distalign", *sys.argv[4:]]
    main()
    """
)


def run_cli(*args, kill: tuple[str, int, str] | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env()
    if kill is None:
        code, argv = (
            "from distalign.cli import main; import sys; sys.argv[0]='distalign'; main()",
            [],
        )
    else:
        code, argv = KILLER, [kill[0], str(kill[1]), kill[2]]
    return subprocess.run(
        [sys.executable, "-c", code, *argv, *args], env=env, capture_output=True, text=True
    )


def steps_of(path: Path, key: str) -> list[int]:
    return [row["step"] for row in read_metrics(path) if key in row]


@pytest.mark.parametrize("mode", ["before", "during"])
def test_rm_train_killed_resumes_to_the_uninterrupted_result(
    tiny_model_dir, pair_dir, tmp_path, mode
):
    whole = run_cli(*rm_args(tiny_model_dir, pair_dir, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    # saves: step 2 (1st), step 4 (2nd) <- SIGKILL there; steps 3 and 4 are already logged
    killed = run_cli(*rm_args(tiny_model_dir, pair_dir, out), kill=("distalign.rm.train", 2, mode))
    assert killed.returncode == -signal.SIGKILL
    last = out / "checkpoints" / "last"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 2  # intact
    assert steps_of(out / "metrics.jsonl", "train/loss") == [1, 2, 3, 4]
    resumed = run_cli(*rm_args(tiny_model_dir, pair_dir, out, "resume_from_checkpoint=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # every step logged exactly once, and the same final model as without the kill
    assert steps_of(out / "metrics.jsonl", "train/loss") == [1, 2, 3, 4, 5, 6]
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())["eval"]
    b = json.loads((out / "summary.json").read_text())["eval"]
    for key in ("accuracy", "margin", "reward_mean", "reward_std", "ece"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert not (out / "checkpoints" / "last.tmp").exists()


def tiny_rm_config(model_dir, data, out, **kw):
    from distalign.rm.config import RMTrainConfig

    base = dict(
        model_name_or_path=str(model_dir), dataset_name=str(data), max_length=64,
        max_prompt_length=32, per_device_train_batch_size=4, learning_rate=3e-3,
        warmup_steps=0.0, max_steps=6, save_steps=2, eval_steps=0, report_to="none",
        output_dir=str(out),
    )  # fmt: skip
    return RMTrainConfig(**(base | kw))


def poison_losses(monkeypatch, bad_calls):
    """Make the micro-batch losses of the given 1-based calls NaN."""
    import distalign.rm.train as rt

    real, calls = rt.batch_loss, [0]

    def batch_loss(model, batch, cfg):
        calls[0] += 1
        loss, metrics = real(model, batch, cfg)
        return (loss * float("nan"), metrics) if bad_calls(calls[0]) else (loss, metrics)

    monkeypatch.setattr(rt, "batch_loss", batch_loss)


def test_a_nan_step_is_skipped_and_counted(tiny_model_dir, pair_dir, tmp_path, monkeypatch):
    from distalign.rm.train import run

    poison_losses(monkeypatch, lambda call: call == 3)
    result = run(tiny_rm_config(tiny_model_dir, pair_dir, tmp_path / "run"))
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values() if isinstance(v, float))
    state = json.loads((tmp_path / "run/checkpoints/last/trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["step"] == 6
    flags = [r["train/nonfinite"] for r in read_metrics(tmp_path / "run/metrics.jsonl")
             if "train/nonfinite" in r]  # fmt: skip
    assert flags == [0, 0, 1, 0, 0, 0]


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_good_checkpoint(
    tiny_model_dir, pair_dir, tmp_path, monkeypatch
):
    from distalign.rm.train import run

    poison_losses(monkeypatch, lambda call: call >= 3)  # from step 3 on
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        run(tiny_rm_config(tiny_model_dir, pair_dir, tmp_path / "run", max_nonfinite_steps=3,
                           logging_steps=4))  # fmt: skip
    rows = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "train/nonfinite" in r]
    # each checkpoint (steps 2, 4) writes its window; the stop at step 5 writes step 5's
    assert [(r["step"], r["train/nonfinite"]) for r in rows] == [(2, 0.0), (4, 1.0), (5, 1.0)]
    last = tmp_path / "run/checkpoints/last"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 4  # saved after step 4: steps 3 and 4 skipped, weights untouched
    from safetensors.torch import load_file

    weights = load_file(last / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_broken_weights_never_replace_a_checkpoint(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    path = tmp_path / "last"
    save_checkpoint(path, model, tokenizer, None, None, {"step": 1})
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(path, model, tokenizer, None, None, {"step": 2})
    assert json.loads((path / "trainer_state.json").read_text())["step"] == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_keeps_the_previous_checkpoint(
    tiny_policy, tmp_path, monkeypatch, code
):
    import distalign.checkpoint as ck

    model, tokenizer = tiny_policy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "last"
    save_checkpoint(path, model, tokenizer, optimizer, None, {"step": 1})

    def no_space(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ck.torch, "save", no_space)
    with pytest.raises(CheckpointError, match=os.strerror(code)) as info:
        save_checkpoint(path, model, tokenizer, optimizer, None, {"step": 2})
    assert "previous checkpoint is intact" in str(info.value)
    monkeypatch.undo()
    assert not path.with_name("last.tmp").exists()
    assert load_checkpoint(path, model, optimizer)["step"] == 1


class Payload:
    """Stands for any object a malicious optimizer.pt could smuggle in."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickled_object_in_a_checkpoint_is_refused(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "last"
    save_checkpoint(path, model, tokenizer, optimizer, None, {"step": 1})
    torch.save({"state": {}, "param_groups": [], "x": Payload()}, path / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(path, model, optimizer)


def test_remote_code_is_off_unless_asked():
    from distalign.rl.config import RLTrainConfig
    from distalign.rm.config import RMTrainConfig

    assert RMTrainConfig().trust_remote_code is False
    assert "trust_remote_code" not in {f.name for f in dataclasses.fields(RLTrainConfig)} or (
        RLTrainConfig().trust_remote_code is False
    )


# --- fuzzed configs: a one-line ConfigError naming the key, never a library traceback -----

KEYS = st.sampled_from(
    ["learning_rate", "max_steps", "per_device_train_batch_size", "head", "report_to",
     "rating_range", "bf16", "max_length", "dataset_name", "lr", "no_such_key", "a.b",
     "seed", "resume_from_checkpoint", ""]
)  # fmt: skip
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["[1,2", "]", "{a: 1}", "[]", "null", "true", "-1", "1e400", "'", '"']),
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=4), flags=st.booleans())
def test_fuzzed_overrides_give_a_config_or_a_config_error(pairs, flags):
    from distalign.rm.config import RMTrainConfig

    overrides = [(k, v) for k, v in pairs] if flags else [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(RMTrainConfig, None, overrides)
    except ConfigError as e:
        # one line per problem (no traceback), each said once
        lines = str(e).strip().splitlines()
        assert lines and all(line.strip() for line in lines), str(e)
        assert len(lines) == len(set(lines)) <= max(1, len(pairs)), str(e)
    else:
        assert isinstance(cfg, RMTrainConfig)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=st.text(max_size=200))
def test_fuzzed_yaml_files_give_a_config_or_a_config_error(tmp_path_factory, text):
    from distalign.rl.config import RLTrainConfig

    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(RLTrainConfig, path)
    except ConfigError as e:
        assert str(e)


# --- rl train ------------------------------------------------------------------------------


def rl_args(model_dir, out, *extra) -> list[str]:
    return [
        "rl", "train", f"model_name_or_path={model_dir}",
        "reward=tests.rl.test_train:reward_apple", "dataset_name=gold", "max_eval_samples=4",
        "num_generations=2", "per_device_train_batch_size=4", "gradient_accumulation_steps=1",
        "max_completion_length=6", "learning_rate=1e-3", "max_steps=4", "save_steps=2",
        "eval_steps=0", "report_to=none", f"output_dir={out}", *extra,
    ]  # fmt: skip


def test_rl_train_killed_after_a_logged_step_logs_each_step_once(tiny_model_dir, tmp_path):
    whole = run_cli(*rl_args(tiny_model_dir, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    # saves: step 2 (1st), step 4 (2nd) <- SIGKILL before it: steps 3 and 4 are logged
    killed = run_cli(*rl_args(tiny_model_dir, out), kill=("distalign.rl.outputs", 2, "before"))
    assert killed.returncode == -signal.SIGKILL
    history = [json.loads(line)["step"] for line in (out / "history.jsonl").open()]
    assert sorted(set(history)) == [1, 2, 3, 4]
    resumed = run_cli(*rl_args(tiny_model_dir, out, "resume_from_checkpoint=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = [json.loads(line)["step"] for line in (out / "history.jsonl").open()]
    assert history == [s for s in (1, 2, 3, 4) for _ in range(4)]  # 2 prompts × 2 replies
    assert steps_of(out / "metrics.jsonl", "train/reward") == [1, 2, 3, 4]
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())["final_eval"]
    b = json.loads((out / "summary.json").read_text())["final_eval"]
    for key in ("reward", "kl", "length"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    rows_whole = (tmp_path / "whole" / "history.jsonl").read_text()
    assert (out / "history.jsonl").read_text() == rows_whole  # the same completions


def test_rl_infinite_reward_skips_the_update(tiny_model_dir, tmp_path):
    """An overflowing reward (inf) makes the advantages NaN: that update is skipped, counted,
    and training goes on. (A NaN reward means "not scored" and is refused with the reply.)"""
    from distalign.api import train_policy
    from distalign.rl.config import RLTrainConfig
    from tests.rl.test_train import reward_apple

    calls = [0]

    def overflowing(prompts, replies):
        calls[0] += 1
        values = reward_apple(prompts, replies)
        return [float("inf")] * len(values) if calls[0] == 2 else values

    out = tmp_path / "run"
    cfg = load_config(RLTrainConfig, None, rl_args(tiny_model_dir, out)[2:])
    train_policy(cfg, reward=overflowing, eval_on_start=False)
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["step"] == 4
