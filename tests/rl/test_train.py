"""REINFORCE on the tiny model: it learns a rewarded token with either baseline; the loop
runs with reward-model sources and resumes."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from distalign.config import ConfigError, load_config
from distalign.rl.config import RLTrainConfig
from distalign.rl.train import TrainState, advantages_for, run

# Tokens the peaked tiny model likes to emit; the reward pays for the first one.
FAVOURITES = [" apple", " river", " stone", " cloud", " paper", " light", " music", " garden"]


def reward_apple(prompts, replies) -> list[float]:
    """Share of words that are 'apple' (the 'particular token')."""
    out = []
    for reply in replies:
        words = reply.split()
        out.append(sum(w == "apple" for w in words) / max(len(words), 1))
    return out


def reward_some(prompts, replies) -> list[float | None]:
    """None ("not mine to score") for every third reply, the length of the others."""
    return [None if i % 3 == 0 else float(len(r)) for i, r in enumerate(replies)]


def reward_length(prompts, replies) -> list[float]:
    """Characters of the reply, capped: groups whose rewards tie (all at the cap) and not."""
    return [float(min(len(reply), 12)) for reply in replies]


@pytest.fixture(scope="module")
def peaked_policy_dir(tiny_model_dir, smol_tokenizer, tmp_path_factory):
    """The tiny random Llama with a few favourite tokens, so sampling explores among them."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = [smol_tokenizer.encode(w, add_special_tokens=False)[0] for w in FAVOURITES]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids] = torch.randn(len(ids), emb.shape[1]) * 0.5  # large norm: large logits
    path = tmp_path_factory.mktemp("peaked")
    model.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def config(model_dir, tmp_path, **kw) -> RLTrainConfig:
    base = dict(
        model_name_or_path=str(model_dir), reward="tests.rl.test_train:reward_apple",
        dataset_name="gold", eval_dataset_name="gold", max_eval_samples=8, num_generations=4,
        # 4 prompts per step in micro-batches of 2 prompts x 4 completions
        per_device_train_batch_size=8, gradient_accumulation_steps=2,
        max_completion_length=8, temperature=1.0, beta=0.0, max_steps=30, learning_rate=2e-3,
        use_peft=False, eval_steps=0, save_steps=0, report_to="none",
        output_dir=str(tmp_path / "rl"),
    )  # fmt: skip
    base.update(kw)
    return RLTrainConfig(**base)


@pytest.mark.parametrize("baseline", ["rloo", "moving_average"])
def test_learns_the_rewarded_token(peaked_policy_dir, tmp_path, baseline):
    result = run(config(peaked_policy_dir, tmp_path, baseline=baseline))
    before, after = result["initial"]["reward"], result["final"]["reward"]
    assert after > before + 0.2, (before, after)
    # held-out gold prompts: the gold judge's reward, overall and per annotator group
    assert {"gold_mean", "gold_concise", "gold_thorough"} <= result["final"].keys()
    rows = [
        json.loads(line) for line in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 30 * 16 and {r["step"] for r in rows} == set(range(1, 31))
    metrics = [
        json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    keys = set().union(*metrics)
    for key in ("train/kl", "train/kl_k3", "train/entropy", "train/eos_rate", "train/baseline",
                "train/advantage_std", "train/grad_norm", "train/gen_tokens_per_s",
                "time/generate_s", "time/score_s", "time/train_s",
                "train/peak_mem_gb"):  # fmt: skip
        assert key in keys, key
    assert (tmp_path / "rl" / "final" / "model.safetensors").is_file()


def test_kl_in_the_loss_leaves_the_rewards_and_adds_beta_k3_to_the_loss(
    peaked_policy_dir, tmp_path
):
    """use_kl_loss (TRL GRPO's place for β): the rewards stay the sources', so a run with it
    makes the same first update as one without a KL penalty (the policy is its reference
    then: k3 = 0 and no gradient), and at the second step its loss is that run's plus β times
    the replies' mean k3."""
    kw = dict(max_steps=2, max_eval_samples=2, eval_on_start=False, learning_rate=0.05,
              reward="tests.rl.test_train:reward_length")  # fmt: skip

    def rows(name):
        path = tmp_path / name / "rl" / "metrics.jsonl"
        return [r for r in map(json.loads, path.read_text().splitlines()) if "train/loss" in r]

    run(config(peaked_policy_dir, tmp_path / "none", beta=0.0, **kw))
    run(config(peaked_policy_dir, tmp_path / "loss", beta=0.5, use_kl_loss=True, **kw))
    plain, in_loss = rows("none"), rows("loss")
    assert [r["train/reward"] for r in in_loss] == [r["train/reward"] for r in plain]
    assert all(r["train/shaped_reward"] == r["train/reward"] for r in in_loss)
    assert in_loss[0]["train/loss"] == pytest.approx(plain[0]["train/loss"], abs=1e-6)
    assert in_loss[1]["train/kl_k3"] > 0
    added = in_loss[1]["train/loss"] - plain[1]["train/loss"]
    assert added == pytest.approx(0.5 * in_loss[1]["train/kl_k3"], rel=1e-3)


def test_lora_resume_and_reward_model_sources(tiny_model_dir, tmp_path):
    from tests.conftest import train_tiny_reward_models

    finals = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar", "categorical"))
    # 2 prompts per step, both in one micro-batch of 2 prompts x 2 completions
    kw = dict(use_peft=True, max_steps=2, num_generations=2, per_device_train_batch_size=4,
              gradient_accumulation_steps=1, save_steps=1, beta=0.1)  # fmt: skip
    run(config(tiny_model_dir, tmp_path / "a", reward=str(finals["scalar"]), **kw))
    out = run(config(tiny_model_dir, tmp_path / "b", reward=str(finals["categorical"]),
                     functional="win_probability", uncertainty_scaling=True, **kw))  # fmt: skip
    assert 0 <= out["final"]["reward"] <= 1
    rows = [
        json.loads(x) for x in (tmp_path / "b" / "rl" / "history.jsonl").read_text().splitlines()
    ]
    assert len(rows[0]["distribution"]) == 5
    assert (tmp_path / "b" / "rl" / "final" / "adapter_config.json").is_file()
    # resume: two more steps continue from step 2 and append to the history
    run(config(tiny_model_dir, tmp_path / "a", reward=str(finals["scalar"]),
               **{**kw, "max_steps": 4}, resume_from_checkpoint=True))  # fmt: skip
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "a" / "rl" / "history.jsonl").read_text().splitlines()
    ]
    assert sorted(set(steps)) == [1, 2, 3, 4] and len(steps) == 16


def test_a_resume_into_another_model_is_refused_and_changed_settings_are_said(
    tiny_model_dir, tmp_path, caplog
):
    """Another LoRA rank or target set does not fit the checkpoint: one line saying so, not a
    traceback of state-dict keys, nor an adapter PEFT loads in part without a word."""
    from distalign.checkpoint import CheckpointError

    kw = dict(use_peft=True, max_steps=1, num_generations=2, per_device_train_batch_size=4,
              gradient_accumulation_steps=1, save_steps=1, eval_on_start=False)  # fmt: skip
    run(config(tiny_model_dir, tmp_path, **kw))
    for other in ({"lora_r": 4}, {"lora_target_modules": ["q_proj", "v_proj"]}):
        caplog.clear()
        fits = r"does not fit .*settings it was written under \(.*last/run_config\.yaml"
        with caplog.at_level("WARNING"), pytest.raises(CheckpointError, match=fits):
            run(config(tiny_model_dir, tmp_path, **kw, **other, seed=1,
                       resume_from_checkpoint=True))  # fmt: skip
        assert "resuming with settings other than" in caplog.text
        assert "seed 0 -> 1" in caplog.text and next(iter(other)) in caplog.text


def test_moving_average_baseline_pools_every_process():
    """With several processes the baseline is updated from all of a step's rewards, so every
    process holds the same one (and the checkpoint of process 0 is every process's)."""
    cfg = RLTrainConfig(baseline="moving_average", ema=None)
    local = torch.tensor([1.0, 3.0])  # this process's rewards
    pooled = torch.tensor([1.0, 3.0, 5.0, 7.0])  # every process's
    state = TrainState()
    adv, base = advantages_for(cfg, local, None, state, pooled)
    # no past yet: the baseline is this step's mean over every process, not 0
    assert base == pytest.approx(4.0) and adv.tolist() == pytest.approx([-3.0, -1.0])
    assert state.baseline_mean == pytest.approx(4.0) and state.baseline_count == 4
    adv, base = advantages_for(cfg, torch.tensor([6.0, 2.0]), None, state)
    assert base == pytest.approx(4.0)
    assert adv.tolist() == pytest.approx([2.0, -2.0])


