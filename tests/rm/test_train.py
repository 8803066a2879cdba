"""Reward-model training on the tiny model: it learns, centering works, resume is exact."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from distalign.config import ConfigError, load_config
from distalign.models.reward_model import load_reward_model, score_replies
from distalign.rm.config import RMTrainConfig
from distalign.rm.train import run
from tests.conftest import write_jsonl

WORDS = ["apple", "river", "stone", "cloud", "paper", "light", "music", "garden", "window"]


def make_pairs(n: int, seed: int) -> list[dict]:
    """Chosen replies say 'thanks' at the end; rejected ones are otherwise alike."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + "?"
        body = " ".join(rng.choices(WORDS, k=rng.randint(2, 10)))
        other = " ".join(rng.choices(WORDS, k=rng.randint(2, 10)))
        rows.append({"prompt": prompt, "chosen": f"{body} thanks", "rejected": f"{other} stone"})
    return rows


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    write_jsonl(d / "train.jsonl", make_pairs(320, seed=0))
    write_jsonl(d / "test.jsonl", make_pairs(80, seed=1))
    return d


def config(tiny_model_dir, pair_dir, tmp_path, **kw) -> RMTrainConfig:
    base = dict(
        model_name_or_path=str(tiny_model_dir), dataset_name=str(pair_dir), max_length=64,
        max_prompt_length=32, per_device_train_batch_size=8, learning_rate=3e-3,
        warmup_steps=0.0, num_train_epochs=1, eval_steps=0, save_steps=0,
        output_dir=str(tmp_path / "run"), report_to="none", center_rewards_coefficient=0.01,
    )  # fmt: skip
    base.update(kw)
    return RMTrainConfig(**base)


def test_learns_a_property_of_the_chosen_reply(tiny_model_dir, pair_dir, tmp_path):
    result = run(config(tiny_model_dir, pair_dir, tmp_path, num_train_epochs=2))
    assert result["accuracy"] >= 0.95, result
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file() and (final / "distalign_rm.json").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    # last resumes, with the optimizer's state; best is a model to load, without it
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last" / "optimizer.pt").is_file()
    assert (checkpoints / "best" / "model.safetensors").is_file()
    assert not (checkpoints / "best" / "optimizer.pt").exists()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("train/loss" in json.loads(line) for line in lines)


def test_centering_keeps_rewards_near_zero(tiny_model_dir, pair_dir, tmp_path):
    free = run(
        config(tiny_model_dir, pair_dir, tmp_path / "a", center_rewards_coefficient=0.0,
               max_steps=30)
    )  # fmt: skip
    centred = run(
        config(tiny_model_dir, pair_dir, tmp_path / "b", center_rewards_coefficient=0.5,
               max_steps=30)
    )  # fmt: skip
    assert abs(centred["reward_mean"]) < abs(free["reward_mean"])


@pytest.mark.parametrize(
    "extra", [{}, {"use_peft": True, "lora_dropout": 0.3, "disable_dropout": False}]
)
def test_resume_matches_uninterrupted_run_bitwise(tiny_model_dir, pair_dir, tmp_path, extra):
    """With dropout on too: the resumed run's mid-epoch data iterator must not take a draw
    from the restored RNG that the uninterrupted run took at the epoch's start."""
    kw = dict(max_steps=8, save_steps=4, lr_scheduler_type="constant", **extra)
    straight = run(config(tiny_model_dir, pair_dir, tmp_path / "s", **kw))
    cut = config(tiny_model_dir, pair_dir, tmp_path / "r", **{**kw, "max_steps": 4})
    run(cut)  # as if killed after step 4
    state = json.loads(
        (tmp_path / "r" / "run" / "checkpoints" / "last" / "trainer_state.json").read_text()
    )
    assert state["step"] == 4
    resumed = run(
        config(tiny_model_dir, pair_dir, tmp_path / "r", **kw, resume_from_checkpoint=True)
    )
    for key in ("accuracy", "margin", "reward_mean"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-5), key


def test_resume_with_other_accumulation_goes_on_where_the_data_and_schedule_stood(
    tiny_model_dir, pair_dir, tmp_path
):
    # 320 pairs in batches of 8: 40 batches, one a step before the cut, two after it (as if
    # resumed on twice the processes)
    run(config(tiny_model_dir, pair_dir, tmp_path / "r", max_steps=4, save_steps=4))
    early = shutil.copytree(tmp_path / "r" / "run" / "checkpoints" / "last", tmp_path / "early")
    kw = dict(gradient_accumulation_steps=2, num_train_epochs=1, logging_steps=1)
    run(config(tiny_model_dir, pair_dir, tmp_path / "s", **kw))
    run(config(tiny_model_dir, pair_dir, tmp_path / "r", **kw, resume_from_checkpoint=True))

    def rows(folder):
        lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, lines) if "train/loss" in r}

    resumed, whole = rows(tmp_path / "r"), rows(tmp_path / "s")
    # 4 batches seen = step 2 of 2-batch steps; the run ends at step 20 with every pair seen
    assert list(resumed) == list(range(1, 21)) == list(whole)
    assert resumed[2]["train/pairs_seen"] == 16 and resumed[3]["train/pairs_seen"] == 48
    assert resumed[20]["train/pairs_seen"] == whole[20]["train/pairs_seen"] == 320
    for s in range(3, 21):  # the learning rate stands where the 2-batch schedule has it
        assert resumed[s]["train/learning_rate"] == pytest.approx(
            whole[s]["train/learning_rate"]
        ), s
    logged = (tmp_path / "r" / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="per_device_train_batch_size=8"):
        run(config(tiny_model_dir, pair_dir, tmp_path / "r", per_device_train_batch_size=4,
                   resume_from_checkpoint=str(early)))  # fmt: skip
    # refused before the log (to step 20) is cut back to the checkpoint's step (4)
    assert (tmp_path / "r" / "run" / "metrics.jsonl").read_text() == logged


