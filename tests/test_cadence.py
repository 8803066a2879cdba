"""Logging, evaluation, saving and warm-up intervals read as transformers reads them."""

from __future__ import annotations

import json
import re

import pytest

from distalign.cadence import Cadence, cadence_checks, steps_of
from distalign.config import ConfigError, load_config
from distalign.rl.config import RLTrainConfig
from distalign.rm.config import RMTrainConfig
from distalign.tracking import MetricsLog


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [(0, 100, 0), (1, 100, 1), (50, 100, 50), (50.0, 7, 50), (0.1, 100, 10),
     (0.1, 95, 10), (0.01, 10, 1), (0.5, 3, 2)],
)  # fmt: skip
def test_steps_of_reads_counts_and_fractions(value, total, expected):
    assert steps_of(value, total) == expected


class Keys:
    def __init__(self, **kw):
        base = dict(logging_steps=1, eval_steps=10, save_steps=10, warmup_steps=0,
                    eval_strategy="steps", save_strategy="steps")  # fmt: skip
        self.__dict__.update(base | kw)


def test_cadence_by_steps_by_epoch_and_off():
    c = Cadence.of(Keys(eval_steps=0.25, save_steps=3, logging_steps=2), total_steps=20)
    assert [s for s in range(1, 21) if c.evaluates(s)] == [5, 10, 15, 20]
    assert [s for s in range(1, 21) if c.saves(s)] == [3, 6, 9, 12, 15, 18]
    assert c.log == 2
    by_epoch = Cadence.of(Keys(eval_strategy="epoch", save_strategy="no"), total_steps=20)
    assert not by_epoch.evaluates(10) and by_epoch.evaluates(7, epoch_ended=True)
    assert not any(by_epoch.saves(s, epoch_ended=True) for s in range(1, 21))
    assert not Cadence.of(Keys(eval_steps=0), 20).evaluates(20)


def test_checks_refuse_what_transformers_refuses():
    def failed(**kw):
        return [m for ok, m in cadence_checks(Keys(**kw)) if not ok]

    assert failed() == []
    assert failed(eval_steps=0.5, warmup_steps=0.1) == []
    assert failed(eval_steps=2.5) == [
        "eval_steps must be a whole number of steps or a fraction in [0, 1), not 2.5"
    ]
    assert failed(logging_steps=0) == ["logging_steps must be > 0"]
    assert failed(save_strategy="best") == ["save_strategy: steps | epoch | no, not 'best'"]
    assert failed(eval_strategy="epoch", save_strategy="epoch") == []


def test_configs_take_the_transformers_keys():
    rm = load_config(RMTrainConfig, None, ["logging_steps=5", "eval_strategy=epoch",
                                           "save_strategy=no", "warmup_steps=0.1",
                                           "eval_on_start=true"])  # fmt: skip
    assert (rm.logging_steps, rm.eval_strategy, rm.save_strategy) == (5, "epoch", "no")
    assert rm.warmup_steps == 0.1 and rm.eval_on_start
    rl = load_config(RLTrainConfig, None, ["eval_steps=0.25", "warmup_steps=2"])
    assert Cadence.of(rl, rl.max_steps).eval == 5
    rl = load_config(RLTrainConfig, None, ["eval_strategy=epoch", "save_strategy=epoch"])
    assert (rl.eval_strategy, rl.save_strategy) == ("epoch", "epoch")  # as TRL's GRPO/RLOO


@pytest.mark.parametrize(
    ("key", "message"),
    [("warmup_ratio=1.0", "warmup_ratio must be in [0, 1)"),
     ("eval_at_start=false", "`eval_at_start` is now `eval_on_start`"),
     ("logging_dir=elsewhere",
      "`logging_dir` is a TRL/transformers key distalign does not take"),
     ("save_total_limit=0", "save_total_limit must be >= 1"),
     ("hub_strategy=all_checkpoints", "hub_strategy must be one of")],
)  # fmt: skip
def test_old_and_absent_keys_say_what_to_use(key, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        rl = "eval_at" in key or key == "save_total_limit=0"
        load_config(RLTrainConfig if rl else RMTrainConfig, None, [key])


def test_logging_first_step_logs_step_one_on_its_own(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", every=3, first=True)
    for step in range(1, 5):
        log.add(step, {"loss": float(step)})
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (3, 2.5)]


def test_metrics_log_writes_window_means_and_current_values(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", every=3, current=("lr",))
    for step, (loss, lr) in enumerate([(3.0, 0.1), (1.0, 0.2), (2.0, 0.3), (5.0, 0.4)], 1):
        metrics = {"loss": loss, "lr": lr, "flag": step % 2 == 0}
        if step == 2:
            metrics["loss"] = float("nan")  # logged as None, left out of the mean
            metrics["only_here"] = 7.0
        log.add(step, metrics)
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1  # steps 1-3
    log.flush(4)
    log.flush(4)  # nothing left: no second row
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 3, "loss": 2.5, "lr": 0.3, "flag": False, "only_here": 7.0},
        {"step": 4, "loss": 5.0, "lr": 0.4, "flag": True},
    ]


def test_the_python_api_names_renamed_keys_too():
    from distalign.api import train_policy, train_reward_model

    with pytest.raises(ConfigError, match=re.escape("warmup_ratio must be in [0, 1)")):
        train_reward_model(warmup_ratio=2)
    # transformers 4's warmup_ratio is warmup_steps below 1 (a fraction of the run)
    assert load_config(RMTrainConfig, None, ["warmup_ratio=0.1"]).warmup_steps == 0.1
    with pytest.raises(ConfigError, match=re.escape("`eval_at_start` is now `eval_on_start`")):
        train_policy(eval_at_start=False)


def test_config_warnings_come_from_the_first_process_only(monkeypatch, caplog):
    for rank, expected in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        RMTrainConfig(max_length=128, max_prompt_length=128)  # halved, with a warning
        warned = [r for r in caplog.records if "max_prompt_length 128 >= max_length" in r.message]
        assert len(warned) == expected, rank


def test_rl_eval_strategy_no_also_skips_the_evaluation_before_training():
    assert load_config(RLTrainConfig, None, []).eval_on_start is True
    assert load_config(RLTrainConfig, None, ["eval_strategy=no"]).eval_on_start is False
    both = ["eval_strategy=no", "eval_on_start=true"]
    assert load_config(RLTrainConfig, None, both).eval_on_start is True