# --- reward sources: other tokenizers, weighted sums, columns, the explicit-reward rule ---


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def plain_rm(tmp_path_factory):
    """A GPT-2 classifier saved by transformers alone, with its own word-level tokenizer."""
    from tests.rl.test_rewards import build_gpt2_reward_model

    return build_gpt2_reward_model(tmp_path_factory.mktemp("plain_rm") / "final")


# 2 prompts per step in one micro-batch of 2 prompts x 2 completions
SHORT = dict(max_steps=2, num_generations=2, per_device_train_batch_size=4,
             gradient_accumulation_steps=1, max_eval_samples=2)  # fmt: skip


def test_trains_against_a_reward_model_distalign_did_not_train(tiny_model_dir, plain_rm, tmp_path):
    result = run(config(tiny_model_dir, tmp_path, reward=str(plain_rm), **SHORT))
    name = plain_rm.parent.name  # the run's folder, not "final"
    metrics = read_jsonl(tmp_path / "rl" / "metrics.jsonl")
    train = [m for m in metrics if "train/reward" in m]
    assert len(train) == 2 and all(f"train/reward/{name}" in m for m in train)
    assert all(m[f"train/reward/{name}"] == pytest.approx(m["train/reward"]) for m in train)
    assert result["final"][f"reward/{name}"] == pytest.approx(result["final"]["reward"])
    rows = read_jsonl(tmp_path / "rl" / "history.jsonl")
    assert len(rows) == 8 and all(set(r["rewards"]) == {name} for r in rows)
    assert (tmp_path / "rl" / "final" / "model.safetensors").is_file()


def test_a_weighted_sum_of_two_sources_trains_and_logs_both(tiny_model_dir, plain_rm, tmp_path):
    name = plain_rm.parent.name
    cfg = load_config(
        RLTrainConfig, None,
        [f"reward=[{plain_rm},tests.rl.test_train:reward_apple]", "reward_weights=[1.0,0.5]"],
    )  # fmt: skip
    assert cfg.reward == [str(plain_rm), "tests.rl.test_train:reward_apple"]
    run(config(tiny_model_dir, tmp_path, reward=cfg.reward, reward_weights=[1.0, 0.5], **SHORT))
    metrics = [m for m in read_jsonl(tmp_path / "rl" / "metrics.jsonl") if "train/reward" in m]
    for m in metrics:
        assert {f"train/reward/{name}", "train/reward/reward_apple"} <= set(m)
        combined = m[f"train/reward/{name}"] + 0.5 * m["train/reward/reward_apple"]
        assert m["train/reward"] == pytest.approx(combined, abs=1e-5)
    for row in read_jsonl(tmp_path / "rl" / "history.jsonl"):
        parts = row["rewards"]
        assert row["reward"] == pytest.approx(parts[name] + 0.5 * parts["reward_apple"], abs=1e-5)
    evals = [m for m in read_jsonl(tmp_path / "rl" / "metrics.jsonl") if "eval/reward" in m]
    assert evals and all("eval/reward/reward_apple" in m for m in evals)