def test_logs_every_n_steps_and_evaluates_each_epoch(tiny_model_dir, pair_dir, tmp_path):
    cfg = config(tiny_model_dir, pair_dir, tmp_path, max_train_samples=48, num_train_epochs=2,
                 logging_steps=4, eval_strategy="epoch", save_strategy="no",
                 eval_on_start=True)  # fmt: skip
    run(cfg)  # 6 steps a pass, 12 in all
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # every 4 steps, and at step 6 where the first evaluation's best checkpoint is written
    assert [r["step"] for r in rows if "train/loss" in r] == [4, 6, 8, 12]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 6, 12]
    assert [r["train/pairs_seen"] for r in rows if "train/loss" in r] == [32, 48, 64, 96]
    best = json.loads((tmp_path / "run/checkpoints/best/trainer_state.json").read_text())
    assert best["step"] in (6, 12)  # the untrained model of eval_on_start is no candidate


def stopped(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_finished_run_relaunched_with_resume_does_nothing(
    tiny_model_dir, pair_dir, tmp_path, caplog, monkeypatch
):
    import distalign.rm.train as rm_train

    # max_length null: the loading resolves it, and the relaunch still sees its own settings
    cfg = config(tiny_model_dir, pair_dir, tmp_path, max_steps=2, run_name="r",
                 report_to="tensorboard", max_length=None)  # fmt: skip
    result = run(cfg)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    final = (tmp_path / "run" / "final" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = run(dataclasses.replace(cfg, resume_from_checkpoint="true"))
    assert "resuming with settings other than" not in caplog.text
    assert "the run ended at step 2 already" in caplog.text
    assert again == json.loads(json.dumps(result))
    # a setting that changes nothing the end computes (logging) leaves it finished too
    assert run(dataclasses.replace(cfg, resume_from_checkpoint="true", logging_steps=5,
                                   per_device_eval_batch_size=4)) == again  # fmt: skip
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    assert (tmp_path / "run" / "final" / "model.safetensors").stat().st_mtime_ns == final
    # with another setting (other held-out pairs), the end runs again under it; a stop before
    # it is written leaves no earlier summary to be taken as this end's
    few = tmp_path / "few.jsonl"
    few.write_text("".join((pair_dir / "test.jsonl").read_text().splitlines(True)[:6]))
    relaunch = dataclasses.replace(cfg, resume_from_checkpoint="true", eval_dataset_name=str(few))
    with monkeypatch.context() as m:
        m.setattr(rm_train, "save_final", stopped)
        with pytest.raises(KeyboardInterrupt):
            run(relaunch)
    other = run(relaunch)
    assert (other["pairs"], result["pairs"]) == (6, 80)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/pairs"] for r in rows if "eval/pairs" in r] == [6]  # one per step


def test_an_error_in_the_final_evaluation_keeps_the_trained_steps(
    tiny_model_dir, pair_dir, tmp_path, monkeypatch
):
    import distalign.rm.train as rm_train

    cfg = config(tiny_model_dir, pair_dir, tmp_path, max_steps=2)
    with monkeypatch.context() as m:
        m.setattr(rm_train, "held_out_metrics", stopped)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    last = tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json"
    assert json.loads(last.read_text())["step"] == 2
    result = run(dataclasses.replace(cfg, resume_from_checkpoint="true"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [2]  # no step ran again
    # the end's evaluation chose checkpoints/best: `last` carries it on, for a longer run
    state = json.loads(last.read_text())
    assert (state["best_metric"], state["best_by"]) == (result["accuracy"], "accuracy")
    assert "rng" in state


def test_load_best_model_at_end_after_a_resume_that_kept_no_best_keeps_the_last(
    tiny_model_dir, pair_dir, tmp_path, caplog
):
    first = config(tiny_model_dir, pair_dir, tmp_path, max_steps=2, eval_steps=1,
                   save_total_limit=1)  # fmt: skip
    run(first)
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()
    with caplog.at_level("WARNING"):  # no later evaluation beats the first part's best
        result = run(dataclasses.replace(first, max_steps=3, learning_rate=0.0,
                                         resume_from_checkpoint="true",
                                         load_best_model_at_end=True,
                                         metric_for_best_model="accuracy"))  # fmt: skip
    assert "checkpoints/best was not kept; final/ holds the last step's weights" in caplog.text
    assert "best_step" not in result


def test_save_total_limit_one_keeps_the_last_checkpoint_alone(tiny_model_dir, pair_dir, tmp_path):
    run(config(tiny_model_dir, pair_dir, tmp_path, max_steps=2, eval_steps=1, save_steps=1,
               save_total_limit=1))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last"]


def test_save_only_model_checkpoints_hold_no_optimizer_and_resume_from_fresh_moments(
    tiny_model_dir, pair_dir, tmp_path, caplog
):
    kw = dict(max_steps=2, eval_steps=1, save_steps=1, save_only_model=True)
    run(config(tiny_model_dir, pair_dir, tmp_path, **kw))
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last", "best"):
        files = {p.name for p in (checkpoints / name).iterdir()}
        assert "model.safetensors" in files and "optimizer.pt" not in files, name
    result = run(config(tiny_model_dir, pair_dir, tmp_path,
                        **{**kw, "max_steps": 3, "resume_from_checkpoint": True}))  # fmt: skip
    assert "holds no optimizer state: AdamW's moments start from zero" in caplog.text
    assert json.loads((checkpoints / "last" / "trainer_state.json").read_text())["step"] == 3
    assert "accuracy" in result


@pytest.mark.parametrize("metric", ["eval_accuracy", None])  # None: transformers' eval loss
def test_load_best_model_at_end_ends_with_the_best_evaluated_weights(
    tiny_model_dir, pair_dir, tmp_path, metric
):
    # trained on the pairs the other way round, the model gets worse on the held-out ones
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    rows = [json.loads(x) for x in (pair_dir / "train.jsonl").read_text().splitlines()]
    write_jsonl(
        swapped / "train.jsonl",
        [r | {"chosen": r["rejected"], "rejected": r["chosen"]} for r in rows],
    )
    (swapped / "test.jsonl").write_text((pair_dir / "test.jsonl").read_text())
    cfg = config(tiny_model_dir, swapped, tmp_path, max_steps=8, eval_steps=1, save_steps=4,
                 load_best_model_at_end=True, save_total_limit=1,
                 metric_for_best_model=metric)  # fmt: skip
    result = run(cfg)
    key, sign = ("accuracy", 1) if metric else ("loss", -1)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: sign * r[f"eval/{key}"] for r in rows if f"eval/{key}" in r}
    best = max(evals, key=lambda step: (evals[step], -step))  # the first of the best
    assert evals[best] > evals[8] and result["best_step"] == best < 8, evals
    assert sign * result[key] == pytest.approx(evals[best])
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    kept = load_file(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in kept)
    # save_total_limit 1 keeps best beside last for it, as transformers does
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "best", "last"]  # fmt: skip


def test_best_model_keys_as_trl_configs_write_them():
    # a TRL RewardConfig with load_best_model_at_end dumps the loss (transformers' default)
    trl_keys = ["load_best_model_at_end=true", "metric_for_best_model=loss",
                "greater_is_better=false"]  # fmt: skip
    assert load_config(RMTrainConfig, None, trl_keys).best_metric == "loss"
    assert load_config(RMTrainConfig, None, trl_keys[:1]).best_metric == "loss"
    assert load_config(RMTrainConfig, None, []).best_metric == "accuracy"  # checkpoints/best
    # unread where no metric is set and the best is not loaded, as in transformers
    assert load_config(RMTrainConfig, None, ["greater_is_better=false"]).best_metric
    by_accuracy = ["load_best_model_at_end=true", "metric_for_best_model=eval_accuracy",
                   "greater_is_better=true"]  # fmt: skip
    assert load_config(RMTrainConfig, None, by_accuracy).best_metric == "accuracy"
    with pytest.raises(ConfigError, match="greater_is_better: true for metric_for_best_model"):
        load_config(RMTrainConfig, None, [*by_accuracy[:2], "greater_is_better=false"])
    with pytest.raises(ConfigError, match="greater_is_better: false for metric_for_best_model"):
        load_config(RMTrainConfig, None, [*trl_keys[:2], "greater_is_better=true"])
    with pytest.raises(ConfigError, match=r"metric_for_best_model: loss \| accuracy"):
        load_config(RMTrainConfig, None, ["metric_for_best_model=eval_f1"])


def test_a_resume_keeps_the_best_only_where_this_runs_metric_chose_it(caplog):
    from distalign.rm.train import TrainState, best_of, improves

    by_loss = load_config(RMTrainConfig, None, ["metric_for_best_model=loss"])
    by_accuracy = load_config(RMTrainConfig, None, [])

    # a checkpoint of an earlier version kept its best accuracy
    def best(saved, cfg):
        return TrainState(**best_of(saved, cfg)).best_metric

    assert best({"step": 4, "best_accuracy": 0.7}, by_accuracy) == 0.7
    assert best({"step": 4, "best_accuracy": -1.0}, by_accuracy) is None
    with caplog.at_level("WARNING"):
        state = TrainState(**best_of({"step": 4, "best_accuracy": 0.7}, by_loss))
    assert state.best_metric is None and "chosen by the held-out accuracy" in caplog.text
    kept = {"step": 4, "best_metric": 0.5, "best_by": "loss"}
    assert best(kept, by_loss) == 0.5
    assert improves(0.4, 0.5, greater_is_better=False) and not improves(0.6, 0.5, False)
    assert improves(0.6, None, True) and not improves(float("nan"), None, True)


def test_lora_adapter_saves_and_scores_identically(tiny_model_dir, pair_dir, tmp_path):
    run(config(tiny_model_dir, pair_dir, tmp_path, use_peft=True, lora_r=4, max_steps=5))
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file()
    model, tokenizer, _ = load_reward_model(final)
    prompts = [[{"role": "user", "content": "apple river?"}]] * 2
    a = score_replies(model, tokenizer, prompts, ["stone thanks", "stone stone"])
    b = score_replies(model, tokenizer, prompts[:1], ["stone thanks"])
    torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=0)
    # PEFT's own loader, as the README shows it, on the chat template's rendering
    from peft import AutoPeftModelForSequenceClassification

    tok = AutoTokenizer.from_pretrained(final)
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        final, num_labels=1, pad_token_id=tok.pad_token_id
    )
    texts = [
        tok.apply_chat_template([*prompts[0], {"role": "assistant", "content": r}], tokenize=False)
        for r in ("stone thanks", "stone stone")
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**enc).logits[:, 0], a[:, 0], atol=1e-4, rtol=0)


