"""Checkpoints: atomic swap, RNG round trip, resume never silently starts over."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from distalign.checkpoint import (
    CheckpointError,
    follow_schedule,
    prepare_output_dir,
    resolve_resume,
    rng_state,
    set_rng_state,
)


def test_rng_round_trip():
    state = json.loads(json.dumps(rng_state()))  # through JSON, as stored
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


class FakeCuda:
    """torch.cuda on a node of 4 GPUs, this process on GPU 2: which states are read and set."""

    def __init__(self, initialized: bool):
        self.initialized, self.read, self.set = initialized, [], []

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(cuda, "current_device", lambda: 2)
        monkeypatch.setattr(
            cuda, "get_rng_state", lambda: self.read.append(2) or torch.tensor([7, 2]).byte()
        )
        monkeypatch.setattr(
            cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state read")
        )
        monkeypatch.setattr(cuda, "set_rng_state", lambda t: self.set.append(t.tolist()))
        monkeypatch.setattr(
            cuda, "set_rng_state_all", lambda ts: pytest.fail("every GPU's state set")
        )


def test_rng_state_touches_only_this_process_gpu(monkeypatch):
    fake = FakeCuda(initialized=False)
    fake.install(monkeypatch)
    assert "cuda" not in rng_state()  # a run that never used CUDA does not start it
    fake.initialized = True
    state = json.loads(json.dumps(rng_state()))
    assert fake.read == [2] and state["cuda"] == [7, 2]
    set_rng_state(state)
    assert fake.set == [[7, 2]]
    # a checkpoint written with one state per device: this process's own is restored
    set_rng_state({**state, "cuda": [[0, 0], [1, 1], [2, 2], [3, 3]]})
    assert fake.set == [[7, 2], [2, 2]]
    set_rng_state({**state, "cuda": [[0, 0]]})  # written on a node with fewer GPUs: left alone
    assert fake.set == [[7, 2], [2, 2]]
    fake.initialized = False  # a CPU run on a GPU machine does not start CUDA for the old form
    set_rng_state({**state, "cuda": [[0, 0], [1, 1], [2, 2]]})
    assert fake.set == [[7, 2], [2, 2]]


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*checkpoints/last"):
        resolve_resume(tmp_path / "last")
    policy = tmp_path / "step_00002"  # rl train's kept policies are models, not checkpoints
    policy.mkdir()
    (policy / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds a model only .*resume_from_checkpoint=true"):
        resolve_resume(policy)
    old = tmp_path / "last.old"  # a crash between the two renames of a save
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    assert resolve_resume(tmp_path / "last") == old
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "trainer_state.json").write_text("{}")
    assert resolve_resume(tmp_path / "last") == tmp_path / "last"


def test_gathered_weights_are_saved_and_a_missing_optimizer_state_is_said(
    tiny_model_dir, tmp_path, caplog
):
    """A sharded run hands save_checkpoint its gathered weights; without an optimizer state
    (FSDP1, ZeRO-3) the checkpoint has none, and loading it says so."""
    from transformers import AutoModelForCausalLM

    from distalign.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    weights = {k: v + 1 for k, v in model.state_dict().items()}  # what the shards hold
    path = save_checkpoint(tmp_path / "last", model, None, optimizer, None, {"step": 3}, weights)
    assert not (path / "optimizer.pt").exists()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with caplog.at_level("WARNING"):
        assert load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()))["step"] == 3
    assert "no optimizer state" in caplog.text
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(fresh.state_dict()[name], weights[name])
    weights[name] = weights[name] * float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path / "last", model, None, optimizer, None, {"step": 4}, weights)
    assert load_checkpoint(path, fresh)["step"] == 3  # the previous one intact


def test_a_save_after_a_stop_during_the_last_cleanup_replaces_the_stale_old_folder(
    tiny_model_dir, tmp_path
):
    """Stopped after the swap but before ``last.old`` was removed: resume reads ``last``, and
    the resumed run's next save must not fail renaming ``last`` onto the stale ``last.old``."""
    from transformers import AutoModelForCausalLM

    from distalign.checkpoint import load_checkpoint, save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    save_checkpoint(tmp_path / "last", model, None, None, None, {"step": 4})
    (tmp_path / "last.old").mkdir()
    (tmp_path / "last.old" / "trainer_state.json").write_text('{"step": 2}')
    assert resolve_resume(tmp_path / "last") == tmp_path / "last"
    path = save_checkpoint(tmp_path / "last", model, None, None, None, {"step": 6})
    assert load_checkpoint(path, model)["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_a_resumed_run_follows_its_own_learning_rate_schedule():
    from transformers import get_scheduler

    param = torch.nn.Parameter(torch.zeros(1))

    def run(total: int):
        opt = torch.optim.AdamW([param], lr=1.0)
        return opt, get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=total)

    opt, sched = run(2)
    for _ in range(2):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved_opt["param_groups"][0]["lr"] == 0.0  # the 2-step schedule has ended

    longer, longer_sched = run(4)  # resumed with max_steps 4
    longer.load_state_dict(saved_opt)
    longer_sched.load_state_dict(saved_sched)
    follow_schedule(longer, longer_sched)
    assert longer.param_groups[0]["lr"] == pytest.approx(0.5)  # cosine at step 2 of 4
    assert longer_sched.get_last_lr() == [longer.param_groups[0]["lr"]]
    longer.step()
    longer_sched.step()
    assert longer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))

    same, same_sched = run(2)  # an unchanged schedule: exactly the saved rate
    same.load_state_dict(saved_opt)
    same_sched.load_state_dict(saved_sched)
    follow_schedule(same, same_sched)
    assert same.param_groups[0]["lr"] == saved_opt["param_groups"][0]["lr"]