def test_without_a_reward_only_the_benchmark_prompts_train(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a fruit.\n")
    assert RLTrainConfig().reward is None  # gold prompts: the gold judge
    with pytest.raises(ValueError, match=r"^reward: give a reward model.*prompts.txt"):
        RLTrainConfig(dataset_name=str(prompts))
    with pytest.raises(ValueError, match=r"^reward: .*not 'held_out\.jsonl'"):
        RLTrainConfig(eval_dataset_name="held_out.jsonl")
    with pytest.raises(ConfigError, match=r"^reward: "):
        load_config(RLTrainConfig, None, [f"dataset_name={prompts}"])
    # an explicit reward is fine anywhere, the gold judge included
    RLTrainConfig(dataset_name=str(prompts), reward="distalign.gold.judge:gold_reward")


class LengthOfAnswer:
    """A callable object reading the data set's ``answer`` column (TRL passes columns as
    keyword lists, one value per completion)."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, prompts, replies, answer):
        self.seen += [(p[-1]["content"], a) for p, a in zip(prompts, answer, strict=True)]
        return [-abs(len(r.split()) - int(a)) for r, a in zip(replies, answer, strict=True)]


def test_a_callable_object_reward_with_data_columns_from_python(tiny_model_dir, tmp_path):
    from distalign.api import train_policy
    from tests.conftest import write_jsonl

    # a prompt-only data set (TRL's shape) whose extra column the reward reads
    rows = [{"prompt": f"Say {n} words.", "answer": str(n)} for n in range(1, 5)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    reward = LengthOfAnswer()
    cfg = config(tiny_model_dir, tmp_path, reward=reward, dataset_name=str(prompts),
                 eval_dataset_name=None, **SHORT)  # fmt: skip
    result = train_policy(cfg)
    assert reward.seen and all(p == f"Say {a} words." for p, a in reward.seen)
    assert "reward/LengthOfAnswer" in result["final"]
    metrics = [m for m in read_jsonl(tmp_path / "rl" / "metrics.jsonl") if "train/reward" in m]
    assert all(m["train/reward/LengthOfAnswer"] <= 0 for m in metrics)


def test_the_reward_loads_first_and_leaves_the_lora_init(
    tiny_model_dir, plain_rm, tmp_path, monkeypatch
):
    """A wrong reward fails before the policy loads; loading a reward model first (even one
    whose loading draws random numbers) gives the LoRA weights the old order gave."""
    from accelerate.utils import set_seed
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from distalign.rl import rewards as rw
    from distalign.rl import train as rl_train

    def no_policy(*args, **kwargs):
        raise AssertionError("the policy was loaded before the reward was checked")

    with monkeypatch.context() as m:
        m.setattr(rl_train, "build_policy", no_policy)
        with pytest.raises(ValueError, match="does not exist"):
            run(config(tiny_model_dir, tmp_path / "bad", reward=str(tmp_path / "no" / "rm")))

    original = rw.load_one_source

    def drawing(spec, **kwargs):  # as a model that initialises weights on load would
        torch.rand(1000)
        return original(spec, **kwargs)

    monkeypatch.setattr(rw, "load_one_source", drawing)
    cfg = config(tiny_model_dir, tmp_path, reward=str(plain_rm), use_peft=True, lora_r=4,
                 **{**SHORT, "max_steps": 1}, learning_rate=0.0, eval_on_start=False)  # fmt: skip
    run(cfg)  # a step that moves nothing: final/ holds the adapter as built
    saved = load_file(tmp_path / "rl" / "final" / "adapter_model.safetensors")
    set_seed(cfg.seed)  # the order before: seed, then the policy
    policy, _, _ = rl_train.build_policy(cfg, None)
    built = get_peft_model_state_dict(policy)
    assert saved.keys() == built.keys() and any("lora_A" in k for k in saved)
    assert all(torch.equal(saved[k], built[k]) for k in saved)
    # and the check has teeth: without the RNG fork, the same draw changes the init
    monkeypatch.setattr(rw, "own_rng", contextlib.nullcontext)
    set_seed(cfg.seed)
    rw.load_reward_source(str(plain_rm))
    moved = get_peft_model_state_dict(rl_train.build_policy(cfg, None)[0])
    assert not all(torch.equal(saved[k], moved[k]) for k in saved)


def reward_minus_length(prompts, replies) -> list[float]:
    return [-float(len(r)) for r in replies]


def test_truncated_replies_leave_the_loss_and_rewards_clip(peaked_policy_dir, tmp_path):
    # every reply is cut at 2 tokens (the peaked model never stops that soon)
    cut = dict(max_completion_length=2, reward="tests.rl.test_train:reward_minus_length",
               reward_clip_range=[-10.0, 0.0], **SHORT)  # fmt: skip
    run(config(peaked_policy_dir, tmp_path / "a", mask_truncated_completions=True, **cut))
    masked = [m for m in read_jsonl(tmp_path / "a" / "rl" / "metrics.jsonl") if "train/kl" in m]
    assert masked and all(m["train/eos_rate"] == 0 for m in masked)
    assert all(m["train/grad_norm"] == 0 for m in masked)  # no reply left in the loss
    run(config(peaked_policy_dir, tmp_path / "b", **cut))
    kept = [m for m in read_jsonl(tmp_path / "b" / "rl" / "metrics.jsonl") if "train/kl" in m]
    assert any(m["train/grad_norm"] > 0 for m in kept)
    # clipped: the shaped reward (beta 0) stays in [-10, 0] while the raw one is below
    assert all(-10 <= m["train/shaped_reward"] <= 0 for m in kept)
    assert any(m["train/reward"] < -10 for m in kept)


def test_reward_clip_range_needs_low_below_high():
    with pytest.raises(ValueError, match="reward_clip_range"):
        RLTrainConfig(reward_clip_range=[1.0, -1.0])


def test_log_completions_prints_a_table_each_logging_step(peaked_policy_dir, tmp_path, capsys):
    run(config(peaked_policy_dir, tmp_path, log_completions=True, num_completions_to_print=3,
               logging_steps=2, **SHORT))  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("completions at step") == 1 and "completions at step 2" in out
    history = read_jsonl(tmp_path / "rl" / "history.jsonl")
    assert len(history) == 2 * 4 and all("advantage" in row for row in history)


@pytest.mark.parametrize("loss_type", ["sequence", "dapo"])
def test_micro_batches_that_cut_a_prompts_group_give_the_same_step(
    peaked_policy_dir, tmp_path, loss_type
):
    """TRL's shape, num_generations above per_device_train_batch_size: the group baseline is
    taken over the step's replies, so 4 replies in 1, 2 or 4 micro-batches make one update;
    DAPO's token count is the step's too."""
    from safetensors.torch import load_file

    weights = []
    for micro, accumulate in [(4, 1), (2, 2), (1, 4)]:
        out = tmp_path / f"m{micro}"
        run(config(peaked_policy_dir, out, max_steps=1, per_device_train_batch_size=micro,
                   gradient_accumulation_steps=accumulate, baseline="grpo", max_grad_norm=None,
                   eval_on_start=False, max_eval_samples=1, loss_type=loss_type))  # fmt: skip
        weights.append(load_file(out / "rl" / "final" / "model.safetensors"))
    start = AutoModelForCausalLM.from_pretrained(peaked_policy_dir).state_dict()
    moved = [k for k in weights[0] if not torch.equal(weights[0][k], start[k])]
    assert moved  # the step changed the weights, and by the same amount each way
    for other in weights[1:]:
        for k in weights[0]:
            torch.testing.assert_close(other[k], weights[0][k], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_leaves_the_first_steps_kl_at_zero(tiny_model_dir, tmp_path):
    """bf16=true autocasts the teacher-forced gradient pass only: the KL compares the
    sampler's log-probs with the reference's, both in the weights' float32, so the SFT policy
    against itself (LoRA starts at zero) reads 0 at step 1."""
    run(config(tiny_model_dir, tmp_path, bf16=True, use_peft=True, beta=0.1, max_steps=1,
               eval_on_start=False, max_eval_samples=1))  # fmt: skip
    row = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and abs(row["train/kl"]) < 1e-4, row


def test_runs_in_one_process_each_get_their_own_precision(tiny_model_dir, tmp_path):
    """A notebook trains in bf16, then in float32: accelerate would keep the first run's
    mixed precision (or refuse the second); each run gets its own."""
    from accelerate.state import AcceleratorState

    kw = dict(max_steps=1, eval_on_start=False, max_eval_samples=1)
    run(config(tiny_model_dir, tmp_path / "a", bf16=True, **kw))
    assert AcceleratorState().mixed_precision == "bf16"
    run(config(tiny_model_dir, tmp_path / "b", **kw))
    assert AcceleratorState().mixed_precision == "no"


def test_prompts_come_in_a_seeded_order_per_pass_or_in_order_without_shuffle_dataset():
    from distalign.rl.train import next_prompts

    prompts = list(range(5))
    state = TrainState()
    drawn = [next_prompts(prompts, state, 2, seed=3) for _ in range(5)]
    flat = [p for batch in drawn for p in batch]
    assert sorted(flat[:5]) == prompts and sorted(flat[5:]) == prompts  # each pass whole
    assert flat[:5] != prompts  # seed 3 shuffles
    state = TrainState()
    in_order = [next_prompts(prompts, state, 3, seed=3, shuffle=False) for _ in range(2)]
    assert in_order == [[0, 1, 2], [3, 4, 0]] and state.epoch == 1
    assert RLTrainConfig(shuffle_dataset=False, report_to="none").shuffle_dataset is False


@pytest.mark.parametrize("level", ["reply", "token"])
def test_several_updates_per_batch_of_rollouts_learn_and_log_their_clipping(
    peaked_policy_dir, tmp_path, level
):
    """num_iterations=3 (TRL's μ): three updates per batch of rollouts, the later ones
    clipped to the sampling policy, per reply (TRL RLOO's) or per token (TRL GRPO's); half
    the steps of test_learns_the_rewarded_token."""
    result = run(config(peaked_policy_dir, tmp_path, max_steps=15, num_iterations=3,
                        lr_scheduler_type="linear", importance_sampling_level=level))  # fmt: skip
    before, after = result["initial"]["reward"], result["final"]["reward"]
    assert after > before + 0.2, (before, after)
    metrics = [
        json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    ratios = [m["train/clip_ratio"] for m in metrics if "train/clip_ratio" in m]
    assert len(ratios) == 15 and all(0 <= r <= 1 for r in ratios) and max(ratios) > 0
    # the linear schedule runs over the 45 updates, not the 15 steps
    rates = [m["train/learning_rate"] for m in metrics if "train/learning_rate" in m]
    assert rates[0] == pytest.approx(2e-3 * 42 / 45) and rates[-1] == pytest.approx(0.0)


def test_steps_per_generation_updates_on_shares_of_one_batch_against_its_sampler(
    peaked_policy_dir, tmp_path, monkeypatch
):
    """steps_per_generation=2 × gradient_accumulation_steps (TRL's): one batch of 16 rollouts
    per step makes two updates, on 8 replies each. The second clips its ratio to the
    log-probs of the policy that sampled (a pass before the first update), brute-forced here
    against the sampler's own log-probs; the schedule runs over the updates."""
    import distalign.rl.train as train

    seen, step = [], train.policy_gradient_step

    def recording(t, ro, adv, cfg, old, span=None, kl=None):
        out = step(t, ro, adv, cfg, old, span, kl)
        copy = None if old is None else old.clone()
        seen.append((span, copy, (ro.logps * ro.mask).clone(), out[3].clone()))
        return out

    monkeypatch.setattr(train, "policy_gradient_step", recording)
    result = run(config(peaked_policy_dir, tmp_path, max_steps=15, gradient_accumulation_steps=1,
                        steps_per_generation=2, lr_scheduler_type="linear"))  # fmt: skip
    assert result["final"]["reward"] > result["initial"]["reward"] + 0.2
    assert [s[0] for s in seen] == [(0, 8), (8, 16)] * 15
    moved = 0.0
    for (_, first, *_), (_, old, sampled, now) in zip(seen[::2], seen[1::2], strict=True):
        assert first is None  # the first update is the on-policy REINFORCE step
        assert torch.allclose(old[8:], sampled[8:], atol=1e-4)  # the sampler's, per token
        moved = max(moved, (now - old[8:]).sum(-1).abs().max().item())
    assert moved > 0.1  # after the first update the policy reads them otherwise
    rows = [json.loads(x) for x in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 15 * 16  # 4 prompts × 4 samples per step
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    ratios = [m["train/clip_ratio"] for m in metrics if "train/clip_ratio" in m]
    assert len(ratios) == 15 and max(ratios) > 0
    rates = [m["train/learning_rate"] for m in metrics if "train/learning_rate" in m]
    assert rates[0] == pytest.approx(2e-3 * 28 / 30) and rates[-1] == pytest.approx(0.0)


def test_epoch_strategies_evaluate_and_save_where_a_pass_over_the_prompts_ends(
    tiny_model_dir, tmp_path, monkeypatch
):
    """TRL's eval_strategy / save_strategy ``epoch``: 6 prompts, 4 a step, so the passes end
    in steps 2 (prompts 4, 5, then the next pass's 0, 1), 3 (its 2–5) and 5."""
    import distalign.rl.train as rl_train
    from tests.conftest import write_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {w}"} for w in "abcdef"])
    saved = []
    save_state = rl_train.save_state
    monkeypatch.setattr(rl_train, "save_state", lambda t, state, *a, **k: (
        saved.append(state.step), save_state(t, state, *a, **k)))  # fmt: skip
    run(config(tiny_model_dir, tmp_path, dataset_name=str(prompts),
               eval_dataset_name=str(prompts), max_steps=6, max_eval_samples=1,
               eval_strategy="epoch", save_strategy="epoch", eval_on_start=False))  # fmt: skip
    evals = [m["step"] for m in read_jsonl(tmp_path / "rl" / "metrics.jsonl") if "eval/reward" in m]
    assert evals == [2, 3, 5, 6] and saved == [2, 3, 5, 6]  # 6: the run's end, as always
    assert [rl_train.pass_ended(TrainState(epoch=e, cursor=c, progress=p), 6)
            for e, c, p in ((0, 6, 0.5), (1, 0, 0.9), (1, 2, 0.9), (1, 2, 1.0))] == [
        True, True, True, False]  # fmt: skip


def test_save_total_limit_keeps_the_newest_step_policies(tiny_model_dir, tmp_path):
    run(config(tiny_model_dir, tmp_path, max_steps=4, save_steps=1, save_total_limit=2,
               max_eval_samples=1))  # fmt: skip
    checkpoints = tmp_path / "rl" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_00003", "step_00004"]


def test_save_only_model_keeps_the_optimizer_out_of_the_checkpoint(
    tiny_model_dir, tmp_path, caplog
):
    kw = dict(max_steps=1, max_eval_samples=1, use_peft=False, save_only_model=True)
    run(config(tiny_model_dir, tmp_path, **kw))
    last = tmp_path / "rl" / "checkpoints" / "last"
    assert (last / "trainer_state.json").is_file() and not (last / "optimizer.pt").exists()
    run(config(tiny_model_dir, tmp_path, **{**kw, "max_steps": 2, "resume_from_checkpoint": True}))
    assert "holds no optimizer state: AdamW's moments start from zero" in caplog.text
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 2


def test_a_kill_while_a_step_policy_is_written_leaves_it_to_be_written_again(
    tiny_model_dir, tmp_path, monkeypatch
):
    import distalign.rl.outputs as outputs
    from distalign.checkpoint import kept_steps

    written = outputs.save_policy

    def killed_at_step_2(model, tokenizer, folder, weights=None):
        if folder.name.startswith("step_00002"):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text("{}")  # part of it, then the kill
            raise KeyboardInterrupt
        written(model, tokenizer, folder, weights)

    monkeypatch.setattr(outputs, "save_policy", killed_at_step_2)
    cfg = config(tiny_model_dir, tmp_path, max_steps=3, save_steps=1, max_eval_samples=1)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    checkpoints = tmp_path / "rl" / "checkpoints"
    state = json.loads((checkpoints / "last" / "trainer_state.json").read_text())
    assert state["step"] == 1 and [s for s, _ in kept_steps(tmp_path / "rl")] == [1]
    assert not (checkpoints / "step_00002.tmp").exists()  # nothing half-written stays
    monkeypatch.setattr(outputs, "save_policy", written)
    run(dataclasses.replace(cfg, resume_from_checkpoint="true"))  # step 2 runs again
    assert [s for s, _ in kept_steps(tmp_path / "rl")] == [1, 2, 3]
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last", "step_00001", "step_00002", "step_00003"]  # fmt: skip


def test_a_resumed_run_logs_each_step_once_to_tensorboard_and_a_finished_one_does_nothing(
    tiny_model_dir, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import distalign.rl.train as train

    saved = train.save_state

    def killed_saving_step_3(t, state, cfg, keep):
        if state.step == 3:
            raise KeyboardInterrupt  # step 3 is logged, its checkpoint not written
        saved(t, state, cfg, keep)

    monkeypatch.setattr(train, "save_state", killed_saving_step_3)
    cfg = config(tiny_model_dir, tmp_path, max_steps=4, save_steps=1, max_eval_samples=1,
                 report_to="tensorboard")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(train, "save_state", saved)
    resumed = dataclasses.replace(cfg, resume_from_checkpoint="true")
    result = run(resumed)  # steps 3 and 4 run again
    events = EventAccumulator(str(tmp_path / "rl" / "distalign")).Reload()
    steps = [e.step for e in events.Scalars("train/reward")]
    assert steps == [1, 2, 3, 4], steps  # the killed run's step 3 is dropped, not doubled
    # a job relaunched after the end: nothing is sampled, logged or written again
    metrics = (tmp_path / "rl" / "metrics.jsonl").read_text()
    final = (tmp_path / "rl" / "final" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(train, "rollout", None)  # would fail if called
    assert run(resumed) == json.loads(json.dumps(result))
    assert (tmp_path / "rl" / "metrics.jsonl").read_text() == metrics
    assert (tmp_path / "rl" / "final" / "model.safetensors").stat().st_mtime_ns == final


def test_full_determinism_runs_with_deterministic_kernels_only(
    tiny_model_dir, tmp_path, monkeypatch
):
    for name in ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING",
                 "HCCL_DETERMINISTIC", "FLASH_ATTENTION_DETERMINISTIC"):  # fmt: skip
        monkeypatch.setenv(name, os.environ.get(name, ""))  # put back after the test
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    try:
        kw = dict(max_steps=2, max_eval_samples=2, full_determinism=True)
        first = run(config(tiny_model_dir, tmp_path / "a", **kw))
        assert torch.are_deterministic_algorithms_enabled()
        assert run(config(tiny_model_dir, tmp_path / "b", **kw))["final"] == first["final"]
    finally:
        torch.use_deterministic_algorithms(False)


def needs_answer(completions, answer, **kwargs):
    return [float(a in c) for c, a in zip(completions, answer, strict=True)]


def test_a_reward_functions_missing_column_stops_the_run_before_sampling(
    tiny_model_dir, tmp_path, monkeypatch
):
    import distalign.rl.train as train
    from distalign.rl.rewards import RewardFunctionError

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the reward's columns were checked")

    monkeypatch.setattr(train, "rollout", no_sampling)
    cfg = config(tiny_model_dir, tmp_path, reward="tests.rl.test_train.needs_answer",
                 eval_on_start=True)  # fmt: skip
    with pytest.raises(RewardFunctionError, match=r"needs the column\(s\) \['answer'\]"):
        run(cfg)


CALLS: list[list[str]] = []


def counting_reward(prompts, completions, **kwargs) -> list[float]:
    CALLS.append([str(p) for p in prompts])
    return [float(len(c)) for c in completions]


def test_num_generations_eval_samples_several_replies_per_held_out_prompt(tiny_model_dir, tmp_path):
    CALLS.clear()
    result = run(config(tiny_model_dir, tmp_path, reward="tests.rl.test_train.counting_reward",
                        max_steps=1, eval_on_start=True, max_eval_samples=2,
                        num_generations_eval=3))  # fmt: skip
    evaluations = [c for c in CALLS if len(c) == 6]  # the training step scores 16
    assert len(evaluations) == 2  # before step 1 and after the last
    for prompts in evaluations:  # each held-out prompt three times, in turn
        assert prompts[0] == prompts[1] == prompts[2] != prompts[3] == prompts[5]
    assert {"gold_mean", "reward", "kl"} <= result["final"].keys()


def test_steps_per_generation_with_accumulation_and_several_passes_clips_to_the_sampler(
    peaked_policy_dir, tmp_path, monkeypatch
):
    """Spans of two micro-batches (gradient_accumulation_steps=2), two spans per batch of
    rollouts, two passes (num_iterations=2): four updates per step, each after the first
    clipped to log-probs that are the sampler's own, in both passes."""
    import distalign.rl.train as train

    seen, step = [], train.policy_gradient_step

    def recording(t, ro, adv, cfg, old, span=None, kl=None):
        seen.append((span, None if old is None else old.clone(), (ro.logps * ro.mask).clone()))
        return step(t, ro, adv, cfg, old, span, kl)

    monkeypatch.setattr(train, "policy_gradient_step", recording)
    run(config(peaked_policy_dir, tmp_path, max_steps=3, per_device_train_batch_size=4,
               gradient_accumulation_steps=2, steps_per_generation=4, num_iterations=2,
               max_eval_samples=1))  # fmt: skip
    assert [s[0] for s in seen] == [(0, 8), (8, 16)] * 2 * 3
    for i, (span, old, sampled) in enumerate(seen):
        assert (old is None) == (i % 4 == 0)
        if old is not None:
            assert torch.allclose(old, sampled, atol=1e-4), (i, span)  # per token


def trl_logging_reward(completions, completion_ids, trainer_state, log_metric, log_extra, **kw):
    """A TRL reward function that uses every argument TRL gives it."""
    log_metric("ids_per_completion", sum(map(len, completion_ids)) / len(completion_ids))
    log_extra("step_seen", [trainer_state.global_step] * len(completions))
    log_extra("epoch_seen", [trainer_state.epoch] * len(completions))
    log_metric("kl", 123.0)  # distalign's own names: kept apart
    log_extra("reward", ["mine"] * len(completions))
    return [float(len(ids)) for ids in completion_ids]


def never_scores(completions, **kwargs):
    return [None] * len(completions)


@pytest.mark.parametrize("baseline", ["rloo", "remax"])  # remax scores greedy replies too
def test_trl_reward_functions_log_metrics_and_completion_columns(
    tiny_model_dir, tmp_path, baseline
):
    reward = ["tests.rl.test_train.trl_logging_reward", "tests.rl.test_train.never_scores"]
    # eval_on_start: the SFT policy's evaluation calls the function with a trainer_state too
    run(config(tiny_model_dir, tmp_path, reward=reward, max_steps=2, eval_on_start=True,
               max_eval_samples=1, baseline=baseline))  # fmt: skip
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "train/reward" in m]
    assert all(m["train/ids_per_completion"] == m["train/reward"] for m in steps)
    # a source that scored nothing logs no number, not 0 (TRL: NaN)
    assert all(m["train/reward/never_scores"] is None for m in steps)
    assert all(m["train/log_metric/kl"] == 123.0 and m["train/kl"] != 123.0 for m in steps)
    rows = [json.loads(x) for x in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()]
    assert {r["step"] - 1 for r in rows} == {r["step_seen"] for r in rows} == {0, 1}
    # fractional epochs, as transformers counts them during a step: 0, then 4 prompts into
    # the first pass
    epochs = {r["step"]: r["epoch_seen"] for r in rows}
    assert epochs[1] == 0 and 0 < epochs[2] < 0.1
    assert all(r["log_extra/reward"] == "mine" and r["reward"] != "mine" for r in rows)


def test_a_resumed_run_keeps_its_updates_per_step():
    """The learning-rate schedule counts optimizer updates: a resumed run must make as many
    per step, whichever keys make them (a checkpoint from before steps_per_generation saved
    num_iterations alone)."""
    from distalign.rl.train import check_resumable

    def resume(state, **kw):
        check_resumable(RLTrainConfig(report_to="none", **kw), dataclasses.asdict(state))

    with pytest.raises(ValueError, match=r"made 1 optimizer updates per step.* make 2"):
        resume(TrainState(step=2, num_iterations=1), num_iterations=2)
    two = TrainState(step=2, updates_per_step=2)  # steps_per_generation=8 over 4 micro-batches
    with pytest.raises(ValueError, match=r"made 2 optimizer updates .* make 4"):
        resume(two, steps_per_generation=8, gradient_accumulation_steps=2)
    resume(two, steps_per_generation=4, gradient_accumulation_steps=2)  # 2 updates: resumes
    resume(TrainState(step=2, num_iterations=1), gradient_accumulation_steps=2)  # 1 either way
    with pytest.raises(ValueError, match="made 1 optimizer updates"):
        resume(TrainState(step=2, num_iterations=1), steps_per_generation=8)


def test_a_resumed_run_that_changes_the_prompt_order_mid_pass_is_warned(caplog):
    from distalign.rl.train import begin

    state = TrainState(step=2, cursor=3, shuffle_dataset=True)
    with caplog.at_level("WARNING"):
        begin(None, state, [], RLTrainConfig(shuffle_dataset=False, report_to="none"))
    assert "shuffle_dataset=False: the checkpoint's run drew this pass" in caplog.text


def test_a_run_resumed_on_another_number_of_processes_starts_a_new_pass(caplog, monkeypatch):
    from distalign.rl.train import begin

    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = RLTrainConfig(report_to="none")
    state = TrainState(step=2, epoch=0, cursor=8, processes=2)  # written by 2 processes
    with caplog.at_level("WARNING"):
        begin(None, state, [], cfg)
    assert "resumed on 1 process(es) where the checkpoint's run had 2" in caplog.text
    assert (state.epoch, state.cursor, state.processes) == (1, 0, 1)
    caplog.clear()
    same = TrainState(step=2, cursor=8, processes=1)
    with caplog.at_level("WARNING"):
        begin(None, same, [], cfg)
    assert "process" not in caplog.text and (same.epoch, same.cursor) == (0, 8)


def test_a_resumed_run_with_other_held_out_prompts_says_the_table_mixes_them(caplog):
    from distalign.rl.train import evaluate_sft

    cfg = RLTrainConfig(report_to="none")
    state = TrainState(step=2, initial_eval={"reward": 0.1}, initial_eval_prompts=2)
    with caplog.at_level("WARNING"):
        evaluate_sft(None, state, ["p"] * 2, cfg)  # the same prompts: nothing to say
        assert not caplog.text
        evaluate_sft(None, state, ["p"], cfg)
    assert "resumed with 1 held-out prompts; the SFT policy was measured on 2" in caplog.text


def test_a_hybrid_recurrent_policy_trains_with_one_reply_per_row(smol_tokenizer, tmp_path, caplog):
    """LFM2 (convolutions beside attention): sampling shares the prompt's cache, recurrent
    states included; the teacher-forced passes read one reply per row, so the untrained
    policy's KL to its reference copy reads 0."""
    from tests.conftest import tiny_family_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_family_config("lfm2", len(smol_tokenizer))[0])
    model.save_pretrained(tmp_path / "lfm2")
    smol_tokenizer.save_pretrained(tmp_path / "lfm2")
    with caplog.at_level("WARNING"):
        run(config(tmp_path / "lfm2", tmp_path, beta=0.1, max_steps=1, eval_on_start=False,
                   max_eval_samples=1))  # fmt: skip
    assert "Lfm2ForCausalLM has conv layers" in caplog.text
    row = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and abs(row["train/kl"]) < 1e-4, row


def test_held_out_prompts_all_for_0_kept_from_equal_pairs_or_an_error_before_training(
    tmp_path, smol_tokenizer, monkeypatch
):
    from types import SimpleNamespace

    import distalign.rl.train as rl_train

    # a standard preference file whose pairs all have equal replies: its prompts still count,
    # and reach reward functions as strings
    rows = [{"prompt": f"Question {i}?", "chosen": "Same.", "rejected": "Same."} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    data = dict(dataset_name=str(tmp_path / "p.jsonl"), eval_dataset_name=None)
    cfg = config("unused", tmp_path, **data, max_eval_samples=0)
    train, held_out = rl_train.prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert len(held_out) == 5 and len(train) == 5
    assert held_out[0].text == "Question 0?"
    # a transcript or a multi-turn prompt among them: messages for every prompt, not a mix
    rows.append({"prompt": "\n\nHuman: Hi?\n\nAssistant: Yes.\n\nHuman: Sure?\n\nAssistant:",
                 "chosen": " A", "rejected": " B"})  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, held_out = rl_train.prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert len(held_out) == 6 and not any(getattr(p, "text", None) for p in held_out)
    monkeypatch.setattr(rl_train, "load_prompts", lambda *a, **k: [])
    with pytest.raises(ValueError, match="no held-out prompts in"):
        rl_train.prompt_sets(cfg, one, smol_tokenizer, reward_apple)


def test_skip_bad_rows_counts_the_malformed_prompt_rows(tmp_path, smol_tokenizer, caplog):
    from types import SimpleNamespace

    from distalign.data.formats import PreferenceFormatError
    from distalign.rl.train import prompt_sets

    rows = [{"prompt": "Fine?"}, {"prompt": 3}, {"prompt": "Also fine?"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    data = dict(dataset_name=str(tmp_path / "p.jsonl"), eval_dataset_name=None)
    with pytest.raises(PreferenceFormatError, match=r"p\.jsonl:2"):
        prompt_sets(config("unused", tmp_path, **data), one, smol_tokenizer, reward_apple)
    cfg = config("unused", tmp_path, **data, skip_bad_rows=True)
    with caplog.at_level("WARNING"):
        train, _ = prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert len(train) == 2 and "1 of 3 rows skipped as malformed" in caplog.text
    # a first line that is not JSON does not hide that the file holds prompts
    (tmp_path / "p.jsonl").write_text("{not json\n" + '{"prompt": "Fine?"}\n')
    train, _ = prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert [p[0]["content"] for p in train] == ["Fine?"]


def test_max_prompt_length_cuts_from_the_left_and_null_never_cuts(smol_tokenizer):
    from distalign.cli import parse_command
    from distalign.data.pairs import render_prompt_ids
    from distalign.rl.rollouts import _encode_prompts

    chat = [[{"role": "user", "content": "A prompt long enough to be cut somewhere."}]]
    full = render_prompt_ids(smol_tokenizer, chat[0])

    def cfg(n):
        return RLTrainConfig(max_prompt_length=n, report_to="none")

    assert _encode_prompts(smol_tokenizer, chat, cfg(5)) == [full[-5:]]
    assert _encode_prompts(smol_tokenizer, chat, cfg(None)) == [full]
    assert parse_command("rl train", ["max_prompt_length=null"]).max_prompt_length is None


SEEN_STEPS: list[int] = []


def step_spy(completions, trainer_state, **kw):
    SEEN_STEPS.append(trainer_state.global_step)
    return [0.0] * len(completions)


def test_reward_functions_see_the_updates_made_so_far_in_evaluations_too(tiny_model_dir, tmp_path):
    SEEN_STEPS.clear()
    run(config(tiny_model_dir, tmp_path, reward="tests.rl.test_train:step_spy", max_steps=2,
               eval_on_start=True, max_eval_samples=1))  # fmt: skip
    # the SFT evaluation, steps 1 and 2 (their samples), the final evaluation after 2 updates
    assert SEEN_STEPS == [0, 0, 1, 2]


FAILING_CALLS: list[int] = []


def fails_in_the_final_evaluation(prompts, completions, **kwargs) -> list[float]:
    """Scores the training steps' replies (calls 1 and 2); fails on the third call."""
    FAILING_CALLS.append(len(completions))
    if len(FAILING_CALLS) == 3:
        raise RuntimeError("the judge is down")
    return [float(len(c)) for c in completions]


def test_an_error_in_the_final_evaluation_keeps_the_trained_steps(tiny_model_dir, tmp_path):
    FAILING_CALLS.clear()
    kw = dict(reward="tests.rl.test_train:fails_in_the_final_evaluation", max_steps=2,
              eval_on_start=False, max_eval_samples=1)  # fmt: skip
    with pytest.raises(RuntimeError, match="the judge is down"):
        run(config(tiny_model_dir, tmp_path, **kw))
    last = tmp_path / "rl" / "checkpoints" / "last"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 2
    result = run(config(tiny_model_dir, tmp_path, **kw, resume_from_checkpoint=True))
    assert len(FAILING_CALLS) == 4 and result["final"]  # the evaluation alone, no step again


def test_prompts_longer_than_max_prompt_length_are_said(tmp_path, smol_tokenizer, caplog):
    from types import SimpleNamespace

    from distalign.rl.train import prompt_sets

    rows = [{"prompt": "Short?"}, {"prompt": "word " * 300 + "?"}, {"prompt": "Also short?"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    data = dict(dataset_name=str(tmp_path / "p.jsonl"), eval_dataset_name=None)
    with caplog.at_level("WARNING"):
        prompt_sets(config("unused", tmp_path, **data), one, smol_tokenizer, reward_apple)
    said = [r.getMessage() for r in caplog.records if "max_prompt_length" in r.getMessage()]
    assert said == [f"1 of 3 {name} prompts are longer than max_prompt_length 256 tokens and are "
                    "cut from the left (max_prompt_length=null keeps them whole)"
                    for name in ("training", "held-out")]  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING"):
        cfg = config("unused", tmp_path, **data, max_prompt_length=None)
        prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert "max_prompt_length" not in caplog.text


def test_a_folder_without_a_test_split_is_evaluated_on_its_training_prompts(
    tmp_path, smol_tokenizer, caplog
):
    from types import SimpleNamespace

    from distalign.data.files import MissingSplitError
    from distalign.rl.train import prompt_sets
    from tests.conftest import write_jsonl

    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"prompt": "One?"}, {"prompt": "Two?"}])
    one = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True)
    cfg = config("unused", tmp_path, dataset_name=str(tmp_path / "ds"), eval_dataset_name=None)
    with caplog.at_level("WARNING"):
        train, held_out = prompt_sets(cfg, one, smol_tokenizer, reward_apple)
    assert [p.text for p in held_out] == [p.text for p in train] == ["One?", "Two?"]
    assert "no file for split 'test'" in caplog.text and "its training data" in caplog.text
    assert cfg.held_out_split == "train"  # every table says where it measured; the key kept
    # a held-out source or a split named on purpose must be there: a typo stops the run
    (tmp_path / "ds2").mkdir()
    write_jsonl(tmp_path / "ds2" / "train.jsonl", [{"prompt": "Three?"}])
    for named in (dict(eval_dataset_name=str(tmp_path / "ds2")),
                  dict(eval_dataset_name=str(tmp_path / "ds")),
                  dict(eval_dataset_name=None, dataset_test_split="tset")):  # fmt: skip
        other = config("unused", tmp_path, dataset_name=str(tmp_path / "ds"), **named)
        with pytest.raises(MissingSplitError):
            prompt_sets(other, one, smol_tokenizer, reward_apple)


def test_trls_reward_spread_and_per_token_kl_are_logged_from_the_step_s_replies(
    tiny_model_dir, tmp_path
):
    import numpy as np

    run(config(tiny_model_dir, tmp_path, max_steps=2, beta=0.1, max_eval_samples=2,
               eval_strategy="no", reward="tests.rl.test_train:reward_length"))  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    for step in (1, 2):
        got = next(m for m in metrics if m.get("step") == step and "train/kl" in m)
        mine = [r for r in rows if r["step"] == step]
        rewards = np.array([r["reward"] for r in mine])
        assert got["train/reward_std"] == pytest.approx(rewards.std(ddof=1), abs=1e-6)
        stds = np.array([r["shaped_reward"] for r in mine]).reshape(-1, 4).std(1, ddof=1)
        assert got["train/frac_reward_zero_std"] == pytest.approx(np.isclose(stds, 0).mean())
        per_token = sum(r["kl"] for r in mine) / sum(r["length"] for r in mine)
        assert got["train/kl_per_token"] == pytest.approx(per_token, abs=1e-6)
        assert got["train/kl"] == pytest.approx(np.mean([r["kl"] for r in mine]), abs=1e-6)
        assert got["train/reward_std/reward_length"] == pytest.approx(rewards.std(ddof=1),
                                                                      abs=1e-6)  # fmt: skip
        assert np.isfinite(got["train/loss"])


def test_reward_functions_get_the_run_s_intervals_in_their_trainer_state():
    from distalign.rl.train import trainer_state_of

    cfg = RLTrainConfig(report_to="none", max_steps=20, logging_steps=1, eval_steps=0.25,
                        save_strategy="no", gradient_accumulation_steps=2,
                        steps_per_generation=4)  # fmt: skip
    ts = trainer_state_of(TrainState(step=3), cfg)
    assert cfg.updates_per_step == 2
    assert (ts.global_step, ts.max_steps, ts.logging_steps, ts.eval_steps, ts.save_steps) == (
        6, 40, 2, 10, 0)  # fmt: skip


def test_replies_no_reward_scores_train_with_advantage_0_as_in_trl(tiny_model_dir, tmp_path):
    import math

    run(config(tiny_model_dir, tmp_path, max_steps=2, beta=0.1, max_eval_samples=3,
               eval_strategy="no", reward="tests.rl.test_train:reward_some"))  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "rl" / "history.jsonl").read_text().splitlines()]
    unscored = [r for r in rows if r["reward"] is None]
    assert unscored and all(r["advantage"] == 0 and r["shaped_reward"] is None for r in unscored)
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "train/reward" in m]
    assert train and all(math.isfinite(m["train/reward"]) for m in train)
    step1 = [r["reward"] for r in rows if r["step"] == 1 and r["reward"] is not None]
    assert train[0]["train/reward"] == pytest.approx(sum(step1) / len(step1), rel=1e-5)


def test_loss_weights_count_tokens_as_trl_grpo_does():
    """dapo counts the step's whole batch of rollouts over every process (TRL's
    num_items_in_batch), bnpo each micro-batch of one process; replies cut and masked out
    count no tokens."""
    from types import SimpleNamespace

    from distalign.rl.train import loss_weights

    mask = (torch.arange(8)[None, :] < torch.tensor([2, 6, 4, 8])[:, None]).float()
    ro = SimpleNamespace(mask=mask, finished=[True, True, True, False])
    # another process with 4 replies of 40 tokens in all
    other = SimpleNamespace(reduce=lambda x, reduction: x + torch.tensor([40.0, 4.0]))
    t = SimpleNamespace(accelerator=other)

    def weights(**kw):
        cfg = RLTrainConfig(report_to="none", max_completion_length=8,
                            per_device_train_batch_size=2, **kw)  # fmt: skip
        return pytest.approx(loss_weights(t, ro, cfg).tolist())

    assert weights(loss_type="sequence") == [1.0] * 4
    assert weights(loss_type="grpo") == [0.5, 1 / 6, 0.25, 0.125]
    assert weights(loss_type="dr_grpo") == [0.125] * 4
    assert weights(loss_type="bnpo") == [2 / 8] * 2 + [2 / 12] * 2
    assert weights(loss_type="dapo") == [8 / 60] * 4  # 8 replies, 20 + 40 tokens
    masked = weights(loss_type="bnpo", mask_truncated_completions=True)
    assert masked == [2 / 8] * 2 + [2 / 4] * 2  # the cut reply's 8 tokens are out of the count


SEEN_HORIZONS: list[int] = []


def horizon_spy(completions, trainer_state, **kw):
    SEEN_HORIZONS.append(trainer_state.max_steps)
    return [0.0] * len(completions)


def test_max_steps_minus_one_runs_num_train_epochs_passes_over_the_prompts(
    tiny_model_dir, tmp_path, caplog
):
    """TRL's default, max_steps -1: 10 prompts, 4 per step, fill 2 steps per pass; 1.5 passes
    round up to 3 steps (the schedule and the reward functions count them), and the user's
    config keeps its -1."""
    prompts = tmp_path / "prompts.jsonl"
    words = [*FAVOURITES[:5], "one", "two", "three", "four", "five"]
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in words))
    SEEN_HORIZONS.clear()
    cfg = config(tiny_model_dir, tmp_path, reward="tests.rl.test_train:horizon_spy",
                 dataset_name=str(prompts), max_steps=-1, num_train_epochs=1.5,
                 eval_on_start=False, max_eval_samples=1)  # fmt: skip
    run(cfg)
    assert cfg.max_steps == -1 and set(SEEN_HORIZONS) == {3}
    steps = [json.loads(line)["step"] for line in (tmp_path / "rl" / "history.jsonl").open()]
    assert max(steps) == 3
    with pytest.raises(ConfigError, match="a step takes 4 per process while there are 3"):
        cfg.for_prompts(3)
    # 0 counts passes too, as transformers reads any max_steps that is not positive
    zero = dataclasses.replace(cfg, max_steps=0)
    assert zero.for_prompts(10).max_steps == 3 and zero.for_prompts(10) is not zero
    # resumed for two passes: 4 steps; the change said is the epochs', not a max_steps -1 -> 3
    longer = dataclasses.replace(cfg, num_train_epochs=2.0, resume_from_checkpoint=True)
    with caplog.at_level(logging.WARNING):
        run(longer)
    assert "num_train_epochs 1.5 -> 2.0" in caplog.text and "max_steps -1" not in caplog.text
    assert set(SEEN_HORIZONS) == {3, 4}