def test_prefix_sharing_and_plain_runs_agree(tiny_model_dir, pair_dir, tmp_path):
    kw = dict(max_steps=4, lr_scheduler_type="constant")
    shared = run(config(tiny_model_dir, pair_dir, tmp_path / "a", prefix_sharing=True, **kw))
    plain = run(config(tiny_model_dir, pair_dir, tmp_path / "b", prefix_sharing=False, **kw))
    assert shared["margin"] == pytest.approx(plain["margin"], abs=1e-3)


def test_reference_config_dry_run(tiny_model_dir, tmp_path, monkeypatch):
    """configs/rm_scalar_helpsteer2.yaml: the hub id and split reach load_dataset as written,
    HelpSteer2's shape (string prompt, message replies, ratings) loads and trains a step."""
    calls = []
    user = {"role": "user", "content": "Name a fruit."}
    rows = [
        {
            "prompt": "Name a fruit.",
            "chosen": [user, {"role": "assistant", "content": f"A pear {i}."}],
            "rejected": [user, {"role": "assistant", "content": "Rocks."}],
            "chosen_rating": 3.5,
            "rejected_rating": 1.0,
        }
        for i in range(4)
    ]

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = load_config(
        RMTrainConfig,
        "configs/rm_scalar_helpsteer2.yaml",
        [f"model_name_or_path={tiny_model_dir}", "max_steps=1", "bf16=false", "report_to=none",
         f"output_dir={tmp_path}", "margin_scale=0.5"],
    )  # fmt: skip
    assert cfg.max_length == 512
    run(cfg)
    assert calls[0] == ("esfrankel17/HelpSteer2_binarized", "average_rating_split[:90%]")
    assert calls[1] == ("esfrankel17/HelpSteer2_binarized", "average_rating_split[90%:]")