def test_resume_through_a_checkpoint_takes_this_runs_peak_and_horizon(tiny_model_dir, tmp_path):
    """Two parameter groups (the head's own rate), a changed learning_rate and max_steps."""
    from transformers import AutoModelForCausalLM, get_scheduler

    from distalign.checkpoint import load_checkpoint, save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    params = list(model.parameters())

    def run(lr: float, total: int):
        groups = [{"params": params[:-1]}, {"params": params[-1:], "lr": 10 * lr}]
        opt = torch.optim.AdamW(groups, lr=lr)
        return opt, get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=total)

    opt, sched = run(1e-3, 2)
    for _ in range(2):
        opt.step()
        sched.step()
    path = save_checkpoint(tmp_path / "last", model, None, opt, sched, {"step": 2})
    resumed, resumed_sched = run(1e-4, 4)
    load_checkpoint(path, model, resumed, resumed_sched)
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([0.5e-4, 0.5e-3])
    resumed.step()
    resumed_sched.step()
    cos = 0.5 * (1 + math.cos(math.pi * 3 / 4))
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([cos * 1e-4, cos * 1e-3])
    same, same_sched = run(1e-3, 2)
    load_checkpoint(path, model, same, same_sched)
    assert [g["lr"] for g in same.param_groups] == [0.0, 0.0]