def test_token_level_clip_ratio_counts_tokens_as_trl_does(peaked_policy_dir, tmp_path, monkeypatch):
    """TRL's clip_ratio/region_mean at token level: clipped tokens over all tokens, not the
    mean of each reply's share (a short reply fully clipped beside long ones weighs little)."""
    import distalign.rl.train as train

    step, lengths = train.policy_gradient_step, []

    def first_reply_clipped(t, ro, adv, cfg, old, span=None, kl=None):
        out = step(t, ro, adv, cfg, old, span, kl)
        if old is None:
            return out
        lengths.append(ro.mask[span[0] : span[1]].sum(-1))
        share = torch.zeros(span[1] - span[0])
        share[0] = 1.0
        return (*out[:4], share, out[5])

    monkeypatch.setattr(train, "policy_gradient_step", first_reply_clipped)
    run(config(peaked_policy_dir, tmp_path, max_steps=1, num_iterations=2,
               importance_sampling_level="token", max_eval_samples=1))  # fmt: skip
    (n,) = lengths  # one clipped update over all 16 replies, after the first (unclipped)
    metrics = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    (ratio,) = [m["train/clip_ratio"] for m in metrics if "train/clip_ratio" in m]
    assert ratio == pytest.approx(float(n[0] / (2 * n.sum())))  # TRL counts both updates