@pytest.mark.parametrize("head", ["categorical", "ordinal"])
def test_distributional_heads_learn(tiny_model_dir, pair_dir, tmp_path, head):
    result = run(
        config(tiny_model_dir, pair_dir, tmp_path, head=head, num_train_epochs=2, n_bins=5)
    )
    assert result["accuracy"] >= 0.95, result
    assert {"entropy", "unimodal_share", "std_mean", "accuracy_expectation"} <= result.keys()
    if head == "ordinal":
        assert result["unimodal_share"] == 1.0
    # the final evaluation is saved with the model, with its distribution plots
    (saved,) = (tmp_path / "run" / "final").glob("eval_*.json")
    assert json.loads(saved.read_text())["accuracy"] == result["accuracy"]
    assert len(list((tmp_path / "run" / "final").glob("eval_*.png"))) == 2


def test_distributional_eval_writes_plots_and_score_writes_distributions(
    tiny_model_dir, pair_dir, tmp_path
):
    from distalign.eval.rm import run_rm_eval
    from distalign.rm.score import score_file

    run(config(tiny_model_dir, pair_dir, tmp_path, head="categorical", max_steps=3, n_bins=6))
    final = tmp_path / "run" / "final"
    result = run_rm_eval(str(final), str(pair_dir), "test", max_length=64)
    for key in ("plot_grid", "plot_hist"):
        assert (
            result[key].endswith(".png")
            and (tmp_path / "run" / "final" / result[key].split("/")[-1]).is_file()
        )
    replies = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "apple?", "reply": "stone thanks"}])
    out, _ = score_file(str(final), str(replies), None, 64)
    row = json.loads(out.read_text())
    assert len(row["distribution"]) == 6 and abs(sum(row["distribution"]) - 1) < 1e-4
    assert row["cvar"] <= row["expectation"] + 1e-6 and row["reward"] == row["expectation"]
    # the checkpoints are reward models too (rm eval, rm score, rl train read them alike),
    # and every saved config names the outputs: not LABEL_0 … LABEL_5
    best = run_rm_eval(str(tmp_path / "run/checkpoints/best"), str(pair_dir), "test", 64)
    assert best["head"] == "categorical"
    for folder in (final, tmp_path / "run/checkpoints/last"):
        labels = json.loads((folder / "config.json").read_text())["id2label"]
        assert labels["0"] == "score_bin_1_logit" and len(labels) == 6
    assert not list((tmp_path / "run").glob("final.tmp*"))  # written whole, then renamed


def test_hub_dataset_config_and_revision_reach_load_dataset(tiny_model_dir, tmp_path, monkeypatch):
    import distalign.data.load as load

    calls = []

    def fake_load_dataset(source, **kwargs):
        calls.append((source, kwargs))
        rows = make_pairs(8, seed=0 if kwargs["split"] == "train" else 1)
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(load.datasets, "load_dataset", fake_load_dataset)
    cfg = config(
        tiny_model_dir, "org/pairs", tmp_path, dataset_config="helpful",
        dataset_revision="v1.0", max_steps=1, per_device_train_batch_size=4,
    )  # fmt: skip
    run(cfg)
    assert {(s, k["name"], k["revision"], k["split"]) for s, k in calls} == {
        ("org/pairs", "helpful", "v1.0", "train"),
        ("org/pairs", "helpful", "v1.0", "test"),
    }


