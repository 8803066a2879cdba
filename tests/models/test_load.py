"""Model resolution and loading; the real SmolLM2 conversion is a slow test."""

from __future__ import annotations

import json
import time

import pytest
import torch

from distalign.models.load import (
    ModelNotFoundError,
    cache_dir,
    load_backbone,
    load_policy,
    load_tokenizer,
    resolve_model,
)


def test_smollm2_tokenizer_pads_with_end_of_turn(smol_tokenizer):
    # The trap every later computation must avoid: pad == eos == the end of every chat turn.
    assert smol_tokenizer.pad_token == smol_tokenizer.eos_token == "<|im_end|>"
    assert smol_tokenizer.padding_side == "right"
    assert "<|im_start|>" in smol_tokenizer.chat_template


def test_alias_tokenizer_does_not_convert_the_model(smol_tokenizer):
    assert (cache_dir() / "tokenizers" / "smollm2-135m-instruct").is_dir()
    assert not (cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").exists()


def test_local_folder(tiny_model_dir):
    model, tokenizer = load_policy(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    assert model.dtype == torch.float32
    assert tokenizer.pad_token_id == 2
    backbone, _ = load_backbone(str(tiny_model_dir))
    assert not hasattr(backbone, "lm_head")


def test_bf16_load(tiny_model_dir):
    model, _ = load_policy(str(tiny_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_policy(str(tiny_model_dir), dtype="fp8")


def test_missing_or_non_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_pass_through():
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_pickle_checkpoints_are_refused(tiny_model_dir, tmp_path):
    # A folder with only a pickled pytorch_model.bin must not be unpickled.
    model, tokenizer = load_policy(str(tiny_model_dir))
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_policy(str(tmp_path))


@pytest.mark.slow
def test_embedded_smollm2_converts_once_loads_fast_and_answers():
    from distalign.models.generate import SamplingConfig, sample_replies

    path = resolve_model("smollm2-135m-instruct")
    config = json.loads(
        (cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").read_text()
    )
    assert "quantization_config" not in config
    assert (cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    start = time.perf_counter()
    model, tokenizer = load_policy("smollm2-135m-instruct")
    assert time.perf_counter() - start < 10, "a cached load must take seconds"
    assert path == str(cache_dir() / "models" / "smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert all(p.requires_grad for p in model.parameters())  # trainable, not "quantised"
    out = sample_replies(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        config=SamplingConfig(max_new_tokens=24, temperature=0),
    )
    assert "Paris" in out.texts[0]
    assert load_tokenizer("smollm2-135m-instruct").chat_template == tokenizer.chat_template