def test_top_entropy_quantile_keeps_the_high_entropy_tokens_in_the_loss(
    peaked_policy_dir, tmp_path, monkeypatch
):
    """TRL GRPO's top_entropy_quantile: the micro-batch's tokens below the entropy quantile
    leave the loss, in the REINFORCE step and the clipped ones (token level)."""
    import distalign.rl.train as train

    kept, masked, losses, loss = [], train.kept_tokens, [], train.clipped_policy_loss

    def recording(t, entropies, mask, cfg):
        keep = masked(t, entropies, mask, cfg)
        kept.append((float(keep.sum()), float(mask.sum())))
        return keep

    def loss_recording(*args, **kw):
        losses.append(kw.get("keep", args[-1] if len(args) > 8 else None))
        return loss(*args, **kw)

    monkeypatch.setattr(train, "kept_tokens", recording)
    monkeypatch.setattr(train, "clipped_policy_loss", loss_recording)
    run(config(peaked_policy_dir, tmp_path, max_steps=2, num_iterations=2,
               importance_sampling_level="token", top_entropy_quantile=0.25,
               max_eval_samples=1))  # fmt: skip
    assert len(kept) == 2 * 2 * 2  # steps × passes × micro-batches
    shares = [k / n for k, n in kept]
    assert all(0.15 < x < 0.45 for x in shares), shares  # about a quarter (ties round up)
    # every update's loss, the first (ratio 1) included, gets the kept tokens
    assert len(losses) == 8 and all(k is not None for k in losses)