def test_pairs_grouped_by_prompt_train_exactly_as_plain_rows(tiny_model_dir, tmp_path):
    """4 replies and their 6 pairs per prompt: grouped by prompt, prefix sharing encodes each
    reply once for its 3 pairs, and scores as the plain rows do with the same batches."""
    import itertools

    rng = random.Random(0)
    rows = []
    for _ in range(20):
        prompt = " ".join(rng.choices(WORDS, k=5)) + "?"
        replies = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(4)]
        replies = [r + (" thanks" if i < 2 else " stone") for i, r in enumerate(replies)]
        for a, b in itertools.combinations(range(4), 2):  # the lower index is chosen
            rows.append({"prompt": prompt, "chosen": replies[a], "rejected": replies[b]})
    d = tmp_path / "pairs"
    d.mkdir()
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "test.jsonl", rows[:24])
    kw = dict(max_steps=4, lr_scheduler_type="constant", group_by_prompt=True)
    shared = run(config(tiny_model_dir, d, tmp_path / "a", prefix_sharing=True, **kw))
    plain = run(config(tiny_model_dir, d, tmp_path / "b", prefix_sharing=False, **kw))
    assert shared["margin"] == pytest.approx(plain["margin"], abs=1e-3)


def test_head_learning_rate_gives_the_score_head_its_own_group(tiny_model_dir):
    from distalign.models.reward_model import build_reward_model
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import optimizer_and_schedule

    model, _ = build_reward_model(str(tiny_model_dir), "mixture", n_components=2)
    cfg = RMTrainConfig(learning_rate=1e-5, head_learning_rate=1e-2, report_to="none")
    optimizer, scheduler, _ = optimizer_and_schedule(model, cfg, 64, 1)
    body, head = optimizer.param_groups
    ids = {id(p) for p in body["params"]}
    assert [id(p) for p in head["params"]] == [id(model.score.weight)]
    assert id(model.score.weight) not in ids
    assert len(body["params"]) == sum(1 for p in model.parameters() if p.requires_grad) - 1
    assert scheduler.base_lrs == [1e-5, 1e-2]  # one schedule scales both peaks
    plain, _, _ = optimizer_and_schedule(model, RMTrainConfig(report_to="none"), 64, 1)
    assert len(plain.param_groups) == 1
    with pytest.raises(ValueError, match="head_learning_rate"):
        RMTrainConfig(head_learning_rate=0.0, report_to="none")


def test_off_prompt_pairs_join_the_training_pairs(tiny_model_dir, pair_dir, tmp_path, caplog):
    """off_prompt_pairs=0.5 adds half as many unrated pairs: the epoch has 1.5 times the
    steps, and the held-out pairs are untouched."""
    cfg = config(tiny_model_dir, pair_dir, tmp_path, off_prompt_pairs=0.5)
    with caplog.at_level("INFO", logger="distalign.rm.data"):
        result = run(cfg)
    assert "added 160 off-prompt pairs to the 320 training pairs" in caplog.text
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "train/loss" in line]
    assert max(steps) == 480 // 8
    assert result["pairs"] == 80
    with pytest.raises(ValueError, match="off_prompt_pairs"):
        config(tiny_model_dir, pair_dir, tmp_path, off_prompt_pairs=-1.0)


def test_off_prompt_pairs_that_round_to_none_leave_the_pairs_as_they_are():
    from distalign.rm.data import TRAIN_COLUMNS, add_off_prompt_pairs

    rows = {"prompt_ids": [[1], [2]], "chosen_ids": [[3], [4]], "rejected_ids": [[5], [6]],
            "length": [2, 2], "chosen_score": [None] * 2, "rejected_score": [None] * 2,
            "margin": [None] * 2}  # fmt: skip
    train = datasets.Dataset.from_dict(rows)
    cfg = RMTrainConfig(off_prompt_pairs=0.1, report_to="none")
    out = add_off_prompt_pairs(train, cfg)
    assert len(out) == 2 and out.column_names == list(TRAIN_COLUMNS)


def test_rm_eval_reads_as_training_did_and_keeps_the_full_evaluation(
    tiny_model_dir, pair_dir, tmp_path
):
    from distalign.data.load import load_preferences
    from distalign.eval.rm import run_rm_eval
    from distalign.report.runs import rm_evaluations
    from distalign.rl.rewards import RewardModelSource

    # short limits, so that truncation changes the scores
    trained = run(config(tiny_model_dir, pair_dir, tmp_path, max_steps=4, max_length=24,
                         max_prompt_length=6))  # fmt: skip
    final = tmp_path / "run" / "final"
    saved = final / f"eval_{pair_dir.name}_test.json"
    again = run_rm_eval(str(final), str(pair_dir), "test")
    assert (again["max_length"], again["max_prompt_length"]) == (24, 6)
    for key in ("accuracy", "reward_mean", "margin"):
        assert again[key] == pytest.approx(trained[key], abs=1e-5), key
    full = saved.read_text()
    longer = run_rm_eval(str(final), str(pair_dir), "test", max_length=64)
    assert longer["reward_mean"] != pytest.approx(trained["reward_mean"], abs=1e-5)
    assert (final / f"eval_{pair_dir.name}_test_len64-6.json").is_file()
    few = run_rm_eval(str(final), str(pair_dir), "test", limit=10)
    assert few["pairs"] == 10
    assert (final / f"eval_{pair_dir.name}_test_first10.json").is_file()
    assert saved.read_text() == full  # the evaluation as training ran it stays
    assert rm_evaluations([str(tmp_path / "run")])["run"]["pairs"] == 80  # what the report shows
    with pytest.raises(ValueError, match="max_prompt_length"):
        run_rm_eval(str(final), str(pair_dir), "test", max_length=24, max_prompt_length=30)
    # the same model as another tool saves it (no distalign_rm.json; TRL's RewardTrainer),
    # and the run folder for its final/: scored with its own forward, as rm score reads it
    trl = tmp_path / "trl_rm"
    shutil.copytree(final, trl)
    (trl / "distalign_rm.json").unlink()
    other = run_rm_eval(str(trl), str(pair_dir), "test", max_length=24, limit=10)
    assert other["pairs"] == 10 and other["max_prompt_length"] is None
    assert (trl / f"eval_{pair_dir.name}_test_first10_len24-0.json").is_file()  # not the default
    pairs = load_preferences(str(pair_dir), "test", limit=10)
    source = RewardModelSource(str(trl), max_length=24)  # as rm score and rl train read it
    prompts = list(pairs["prompt"])
    margin = source(prompts, pairs["chosen"]).rewards - source(prompts, pairs["rejected"]).rewards
    assert other["accuracy"] == pytest.approx((margin > 0).float().mean().item())
    assert other["margin"] == pytest.approx(margin.mean().item(), abs=1e-5)
    assert run_rm_eval(str(tmp_path / "run"), str(pair_dir), "test", limit=10)["pairs"] == 10


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_trl_data_keys_tokenise_in_processes_and_pad_to_a_multiple(
    tiny_model_dir, pair_dir, tmp_path, prefix_sharing
):
    from distalign.models.load import load_tokenizer
    from distalign.rm.data import load_pairs, make_collator

    cfg = config(tiny_model_dir, pair_dir, tmp_path, dataset_num_proc=2, pad_to_multiple_of=8,
                 prefix_sharing=prefix_sharing, max_train_samples=12)  # fmt: skip
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train, _ = load_pairs(cfg, tokenizer)
    assert len(train) == 12
    batch = make_collator(cfg, tokenizer)([train[i] for i in range(5)])
    assert batch["input_ids"].shape[1] % 8 == 0


