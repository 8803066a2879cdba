"""Model resolution and loading; the real SmolLM2 conversion is a slow test."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from distalign.models.load import (
    ModelNotFoundError,
    _load_settings,
    attention_mask_for,
    cache_dir,
    load_policy,
    load_tokenizer,
    prefix_sharing_for,
    recurrent_layer_types,
    resolve_model,
    unwrap,
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
    (tmp_path / "final").mkdir()  # a training run's output_dir stands for its final model
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str((tmp_path / "final").resolve())


def test_embedded_model_cached_on_another_machine_is_its_alias(tmp_path, monkeypatch):
    # a LoRA adapter trained elsewhere names its base by that machine's cache folder
    monkeypatch.setenv("DISTALIGN_CACHE", str(tmp_path / "here"))
    here = tmp_path / "here" / "models" / "smollm2-135m-instruct"
    here.mkdir(parents=True)
    (here / "config.json").write_text("{}")  # already converted here
    elsewhere = "/home/someone/.cache/distalign/models/smollm2-135m-instruct"
    assert resolve_model(elsewhere) == str(here)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("/home/someone/.cache/distalign/models/another-model")


def test_hub_ids_pass_through(monkeypatch):
    # with a network (tests/test_hub.py: without one)
    monkeypatch.setattr("distalign.models.load.offline_if_unreachable", lambda: None)
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_a_weight_missing_from_the_checkpoint_is_named(tiny_model_dir, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    for f in tiny_model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="distalign.models.load"):
        load_policy(str(tiny_model_dir))
        assert not caplog.records
        load_policy(str(tmp_path))
    assert "model.norm.weight" in caplog.text and "randomly initialised" in caplog.text


class _Wrapper(torch.nn.Module):  # what DDP and accelerate look like from outside
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_unwrap_sees_through_ddp_our_wrappers_and_peft(tiny_policy):
    from distalign.models.lora import add_lora
    from distalign.rl.logprobs import ReplyLogprobs

    model, _ = tiny_policy
    assert unwrap(model) is model
    peft = add_lora(model, "CAUSAL_LM", r=4, alpha=8, dropout=0.0)
    assert unwrap(peft) is model
    assert unwrap(_Wrapper(ReplyLogprobs(peft))) is model


def test_attention_mask_for_eager_is_additive(tiny_policy):
    model, _ = tiny_policy
    mask = torch.tensor([[True, False], [True, True]])[None, None]  # (1, 1, 2, 2)
    assert attention_mask_for(model, mask) is mask  # sdpa takes the boolean mask
    model.set_attn_implementation("eager")
    additive = attention_mask_for(model, mask)
    assert additive.dtype == model.dtype
    assert additive[0, 0].tolist() == [[0.0, torch.finfo(model.dtype).min], [0.0, 0.0]]


def _config(**keys):
    config = SimpleNamespace(_attn_implementation="sdpa", **keys)
    config.get_text_config = lambda: config
    return SimpleNamespace(config=config, dtype=torch.float32)


def test_attention_mask_for_applies_a_sliding_window_over_positions():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]  # (1, 1, 4, 4)
    positions = torch.arange(4)[None]
    band = (torch.arange(4)[:, None] - torch.arange(4)[None]) < 2  # q − k < window
    assert attention_mask_for(_config(), causal) is causal  # no window
    windowed = attention_mask_for(_config(sliding_window=2), causal, positions)  # every layer
    assert torch.equal(windowed[0, 0], causal[0, 0] & band)
    # per layer type, as the model's forward takes a mapping
    per_type = attention_mask_for(
        _config(sliding_window=2, layer_types=["sliding_attention", "full_attention"]),
        causal,
        positions,
    )
    assert per_type.keys() == {"sliding_attention", "full_attention"}
    assert per_type["full_attention"] is causal
    assert torch.equal(per_type["sliding_attention"], windowed)
    # the window counts positions, not columns: a second reply restarts after the prompt
    shared = torch.tensor(  # prompt (0, 1), reply a (2, 3), reply b (2)
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]],
        dtype=torch.bool,
    )[None, None]
    got = attention_mask_for(_config(sliding_window=2), shared, torch.tensor([[0, 1, 2, 3, 2]]))
    assert got[0, 0, 4].tolist() == [False, True, False, False, True]


def test_attention_mask_for_refuses_layers_a_block_mask_cannot_serve():
    # a recurrent layer's state would run from one reply of a row into the next
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    model = _config(layer_types=["linear_attention", "full_attention"])
    with pytest.raises(ValueError, match=r"linear_attention layers: .* prefix_sharing=false"):
        attention_mask_for(model, mask)
    assert attention_mask_for(model, mask, shared=False) is mask  # one reply per row: exact
    chunked = _config(layer_types=["chunked_attention", "full_attention"])
    with pytest.raises(ValueError, match="chunked_attention layers"):  # the mask skips chunks
        attention_mask_for(chunked, mask, shared=False)


def test_prefix_sharing_is_off_for_recurrent_layers(caplog):
    hybrid = _config(layer_types=["conv", "full_attention", "sliding_attention"])
    assert recurrent_layer_types(hybrid) == ["conv"]
    assert recurrent_layer_types(_config(layer_types=["sliding_attention"])) == []
    with caplog.at_level("WARNING"):
        assert not prefix_sharing_for("sdpa", True, "rm train", hybrid)
    assert "has conv layers" in caplog.text and "prefix_sharing is off" in caplog.text
    assert prefix_sharing_for("sdpa", True, "rm train", _config())


def test_attention_mask_for_refuses_kernels_without_4d_masks():
    # flash attention would read a (R, 1, T, T) block mask as padding, or run unmasked
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"flash_attention_2 takes no 4-D attention mask.*sdpa"):
        attention_mask_for(model, mask)


def test_loaders_place_and_pass_the_attention_kernel(tiny_model_dir):
    model, _ = load_policy(
        str(tiny_model_dir), device="cpu", dtype="auto", attn_implementation="eager"
    )
    assert next(model.parameters()).device.type == "cpu"
    assert model.dtype == torch.float32  # auto on the CPU
    assert model.config._attn_implementation == "eager"
    default, _ = load_policy(str(tiny_model_dir))
    assert default.config._attn_implementation == "sdpa"


def test_flash_attention_is_refused_where_it_cannot_run(tiny_model_dir):
    # without autocast (inference commands) the kernels need a CUDA GPU and half precision
    with pytest.raises(ValueError, match=r"flash_attention_2 runs on a CUDA GPU.*cpu in float32"):
        load_policy(str(tiny_model_dir), device="cpu", attn_implementation="flash_attention_2")
    # training loaders (device=None) keep float32 weights under mixed precision: allowed here
    _, kwargs = _load_settings(None, "float32", "flash_attention_2", False)
    assert kwargs["attn_implementation"] == "flash_attention_2"
    assert kwargs["dtype"] == torch.float32


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

    torch.manual_seed(0)
    rng = torch.get_rng_state()
    path = resolve_model("smollm2-135m-instruct")  # converts: the tests' cache starts empty
    # the conversion leaves the global RNG alone, so the first run of a seed equals the next
    assert torch.equal(torch.get_rng_state(), rng)
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
        config=SamplingConfig(max_completion_length=24, temperature=0),
    )
    assert "Paris" in out.texts[0]
    assert load_tokenizer("smollm2-135m-instruct").chat_template == tokenizer.chat_template


def test_a_local_folder_resolves_to_its_absolute_path(tiny_model_dir, monkeypatch):
    """A LoRA adapter records its base by the name the model was loaded with: a relative
    folder would load only from where training ran."""
    from distalign.models.load import resolve_model

    monkeypatch.chdir(tiny_model_dir.parent)
    assert resolve_model(tiny_model_dir.name) == str(tiny_model_dir.resolve())


def test_a_reward_model_is_refused_as_a_policy(tmp_path):
    """A sequence classifier would load as a causal LM (its output layer tied to the
    embeddings, or drawn at random) and be sampled without a word."""
    import json

    from distalign.models.load import ModelNotFoundError, load_policy, refuse_classifier

    rm = tmp_path / "rm"
    rm.mkdir()
    config = {"architectures": ["LlamaForSequenceClassification"]}
    (rm / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match=r"LlamaForSequenceClassification, a classifier"):
        load_policy(str(rm))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS"}))
    with pytest.raises(ModelNotFoundError, match="a LoRA adapter of task SEQ_CLS"):
        refuse_classifier(lora, "lora")
    (lora / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    refuse_classifier(lora, "lora")
    (lora / "config.json").write_text("[1, 2]")  # not an object: left to the loader
    refuse_classifier(lora, "lora")
