"""The model keys rm train and rl train share with TRL's ModelConfig: LoRA targets and
variants, model_init_kwargs, model_revision, disable_dropout."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

from distalign.config import load_config
from distalign.models.load import _load_settings, load_policy, unwrap
from distalign.models.lora import add_lora
from distalign.models.options import disable_dropout
from distalign.rl.config import RLTrainConfig
from distalign.rm.config import RMTrainConfig
from tests.conftest import tiny_llama_config


def _adapted(model) -> set[str]:
    names = (n for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in names}


def test_lora_keys_reach_peft(tiny_model_dir):
    cfg = RMTrainConfig(use_peft=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"],
                        use_rslora=True, use_dora=True, lora_task_type="SEQ_CLS")  # fmt: skip
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    model = add_lora(base, **cfg.lora_kwargs("SEQ_CLS"))
    assert _adapted(model) == {"q_proj", "v_proj"}
    peft = model.peft_config["default"]
    assert peft.use_rslora and peft.use_dora and peft.r == 4
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())  # DoRA


def test_lora_modules_to_save_train_in_full(tiny_model_dir):
    cfg = RLTrainConfig(lora_r=4, lora_modules_to_save=["norm"])
    policy, _ = load_policy(str(tiny_model_dir))
    model = add_lora(policy, **cfg.lora_kwargs("CAUSAL_LM"))
    full = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert "base_model.model.model.norm.modules_to_save.default.weight" in full
    assert all("norm.modules_to_save" in n for n in full)


def test_a_target_module_the_model_lacks_is_named(tiny_model_dir):
    policy, _ = load_policy(str(tiny_model_dir))
    cfg = RLTrainConfig(lora_target_modules=["c_attn"])
    with pytest.raises(ValueError, match=r"LoRA: .*c_attn"):
        add_lora(policy, **cfg.lora_kwargs("CAUSAL_LM"))


def test_lora_task_type_of_another_command_is_refused(caplog):
    why = r"lora_task_type=SEQ_CLS: this command.s LoRA task is CAUSAL_LM \(policy\)"
    with pytest.raises(ValueError, match=why):
        RLTrainConfig(use_peft=True, lora_task_type="SEQ_CLS")
    with pytest.raises(ValueError, match=r"lora_task_type=TOKEN_CLS: this command.s LoRA task"):
        RMTrainConfig(use_peft=True, lora_task_type="TOKEN_CLS")
    # TRL ModelConfig's default in a dump: nothing without adapters, SEQ_CLS with them (said)
    with caplog.at_level(logging.WARNING):
        RMTrainConfig(lora_task_type="CAUSAL_LM")
        assert not caplog.text
        cfg = RMTrainConfig(use_peft=True, lora_task_type="CAUSAL_LM")
    assert "lora_task_type=CAUSAL_LM (TRL ModelConfig's default) is read as SEQ_CLS" in caplog.text
    assert cfg.lora_kwargs("SEQ_CLS")["task_type"] == "SEQ_CLS"
    with pytest.raises(ValueError, match="lora_target_modules"):
        RLTrainConfig(lora_target_modules=3)


def test_model_init_kwargs_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_init_kwargs:\n  torch_dtype: bfloat16\n  low_cpu_mem_usage: true\n")
    cfg = load_config(RMTrainConfig, str(path), ["model_revision=v1.0"])
    kwargs = cfg.load_kwargs()
    assert kwargs["dtype"] == "bfloat16" and kwargs["revision"] == "v1.0"
    assert kwargs["init_kwargs"] == {"low_cpu_mem_usage": True}
    cli = load_config(RLTrainConfig, None, ["model_init_kwargs={trust_remote_code: true}"])
    assert cli.load_kwargs()["trust_remote_code"] is True
    _, settings = _load_settings(None, "bfloat16", "sdpa", False, "v1.0", {"device_map": None})
    assert settings["dtype"] == torch.bfloat16 and settings["revision"] == "v1.0"
    assert "device_map" in settings


def test_model_init_kwargs_and_revision_reach_from_pretrained(tiny_model_dir):
    cfg = RMTrainConfig(model_init_kwargs={"dtype": torch.bfloat16}, model_revision="main")
    policy, _ = load_policy(str(tiny_model_dir), **cfg.load_kwargs())
    assert next(policy.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_disable_dropout_makes_training_mode_deterministic(smol_tokenizer, kind):
    torch.manual_seed(0)
    if kind == "llama":  # dropout as a float the attention reads, no nn.Dropout
        config = tiny_llama_config(len(smol_tokenizer), attention_dropout=0.3)
    else:  # nn.Dropout layers
        config = GPT2Config(vocab_size=len(smol_tokenizer), n_embd=32, n_layer=2, n_head=4,
                            resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()
    saved = model.config.to_dict()
    model = add_lora(model, "CAUSAL_LM", r=4, alpha=8, dropout=0.3,
                     target_modules=["c_attn"] if kind == "gpt2" else "all-linear")  # fmt: skip
    with torch.no_grad():  # adapters that act, so that their dropout shows
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert not torch.equal(model(ids).logits, model(ids).logits)
    assert disable_dropout(model) > 0
    torch.testing.assert_close(model(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert disable_dropout(model) == 0
    assert unwrap(model).config.to_dict() == saved  # a saved model keeps its dropout settings


def test_dropout_defaults_follow_trl():
    assert RMTrainConfig().disable_dropout is True  # RewardConfig's default
    assert RLTrainConfig().disable_dropout is False  # RLOOConfig's default


def test_chat_template_path_gives_a_base_model_a_template(tiny_model_dir, base_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from distalign.models.load import load_tokenizer
    from distalign.models.reward_model import build_reward_model

    base = base_model_dir  # the tiny model without a chat template: plain text by default
    assert load_tokenizer(str(base)).chat_template.startswith("{#- distalign:plain")
    template = tmp_path / "plain.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    cfg = RMTrainConfig(model_name_or_path=str(base), chat_template_path=str(template))
    _, tokenizer = build_reward_model(cfg.model_name_or_path, **cfg.load_kwargs())
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "user: hi\n"
    # a tokenizer folder lends its template
    from_folder = load_tokenizer(str(base), chat_template=str(tiny_model_dir))
    assert from_folder.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(str(tiny_model_dir), chat_template=str(base))


def test_every_adapter_loads_its_base_at_the_revision_it_names(tmp_path, monkeypatch):
    """A LoRA policy, a LoRA reward model and another tool's LoRA classifier all load their
    base through one rule: the adapter's base_model_name_or_path at the adapter's revision."""
    import json

    from distalign.models import load
    from distalign.models.classifier import load_sequence_classifier
    from distalign.models.reward_model import META_FILE, load_reward_model

    seen = []

    class Stop(Exception):
        pass

    def fake(auto_class, path, **kwargs):
        seen.append((auto_class.__name__, path, kwargs["revision"]))
        raise Stop

    monkeypatch.setattr(load, "_from_pretrained", fake)
    folder = tmp_path / "adapter"
    folder.mkdir()
    settings = {"base_model_name_or_path": "owner/base", "revision": "v2", "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(Stop):
        load.load_policy(str(folder))
    settings["task_type"] = "SEQ_CLS"
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(Stop):
        load_sequence_classifier(folder)
    (folder / META_FILE).write_text(json.dumps({"head": "scalar"}))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: None)
    with pytest.raises(Stop):
        load_reward_model(folder)
    assert seen == [
        ("AutoModelForCausalLM", "owner/base", "v2"),
        ("AutoModelForSequenceClassification", "owner/base", "v2"),
        ("AutoModelForSequenceClassification", "owner/base", "v2"),
    ]