@pytest.mark.parametrize(
    ("old", "new", "position", "step"),
    [((1, 1), (1, 2), (0, 4, 4), 2),  # mid-epoch: 4 batches seen = 2 steps of 2
     ((2, 2), (4, 1), (0, 16, 4), 4),  # another process count, as many batches a step
     ((3, 1), (2, 1), (0, 42, 14), 20),  # an epoch padded to 42 by 3 processes ends at 20
     ((1, 1), (2, 1), (1, 10, 50), 25)],  # second epoch: 20 steps of the first + 5
)  # fmt: skip
def test_carry_over_moves_the_step_and_the_schedule(old, new, position, step):
    from distalign.rm.train import TrainState, carry_over

    cfg = RMTrainConfig(per_device_train_batch_size=8, group_by_length=False,
                        gradient_accumulation_steps=new[1])  # fmt: skip
    train = list(range(320))  # 40 batches of 8 an epoch
    epoch, batch_in_epoch, old_step = position
    state = TrainState(step=old_step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                       per_device_batch=8, batches_per_step=old[0] * old[1],
                       processes=old[0])  # fmt: skip
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s)  # lr = process-steps
    scheduler.last_epoch = old_step * old[0]
    carry_over(state, cfg, train, new[0], scheduler)
    assert state.step == step
    assert scheduler.get_last_lr() == [step * new[0]]
    assert (state.batches_per_step, state.processes) == (new[0] * new[1], new[0])


def test_a_trl_margin_column_goes_into_the_scalar_loss(tiny_model_dir, tmp_path):
    from distalign.models.load import load_tokenizer
    from distalign.rm.data import load_pairs, make_collator

    rows = [{**r, "margin": 3.0 if i % 2 else None} for i, r in enumerate(make_pairs(8, 0))]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    cfg = config(tiny_model_dir, tmp_path, tmp_path, dataset_name=str(tmp_path))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train, _ = load_pairs(cfg, tokenizer)
    batch = make_collator(cfg, tokenizer)([train[i] for i in range(4)])
    assert batch["margin"].tolist() == [0.0, 3.0, 0.0, 3.0]
    result = run(cfg)  # trains with it
    assert result["pairs"] == 8


def test_max_length_null_is_the_backbones_limit(tiny_model_dir):
    from transformers import AutoConfig

    from distalign.rm.train import build_model

    cfg = RMTrainConfig(model_name_or_path=str(tiny_model_dir), max_length=None,
                        report_to="none")  # fmt: skip
    build_model(cfg)
    limit = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    assert cfg.max_length == limit and cfg.max_prompt_length <= limit // 2