def test_a_fresh_run_does_not_mix_with_an_earlier_one_in_its_output_dir(tmp_path):
    """An earlier run's files move aside into replaced/<time>/, never deleted: a run that saved
    nothing without asking, one with checkpoints only with overwrite_output_dir."""
    from distalign.config import ConfigError

    def moved() -> list[list[str]]:
        return [sorted(p.name for p in d.iterdir()) for d in sorted((out / "replaced").iterdir())]

    out = tmp_path / "run"
    prepare_output_dir(out, None, False)  # nothing there yet
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")  # a run that stopped before saving
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    prepare_output_dir(out, None, False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "replaced"]
    assert moved() == [["config.yaml", "metrics.jsonl"]]
    (out / "config.yaml").write_text("seed: 1\n")  # the next run saved checkpoints
    (out / "checkpoints" / "step_00002").mkdir(parents=True)
    (out / "final").mkdir()
    (out / "history.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"holds an earlier run \(checkpoints/, final/, hist"):
        prepare_output_dir(out, None, False)
    prepare_output_dir(out, "last", False)  # resuming keeps it all
    assert (out / "checkpoints").is_dir() and (out / "history.jsonl").is_file()
    # overwrite_output_dir: not while this run reads a model of the earlier one (a run's folder
    # stands for its final model)
    for spec in (str(out / "final"), str(out), str(out / "checkpoints" / "step_00002")):
        with pytest.raises(ConfigError, match="is an input of this run"):
            prepare_output_dir(out, None, True, inputs=[str(tmp_path), spec])
    (out / "distalign").mkdir()  # the tracker's folder (TensorBoard events)
    prepare_output_dir(out, None, True, [str(out / "notes.txt")], ["distalign"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "replaced"]
    # a second folder even within the same second: the first run's files stay
    second = ["checkpoints", "config.yaml", "distalign", "final", "history.jsonl"]
    assert moved() == [["config.yaml", "metrics.jsonl"], second]


def test_an_earlier_run_s_tracker_folder_outside_output_dir_is_never_moved(tmp_path):
    from distalign.config import ConfigError
    from distalign.tracking import start_tracking

    out, victim = tmp_path / "runs" / "rm", tmp_path / "victim"
    out.mkdir(parents=True)
    victim.mkdir()
    (victim / "thesis.tex").write_text("mine")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # a run that saved nothing
    prepare_output_dir(out, None, False, tracker_dirs=["../../victim"])
    assert (victim / "thesis.tex").read_text() == "mine"
    # the names that would lead there are refused before anything moves
    for name in ("../../victim", "/abs/olute"):
        with pytest.raises(ConfigError, match="names a folder under output_dir"):
            start_tracking(None, name, None, {})
        with pytest.raises(ConfigError, match="names a folder under output_dir"):
            start_tracking(None, "distalign", name, {})


def test_kept_steps_are_whole_step_folders_in_step_order(tmp_path, caplog):
    from distalign.checkpoint import kept_steps

    checkpoints = tmp_path / "checkpoints"
    for name, weights in [("step_00010", "model.safetensors"), ("step_00002", "adapter_model."
                          "safetensors"), ("step_00003", None), ("step_00004.tmp", "model."
                          "safetensors"), ("last", "model.safetensors")]:  # fmt: skip
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "config.json").write_text("{}")
        if weights:
            (checkpoints / name / weights).write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert kept_steps(tmp_path) == [(2, checkpoints / "step_00002"),
                                        (10, checkpoints / "step_00010")]  # fmt: skip
    assert "step_00003 holds no weights" in caplog.text


def _saved(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from distalign.checkpoint import save_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.ones(1, 3, dtype=torch.long)).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return model, save_checkpoint(tmp_path / "last", model, None, optimizer, scheduler,
                                  {"step": 3})  # fmt: skip


@pytest.mark.parametrize(
    "damage", ["model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt"]
)
def test_a_damaged_checkpoint_is_named_as_damaged(tiny_model_dir, tmp_path, damage):
    from distalign.checkpoint import load_checkpoint

    model, path = _saved(tiny_model_dir, tmp_path)
    data = (path / damage).read_bytes()
    (path / damage).write_bytes(data[: len(data) // 2])  # cut short
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(CheckpointError, match="damaged") as info:
        load_checkpoint(path, model, optimizer, scheduler)
    assert "does not fit" not in str(info.value)


def test_a_resumed_run_takes_its_own_adamw_settings(tiny_model_dir, tmp_path):
    from distalign.checkpoint import load_checkpoint

    model, path = _saved(tiny_model_dir, tmp_path)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.95), eps=1e-6,
                                  weight_decay=0.1, fused=True)  # fmt: skip
    load_checkpoint(path, model, optimizer)  # written by an unfused optimizer
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.1)
    assert group["fused"] is True  # this run's kernel
    assert optimizer.state[group["params"][0]]["step"] == 1  # the moments are the checkpoint's


def test_a_checkpoint_without_scheduler_state_says_the_schedule_starts_again(
    tiny_model_dir, tmp_path, caplog
):
    from distalign.checkpoint import load_checkpoint

    model, path = _saved(tiny_model_dir, tmp_path)
    (path / "scheduler.pt").unlink()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with caplog.at_level("WARNING"):
        load_checkpoint(path, model, optimizer, scheduler)
    assert "holds no scheduler state: the learning-rate schedule starts again" in caplog.text