def test_truncated_replies_stay_out_of_token_statistics_when_masked():
    from types import SimpleNamespace

    from distalign.rl.train import _counted

    mask = torch.ones(3, 2)
    ro = SimpleNamespace(finished=[True, False, True, True])
    on = SimpleNamespace(mask_truncated_completions=True)
    assert _counted(mask, ro, on, 1, 4).tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    off = SimpleNamespace(mask_truncated_completions=False)
    assert _counted(mask, ro, off, 1, 4) is mask


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "vespo"])
def test_trl_grpo_s_other_objectives_learn_over_several_updates(
    peaked_policy_dir, tmp_path, loss_type
):
    """TRL GRPO's cispo, sapo and vespo losses for the updates after a step's first (three per
    batch of rollouts here): each learns the rewarded token; cispo logs the share of ratios it
    capped (TRL's cispo_clip_ratio), the soft ones no clip ratio."""
    result = run(config(peaked_policy_dir, tmp_path, max_steps=15, num_iterations=3,
                        lr_scheduler_type="linear", loss_type=loss_type,
                        importance_sampling_level="token", epsilon_high=1.1))  # fmt: skip
    before, after = result["initial"]["reward"], result["final"]["reward"]
    assert after > before + 0.2, (before, after)
    metrics = [
        json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    ratios = [m["train/clip_ratio"] for m in metrics if "train/clip_ratio" in m]
    if loss_type == "cispo":
        assert len(ratios) == 15 and max(ratios) > 0
    else:
        assert ratios == []


def test_policy_loss_takes_loss_type_s_objective_at_ratio_one_and_after():
    """The first update of a step (no sampling log-probs given) is REINFORCE's for the clipped
    objective and each objective's own at ratio 1 (cispo's scaled by an ε_max below 1); later
    ones take the objective named, with its settings."""
    from distalign.losses import cispo_loss, reinforce_loss, sapo_loss, vespo_loss
    from distalign.rl.train import policy_loss

    torch.manual_seed(0)
    lp = (-torch.rand(3, 5)).requires_grad_()
    mask = torch.ones(3, 5)
    adv = torch.tensor([1.0, -0.5, 0.3])
    old = lp.detach() + torch.randn(3, 5) * 0.3

    def grad(loss):
        return torch.autograd.grad(loss, lp)[0]

    reinforce = grad(reinforce_loss(lp, mask, adv))
    cfg = RLTrainConfig(report_to="none")
    loss, clip = policy_loss(lp, mask, None, adv, cfg)
    assert clip is None and torch.allclose(grad(loss), reinforce)
    for loss_type, scale in (("cispo", 0.2), ("sapo", 1.0), ("vespo", 1.0), ("luspo", 1.0)):
        cfg = RLTrainConfig(report_to="none", loss_type=loss_type)
        loss, clip = policy_loss(lp, mask, None, adv, cfg)
        assert torch.allclose(grad(loss), reinforce * scale), loss_type
        assert (clip is None) == (loss_type != "cispo")  # cispo counts its caps
    cfg = RLTrainConfig(report_to="none", loss_type="cispo", epsilon_high=1.1,
                        importance_sampling_level="token")  # fmt: skip
    loss, clip = policy_loss(lp, mask, old, adv, cfg)
    want, share = cispo_loss(lp, mask, old, adv, 1.1, "token")
    assert torch.allclose(grad(loss), grad(want)) and torch.equal(clip, share)
    cfg = RLTrainConfig(report_to="none", loss_type="sapo", sapo_temperature_pos=2.0,
                        sapo_temperature_neg=3.0, importance_sampling_level="token")  # fmt: skip
    loss, clip = policy_loss(lp, mask, old, adv, cfg)
    assert clip is None
    assert torch.allclose(grad(loss), grad(sapo_loss(lp, mask, old, adv, 2.0, 3.0, "token")))
    cfg = RLTrainConfig(report_to="none", loss_type="vespo", vespo_k_pos=1.0)
    loss, _ = policy_loss(lp, mask, old, adv, cfg)
    assert torch.allclose(grad(loss), grad(vespo_loss(lp, mask, old, adv, k_pos=1.0)))


def test_off_policy_mask_leaves_drifted_replies_pushed_down_out_of_later_updates():
    from distalign.rl.train import policy_loss

    lp = torch.full((3, 4), -1.0, requires_grad=True)
    mask = torch.ones(3, 4)
    adv = torch.tensor([-1.0, 1.0, -1.0])
    old = lp.detach() + torch.tensor([[2.0], [2.0], [0.1]])  # replies 0 and 1 drifted
    cfg = RLTrainConfig(report_to="none", off_policy_mask_threshold=0.5, epsilon=0.9,
                        epsilon_high=100.0)  # fmt: skip
    loss, _ = policy_loss(lp, mask, old, adv, cfg)
    (grad,) = torch.autograd.grad(loss, lp)
    assert (grad[0] == 0).all() and (grad[1] != 0).all() and (grad[2] != 0).all()
    loss, _ = policy_loss(lp, mask, None, adv, cfg)  # the first update: nothing drifted yet
    (grad,) = torch.autograd.grad(loss, lp)
    assert (grad != 0).all()
    with pytest.raises(ValueError, match="off_policy_mask_threshold must be >= 0"):
        RLTrainConfig(report_to="none", off_policy_mask_threshold=-1.0)


def constant_reward(prompts, replies) -> list[float]:
    return [1.0] * len(replies)


def test_entropy_coef_raises_the_policy_s_entropy(peaked_policy_dir, tmp_path):
    """TRL GRPO's entropy bonus: with every reward alike (advantages 0, no KL) the bonus is all
    that moves the peaked policy, and its token entropy rises at every step."""

    def entropies(path):
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return [m["train/entropy"] for m in rows if "train/entropy" in m]

    settings = dict(reward="tests.rl.test_train:constant_reward", max_steps=6, eval_on_start=False,
                    weight_decay=0.0)  # fmt: skip
    run(config(peaked_policy_dir, tmp_path / "bonus", entropy_coef=0.5, **settings))
    run(config(peaked_policy_dir, tmp_path / "none", **settings))
    bonus, none = entropies(tmp_path / "bonus" / "rl"), entropies(tmp_path / "none" / "rl")
    # the peaked policy is near uniform away from its favourite words: the bonus takes every
    # step's sampled tokens up towards log V (10.80 nats), while without it their entropy
    # moves only with the tokens sampled
    assert all(b > a for a, b in itertools.pairwise(bonus)), bonus
    assert bonus[-1] > max(none[1:]) + 0.3, (bonus, none)


def test_a_lora_policy_trains_on_its_adapter_or_merged(peaked_policy_dir, tmp_path, caplog):
    """An earlier LoRA run's final/ as the model: with use_peft its adapter goes on training
    (not a second adapter on top), the reference its base model, so the KL starts where the
    first run left it; with use_peft=false it is merged and trains in full, the reference the
    merged policy, so the KL starts at 0."""
    from peft import PeftModel

    kw = dict(use_peft=True, max_steps=3, num_generations=2, per_device_train_batch_size=4,
              gradient_accumulation_steps=1, beta=0.1, eval_on_start=False,
              max_eval_samples=2, lora_r=4)  # fmt: skip
    run(config(peaked_policy_dir, tmp_path / "a", **kw))
    first = tmp_path / "a" / "rl" / "final"
    assert (first / "adapter_config.json").is_file()

    def first_kl(path):
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return next(m["train/kl"] for m in rows if "train/kl" in m)

    for use_peft in (True, False):
        out = tmp_path / f"b_{use_peft}"
        with caplog.at_level(logging.INFO):
            run(config(first, out, **{**kw, "max_steps": 1, "use_peft": use_peft,
                                      "lora_r": 8}))  # fmt: skip
        assert f"{first} is a LoRA adapter" in caplog.text
        saved = out / "rl" / "final"
        if use_peft:  # the same adapter, rank 4 (lora_r unread), trained on
            assert json.loads((saved / "adapter_config.json").read_text())["r"] == 4
            base = AutoModelForCausalLM.from_pretrained(peaked_policy_dir)
            model = PeftModel.from_pretrained(base, saved)
            assert abs(first_kl(out / "rl")) > 1e-3
        else:
            assert (saved / "config.json").is_file()
            assert not (saved / "adapter_config.json").exists()
            assert abs(first_kl(out / "rl")) < 1e-4
            model = AutoModelForCausalLM.from_pretrained(saved)
        assert model is not None


def test_prompts_already_rendered_through_the_template_are_said(tiny_model_dir, tmp_path, caplog):
    from tests.conftest import write_jsonl

    chat = [{"role": "user", "content": "Name a fruit."}]
    from distalign.models.load import load_tokenizer

    text = load_tokenizer(str(tiny_model_dir)).apply_chat_template(chat, tokenize=False)
    path = write_jsonl(tmp_path / "templated.jsonl", [{"prompt": text}] * 4)
    with caplog.at_level(logging.WARNING):
        run(config(tiny_model_dir, tmp_path, dataset_name=str(path), eval_dataset_name=str(path),
                   max_steps=1, num_generations=2, per_device_train_batch_size=4,
                   gradient_accumulation_steps=1, eval_on_start=False))  # fmt: skip
    assert "looks rendered through a chat template already" in caplog.text


def test_sapo_keeps_high_entropy_tokens_at_the_default_level_and_cispo_counts_its_caps(caplog):
    """At ratio 1 SAPO's loss with the entropy mask takes each token's ratio, as the clipped
    loss does (the reply level has no per-token terms to keep); CISPO's first update counts
    its capped ratios, as TRL's cispo_clip_ratio counts every update; either at the reply
    level over several updates is warned of."""
    from distalign.losses import reinforce_loss
    from distalign.rl.train import policy_loss

    lp = (-torch.rand(2, 4)).requires_grad_()
    mask, adv = torch.ones(2, 4), torch.tensor([1.0, -1.0])
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    cfg = RLTrainConfig(report_to="none", loss_type="sapo", top_entropy_quantile=0.5)
    loss, _ = policy_loss(lp, mask, None, adv, cfg, keep)
    (grad,) = torch.autograd.grad(loss, lp)
    (want,) = torch.autograd.grad(reinforce_loss(lp, mask * keep, adv), lp)
    torch.testing.assert_close(grad, want)
    _, capped = policy_loss(lp, mask, None, adv, RLTrainConfig(report_to="none", loss_type="cispo"))
    assert capped.tolist() == [1.0, 0.0]  # ratio 1 > ε_max 0.2 where A > 0
    with caplog.at_level(logging.WARNING):
        RLTrainConfig(report_to="none", loss_type="sapo", num_iterations=2,
                      importance_sampling_level="reply")  # fmt: skip
    assert "product of its tokens' ratios" in caplog.text


def test_the_ratio_level_unset_is_the_one_trl_takes_for_the_loss_type(caplog):
    """GRPO's loss types take each token's ratio in TRL's GRPO, luspo GSPO's sequence ratio,
    the REINFORCE loss (TRL's RLOO) the reply's; a level given is kept. Several updates per
    step say how many updates TRL's max_steps makes."""
    levels = {"sequence": "reply", "grpo": "token", "dapo": "token", "bnpo": "token",
              "dr_grpo": "token", "cispo": "token", "sapo": "token", "vespo": "token",
              "luspo": "sequence"}  # fmt: skip
    for loss_type, level in levels.items():
        cfg = RLTrainConfig(report_to="none", loss_type=loss_type, epsilon_high=5.0)
        assert cfg.ratio_level == level, loss_type
    given = RLTrainConfig(report_to="none", loss_type="dapo", importance_sampling_level="reply")
    assert given.ratio_level == "reply"
    # resolved when read: a loss_type set later (an override of the Python API) is followed
    import dataclasses

    assert dataclasses.replace(RLTrainConfig(report_to="none"), loss_type="grpo").ratio_level == (
        "token"
    )
    with caplog.at_level(logging.WARNING):
        RLTrainConfig(report_to="none", loss_type="sapo", num_iterations=2, max_steps=15)
    assert "product of its tokens' ratios" not in caplog.text
    assert ("max_steps=15 here makes 30 updates, as TRL's max_steps=30; TRL's max_steps=15 is "
            "max_steps between 7 and 8 here") in caplog.text  # fmt: skip


def test_two_seeds_never_share_a_sampling_stream():
    """A step's sampling batch b draws from stream_seed(seed, step) + b × 1_000_003: seed s's
    second batch was once seed s + 1's first; epochs' prompt orders likewise."""
    from distalign.rl.train import stream_seed

    seeds = [stream_seed(s, t) + b * 1_000_003 for s in range(4) for t in range(50)
             for b in range(4)]  # fmt: skip
    assert len(set(seeds)) == len(seeds)
    assert [stream_seed(0, t) for t in range(3)] == [0, 1, 2]  # seed 0: as before
    assert 0 <= stream_seed(2**62, 5) < 2**63  # any seed fits torch's generator