def test_trl_tokenised_rows_train_as_text_pairs_do(tiny_model_dir, smol_tokenizer, tmp_path):
    """TRL's processed data sets: chosen_ids/rejected_ids (or the older chosen_input_ids/
    rejected_input_ids), whole sequences, prompt included, as TRL tokenises standard rows."""
    from distalign.data import PreferenceFormatError

    def tokenised(rows, names):
        eos = smol_tokenizer.eos_token

        def encode(text):
            return smol_tokenizer(text, add_special_tokens=False)["input_ids"]

        return [{names[0]: encode(f"{r['prompt']} {r['chosen']}{eos}"),
                 names[1]: encode(f"{r['prompt']} {r['rejected']}{eos}")}
                for r in rows]  # fmt: skip

    d, bad = tmp_path / "tokens", tmp_path / "bad"
    d.mkdir()
    bad.mkdir()
    write_jsonl(d / "train.jsonl", tokenised(make_pairs(320, 0), ("chosen_ids", "rejected_ids")))
    legacy = ("chosen_input_ids", "rejected_input_ids")
    write_jsonl(d / "test.jsonl", tokenised(make_pairs(80, 1), legacy))
    result = run(config(tiny_model_dir, d, tmp_path, num_train_epochs=2))
    assert result["accuracy"] >= 0.95, result

    from distalign.rm.data import _token_columns  # the RewardTrainer's before TRL 0.13

    old = {"input_ids_chosen": [1], "attention_mask_chosen": [1], "input_ids_rejected": [2],
           "attention_mask_rejected": [1]}  # fmt: skip
    assert _token_columns(old) == ("input_ids_chosen", "input_ids_rejected")
    from distalign.rm.data import _unpadded  # pre-padded rows: their masks say what is read

    assert _unpadded({"attention_mask_chosen": [1, 1, 0]}, "input_ids_chosen", [5, 6, 0], "w") == [
        5, 6]  # fmt: skip
    with pytest.raises(PreferenceFormatError, match=r"attention_mask_chosen.*one per id"):
        _unpadded({"attention_mask_chosen": [1]}, "input_ids_chosen", [5, 6], "w")
    write_jsonl(bad / "train.jsonl", [{"chosen_ids": [1, 2], "rejected_ids": [1, 10**9]}])
    with pytest.raises(PreferenceFormatError, match=r"train.jsonl:1.*rejected_ids.*token ids"):
        run(config(tiny_model_dir, bad, tmp_path / "b", eval_dataset_name=str(d)))


def test_data_with_no_pairs_left_is_an_error_with_the_counts(tiny_model_dir, tmp_path):
    # every pair's replies equal: nothing to learn from, said before any training (rm train)
    # or evaluation (rm eval)
    from distalign.data.files import DataSourceError
    from distalign.eval.rm import _load_pairs

    rows = [{"prompt": f"Q{i}?", "chosen": "Same.", "rejected": "Same."} for i in range(3)]
    (tmp_path / "same").mkdir()
    write_jsonl(tmp_path / "same" / "train.jsonl", rows)
    write_jsonl(tmp_path / "same" / "test.jsonl", rows)
    left = r"no preference pairs left(.|\n)*identical chosen/rejected: 3"
    with pytest.raises(DataSourceError, match=left):
        run(config(tiny_model_dir, tmp_path / "same", tmp_path))
    assert not (tmp_path / "run" / "final").exists()
    with pytest.raises(DataSourceError, match=left):
        _load_pairs(str(tmp_path / "same"), "test", 0, None, lambda report: None)


def test_a_folder_without_a_test_split_is_evaluated_on_its_training_pairs(
    tiny_model_dir, pair_dir, tmp_path, caplog, monkeypatch
):
    """As rl train and one file: the default test split missing, the run evaluates on the
    training split and says so; a split named on purpose must be there."""
    import shutil

    from distalign.data.files import MissingSplitError

    (tmp_path / "ds").mkdir()
    shutil.copy(pair_dir / "train.jsonl", tmp_path / "ds" / "train.jsonl")
    cfg = config(tiny_model_dir, tmp_path / "ds", tmp_path, max_steps=1)
    monkeypatch.setattr("distalign.rm.data.TRAINING_EVAL_PAIRS", 3)
    with caplog.at_level("WARNING"):
        result = run(cfg)
    assert "no file for split 'test'" in caplog.text and "its training data" in caplog.text
    assert cfg.dataset_test_split == "test"  # the key kept
    assert list((tmp_path / "run" / "final").glob("eval_*train*.json"))  # evaluated on train
    from distalign.cli import _held_out_title  # the table after the run says so too

    assert (
        _held_out_title(cfg, "held-out")
        == f"held-out: the training data itself ({tmp_path / 'ds'}, train)"
    )
    assert result["pairs"] == 3  # not every training pair at each evaluation
    assert "evaluating on the first 3 training pairs at most" in caplog.text
    named = config(tiny_model_dir, tmp_path / "ds", tmp_path / "b", dataset_test_split="tset")
    with pytest.raises(MissingSplitError):
        run(named)


def test_training_data_as_held_out_is_scored_on_its_first_pairs_only(
    tiny_model_dir, pair_dir, tmp_path, monkeypatch
):
    """One file (or a Dataset) is its own held-out set: an evaluation scores its first
    TRAINING_EVAL_PAIRS, not every pair; a real test split is scored whole, even on a config
    object an earlier run without one has used."""
    from distalign.models.load import load_tokenizer
    from distalign.rm.data import load_pairs

    monkeypatch.setattr("distalign.rm.data.TRAINING_EVAL_PAIRS", 3)
    tok = load_tokenizer(str(tiny_model_dir))
    one = config(tiny_model_dir, pair_dir / "train.jsonl", tmp_path)
    train, held_out = load_pairs(one, tok)
    assert len(held_out) == 3 < len(train)
    folder = config(tiny_model_dir, pair_dir, tmp_path)
    folder.held_out_split = "train"  # left by an earlier run on this object
    _, held_out = load_pairs(folder, tok)
    assert len(held_out) > 3 and getattr(folder, "held_out_split", None) is None


def test_a_scheduler_takes_its_kwargs(tiny_model_dir):
    # cosine down to a tenth of the peak, not to 0 (TRL's lr_scheduler_kwargs)
    from distalign.rm.train import optimizer_and_schedule

    model = torch.nn.Linear(2, 2)
    cfg = RMTrainConfig(lr_scheduler_type="cosine_with_min_lr", warmup_steps=0.0,
                        lr_scheduler_kwargs={"min_lr_rate": 0.1}, learning_rate=1e-3,
                        max_steps=10, report_to="none")  # fmt: skip
    optimizer, scheduler, total = optimizer_and_schedule(model, cfg, 80, 1)
    for _ in range(total):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-4)


