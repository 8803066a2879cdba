"""REINFORCE on the tiny model: it learns a rewarded token with either baseline; the loop
runs with reward-model sources and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from distalign.rl.train import RLTrainConfig, TrainState, advantages_for, run

# Tokens the peaked tiny model likes to emit; the reward pays for the first one.
FAVOURITES = [" apple", " river", " stone", " cloud", " paper", " light", " music", " garden"]


def reward_apple(prompts, replies) -> list[float]:
    """Share of words that are 'apple' (the 'particular token')."""
    out = []
    for reply in replies:
        words = reply.split()
        out.append(sum(w == "apple" for w in words) / max(len(words), 1))
    return out


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


def test_moving_average_baseline_pools_every_process():
    """With several processes the baseline is updated from all of a step's rewards, so every
    process holds the same one (and the checkpoint of process 0 is every process's)."""
    cfg = RLTrainConfig(baseline="moving_average", ema=None)
    local = torch.tensor([1.0, 3.0])  # this process's rewards
    pooled = torch.tensor([1.0, 3.0, 5.0, 7.0])  # every process's
    state = TrainState()
    adv, base = advantages_for(cfg, local, None, state, pooled)
    assert base == 0.0 and torch.equal(adv, local)  # the first step has no past to subtract
    assert state.baseline_mean == pytest.approx(4.0) and state.baseline_count == 4
    adv, base = advantages_for(cfg, torch.tensor([6.0, 2.0]), None, state)
    assert base == pytest.approx(4.0)
    assert adv.tolist() == pytest.approx([2.0, -2.0])
