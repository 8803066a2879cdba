"""Reference log-probs are the SFT policy's, a fixed function: computed in eval mode (dropout
off) whatever mode the policy is in, which is restored after."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from distalign.rl.config import RLTrainConfig
from distalign.rl.logprobs import reference_mode, reply_logprobs
from distalign.rl.rollouts import Rollouts, reference_logprobs
from tests.conftest import tiny_llama_config

PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
REPLIES = [[12, 13, 14, 2], [15, 16, 2], [17, 18, 19, 20, 2], [21, 2]]  # k = 2 per prompt


@pytest.fixture()
def dropout_policy():
    """A tiny Llama with heavy attention dropout, in train mode (as between RL steps)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_llama_config(64, attention_dropout=0.5, attn_implementation="eager")
    )
    return model.train()


def rollouts() -> Rollouts:
    logps = [[-1.0] * len(r) for r in REPLIES]
    return Rollouts(["a", "b"], PROMPTS, REPLIES, logps, [True] * 4, ["x"] * 4, k=2, device="cpu")


def config() -> RLTrainConfig:
    return RLTrainConfig(num_generations=2, per_device_train_batch_size=2, report_to="none")


def test_dropout_makes_train_mode_log_probs_random(dropout_policy):
    """The check below has teeth: in train mode two passes differ."""
    groups = [REPLIES[:2], REPLIES[2:]]
    with torch.no_grad():
        a = torch.cat(reply_logprobs(dropout_policy, PROMPTS, groups, pad_token_id=0)[0])
        b = torch.cat(reply_logprobs(dropout_policy, PROMPTS, groups, pad_token_id=0)[0])
    assert not torch.equal(a, b)


def test_reference_log_probs_with_lora_are_deterministic(dropout_policy):
    from distalign.models.lora import add_lora

    policy = add_lora(dropout_policy, "CAUSAL_LM", r=4, alpha=8, dropout=0.3).train()
    first = reference_logprobs(policy, None, rollouts(), config(), pad_id=0)
    second = reference_logprobs(policy, None, rollouts(), config(), pad_id=0)
    assert torch.equal(first, second)
    assert policy.training and all(m.training for m in policy.modules())  # mode restored
    with reference_mode(policy) as ref:  # the adapters are off, dropout too
        assert ref is policy and not any(m.training for m in ref.modules())


def test_reference_log_probs_from_a_separate_model_are_deterministic(dropout_policy):
    ref_model = copy.deepcopy(dropout_policy).train()
    ref_model.get_submodule("model.layers.0").eval()  # a submodule's own mode survives
    first = reference_logprobs(dropout_policy, ref_model, rollouts(), config(), pad_id=0)
    second = reference_logprobs(dropout_policy, ref_model, rollouts(), config(), pad_id=0)
    assert torch.equal(first, second)
    assert ref_model.training and not ref_model.get_submodule("model.layers.0").training
    # and they are the eval-mode log-probs of the SFT weights
    groups = [REPLIES[:2], REPLIES[2:]]
    with torch.no_grad():
        expected = reply_logprobs(ref_model.eval(), PROMPTS, groups, pad_token_id=0)[0]
    for row, lp in zip(first, expected, strict=True):
        torch.testing.assert_close(row[: len(lp)], lp)