@pytest.mark.parametrize(("n", "steps"), [(5, 3), (6, 3), (7, 4), (3, 1), (2, 4)])
def test_each_accumulation_window_takes_a_mean_as_accelerate_cuts_them(n, steps):
    """accelerate divides each loss by gradient_accumulation_steps and ends the last window of
    a loader early; with accumulation_weight every window sums to one mean, short or not."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from distalign.rm.train import accumulation_weight

    accelerator = Accelerator(gradient_accumulation_steps=steps, cpu=True)
    model = accelerator.prepare(torch.nn.Linear(1, 1))
    loader = accelerator.prepare(DataLoader(torch.zeros(n, 1), batch_size=1))
    windows, current = [], 0.0
    for i, _ in enumerate(loader, 1):
        with accelerator.accumulate(model):
            current += accumulation_weight(i, len(loader), steps) / steps
            if accelerator.sync_gradients:
                windows.append(current)
                current = 0.0
    assert windows == pytest.approx([1.0] * -(-n // steps))


def test_merge_lora_saves_a_reward_model_the_auto_classes_score_alone(
    tiny_model_dir, pair_dir, tmp_path
):
    """A LoRA run's final/ is an adapter, whose base config keeps the base's pad id; with
    merge_lora, final_merged/ carries the reward model's own, so batched scores are right."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distalign.models.reward_model import load_reward_model

    run(config(tiny_model_dir, pair_dir, tmp_path, use_peft=True, merge_lora=True, max_steps=2,
               lora_modules_to_save=None))  # fmt: skip
    merged = tmp_path / "run" / "final_merged"
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    texts = ["a short one", "a rather longer text than the first one, by far"]
    alone = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    together = model(**batch).logits[:, 0].tolist()
    assert together == pytest.approx(alone, abs=1e-5)
    adapter, _, _ = load_reward_model(tmp_path / "run" / "final")
    ids = tokenizer(texts[0], return_tensors="pt")
    assert adapter(**ids).logits[0, 0].item() == pytest.approx(alone[0], abs=1e-4)


def test_a_run_weighs_its_short_last_window_as_a_full_one(tiny_model_dir, pair_dir, tmp_path,
                                                          monkeypatch):  # fmt: skip
    import distalign.rm.train as rm_train

    weights, step = [], rm_train.train_step

    def recorded(t, batch, cfg, weight=1.0):
        weights.append(weight)
        return step(t, batch, cfg, weight)

    monkeypatch.setattr(rm_train, "train_step", recorded)
    # 40 pairs in batches of 8: 5 micro-batches, windows of 3 and 2
    run(config(tiny_model_dir, pair_dir, tmp_path, max_train_samples=40,
               gradient_accumulation_steps=3))  # fmt: skip
    assert weights == [1.0, 1.0, 1.0, 1.5, 1.5]


def test_metrics_are_averaged_over_processes_whose_keys_differ(monkeypatch):
    """Two processes, one of whose batches held a rated pair: each key's mean over the
    processes that have it, sent in the same shape by both (a gloo or NCCL collective)."""
    import distalign.rm.train as rm_train

    logs = [{"train/loss": 0.8, "train/rating_nll": 2.0}, {"train/loss": 0.6}]
    monkeypatch.setattr(rm_train, "gather_object", lambda objs: [sorted(x) for x in logs])
    sent = []

    class TwoProcesses:
        device = torch.device("cpu")

        def reduce(self, tensor, reduction):
            sent.append(tensor.shape)
            other = [[logs[1].get(k, 0.0), float(k in logs[1])]
                     for k in ("train/loss", "train/rating_nll")]  # fmt: skip
            return tensor + torch.tensor(other)

    merged = rm_train.mean_over_processes(logs[0], TwoProcesses())
    assert merged == pytest.approx({"train/loss": 0.7, "train/rating_nll": 2.0})
    assert sent == [(2, 2)]


def test_what_the_template_writes_nothing_for_is_said_once_for_both_splits(
    tiny_model_dir, tmp_path, caplog
):
    """One file is the training and the held-out set: SmolLM2's template writes no tool
    calls, a property of the template, said once, not once per split."""
    from pathlib import Path

    from distalign.models.load import load_tokenizer
    from distalign.rm.data import load_pairs

    examples = Path(__file__).parents[2] / "examples"
    cfg = config(tiny_model_dir, examples / "tool_calls_pairs.jsonl", tmp_path)
    with caplog.at_level("WARNING"):
        load_pairs(cfg, load_tokenizer(str(tiny_model_dir)))
    assert caplog.text.count("writes nothing for the rows' tool calls") == 1


def test_a_resume_in_another_precision_than_the_checkpoints_is_said(
    tiny_model_dir, pair_dir, tmp_path, monkeypatch, caplog
):
    """`accelerate launch --mixed_precision bf16` sets it without the run's own bf16 key, so
    the settings compared on resuming do not show it: the checkpoint keeps it."""
    kw = dict(max_steps=1, lr_scheduler_type="constant")
    run(config(tiny_model_dir, pair_dir, tmp_path, **kw))
    state = json.loads((tmp_path / "run/checkpoints/last/trainer_state.json").read_text())
    assert state["mixed_precision"] == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as the launcher exports it
    with caplog.at_level("WARNING"):
        run(config(tiny_model_dir, pair_dir, tmp_path, **{**kw, "max_steps": 2},
                   resume_from_checkpoint=True))  # fmt: skip
    assert "trained with mixed precision no and this run computes with bf16" in caplog.text
