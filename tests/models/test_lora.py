"""LoRA: what trains, what is adapted, and the reference with adapters off."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distalign.models.load import load_policy, unwrap
from distalign.models.lora import add_lora


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_reward_model_head_trains_in_full_and_base_stays_frozen(tiny_model_dir):
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    model = add_lora(base, "SEQ_CLS", r=4, alpha=8, dropout=0.1)
    trainable = _trainable(model)
    head = {n for n in trainable if "lora_" not in n}
    assert head == {"base_model.model.score.modules_to_save.default.weight"}
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.peft_config["default"].lora_dropout == 0.1
    assert unwrap(model) is base


def test_policy_adapters_start_at_zero_and_can_be_disabled(tiny_model_dir):
    policy, _ = load_policy(str(tiny_model_dir))
    ids = torch.tensor([[5, 6, 7]])
    before = policy(ids).logits
    model = add_lora(policy, "CAUSAL_LM", r=4, alpha=8, dropout=0.0)
    assert not any("lm_head" in n for n in _trainable(model))
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)  # B = 0 at start
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert not torch.allclose(model(ids).logits, before)
    with model.disable_adapter():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_unknown_task_type(tiny_model_dir):
    policy, _ = load_policy(str(tiny_model_dir))
    with pytest.raises(ValueError, match="task_type"):
        add_lora(policy, "TOKEN_CLS", r=4, alpha=8, dropout=0.0)
