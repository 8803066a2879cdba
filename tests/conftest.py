"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded package) and a tiny random
Llama that uses it, so tests exercise the real chat template and pad == eos without the
135M-parameter model."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The tests never reach the Hugging Face Hub: the libraries read the local cache only, with
# or without a network (tests/test_hub.py turns this off to test what happens without one).
# Set before the hub libraries are imported: they read it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's model cache."""
    old = os.environ.get("DISTALIGN_CACHE")
    os.environ["DISTALIGN_CACHE"] = str(tmp_path_factory.mktemp("distalign-cache"))
    yield
    if old is None:
        os.environ.pop("DISTALIGN_CACHE", None)
    else:
        os.environ["DISTALIGN_CACHE"] = old


@pytest.fixture(scope="session")
def smol_tokenizer(_isolated_cache):
    from distalign.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


# tokens: under every test prompt's length, so that a window a pass ignores shows in its output
TINY_WINDOW = 8
# the keys of tiny_llama_config that other families' tiny configs take too
TINY_SHAPE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
              "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip


def tiny_family_config(family: str, vocab_size: int):
    """A tiny random config of a family whose forward differs from Llama's where a pass that
    calls the backbone and head apart would notice: a sliding window on attention (Gemma 2/3,
    Mistral, Qwen 2 with its window on), a cap or scale on the logits (Gemma, Cohere, Granite,
    HyperCLOVA X, MiniCPM3). Returns (config, the name ``rl.logprobs.logit_transform`` should
    find)."""
    import transformers as t

    window = {"sliding_window": TINY_WINDOW}
    families = {
        "gemma2": (t.Gemma2Config, {"head_dim": 8, "final_logit_softcapping": 0.5, **window}),
        "gemma3": (
            t.Gemma3TextConfig,
            {
                "head_dim": 8,
                "final_logit_softcapping": 0.5,
                "layer_types": ["sliding_attention", "full_attention"],
                **window,
            },
        ),
        "mistral": (t.MistralConfig, window),
        "qwen2": (t.Qwen2Config, {"use_sliding_window": True, "max_window_layers": 1, **window}),
        "cohere": (t.CohereConfig, {"logit_scale": 0.25}),
        "granite": (t.GraniteConfig, {"logits_scaling": 4.0}),
        "hyperclovax": (t.HyperCLOVAXConfig, {"logits_scaling": 4.0}),
        # scales the hidden states before the head, by hidden_size / dim_model_base
        "minicpm3": (
            t.MiniCPM3Config,
            dict(
                q_lora_rank=16,
                kv_lora_rank=16,
                qk_nope_head_dim=8,
                qk_rope_head_dim=8,
                v_head_dim=8,
                dim_model_base=8,
                num_key_value_heads=4,
            ),
        ),
        # hybrids: short convolutions, gated delta-rule linear attention beside attention
        "lfm2": (t.Lfm2Config, {"layer_types": ["conv", "full_attention"]}),
        "qwen3_5": (
            getattr(t, "Qwen3_5TextConfig", None),
            dict(
                layer_types=["linear_attention", "full_attention"],
                head_dim=8,
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=8,
                linear_value_head_dim=8,
            ),
        ),
    }
    cls, extra = families[family]
    if cls is None:
        pytest.skip(f"this transformers has no {family}")
    if family == "lfm2" and int(t.__version__.split(".")[0]) < 5:
        pytest.skip("LFM2's cache in transformers 4 cannot select rows (reorder_cache)")
    shape = tiny_llama_config(vocab_size).to_dict()
    config = cls(**({k: shape[k] for k in TINY_SHAPE} | extra))
    expected = {
        "gemma2": "final_logit_softcapping soft cap 0.5",
        "gemma3": "final_logit_softcapping soft cap 0.5",
        "cohere": "× logit_scale 0.25",
        "granite": "÷ logits_scaling 4.0",
        "hyperclovax": "× logits_scaling 4.0",
        "minicpm3": "÷ logits_scaling 4.0",
    }
    return config, expected.get(family, "none")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A saved tiny random Llama + the SmolLM2 tokenizer: loadable by path like any model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(smol_tokenizer)))
    model.save_pretrained(path, safe_serialization=True)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def base_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a tokenizer without a chat template, as a base model has."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-base")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_policy(tiny_model_dir):
    from distalign.models.load import load_policy

    return load_policy(str(tiny_model_dir))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a test's child Python: the repository root ahead of the caller's
    PYTHONPATH (so ``tests.`` imports), plus ``extra``."""
    root = str(Path(__file__).parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": path} | extra


def run_launcher(cmd: list[str], env: dict[str, str], timeout: int = 300):
    """``cmd`` (a launcher and its processes) to the end; returns the CompletedProcess. Past
    ``timeout`` it fails the test with every process's Python stack: each runs with
    ``PYTHONFAULTHANDLER``, so SIGABRT makes it print where it waits before it ends."""
    import signal
    import subprocess
    import time

    import psutil  # accelerate's dependency

    env = env | {"PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        pass
    # the launcher held still (it would end a worker's peers once one dies), then each worker,
    # then the launcher; a process may be gone already
    gone = (psutil.NoSuchProcess,)
    launcher = psutil.Process(proc.pid)
    with contextlib.suppress(*gone):
        launcher.suspend()
    family = [*launcher.children(recursive=True), launcher]
    for p in family:  # one at a time, so that the stacks do not interleave
        with contextlib.suppress(*gone):
            if p is launcher:
                p.resume()
            p.send_signal(signal.SIGABRT)
            for _ in range(100):  # up to 10 s; a worker stays a zombie under its launcher
                if p.status() == psutil.STATUS_ZOMBIE:
                    break
                time.sleep(0.1)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for p in family:
            with contextlib.suppress(*gone):
                p.kill()
        out, err = proc.communicate()
    stacks = (out + err)[-12000:]
    pytest.fail(f"no exit after {timeout} s; the processes' stacks:\n{stacks}", pytrace=False)


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def train_tiny_reward_models(model_dir: Path, out: Path, heads, n_bins: int = 5) -> dict[str, Path]:
    """One-step reward models of the given heads on a few generated pairs -> head -> final/."""
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.train import run
    from tests.rm.test_train import make_pairs

    data = out / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / "train.jsonl", make_pairs(16, 0))
    write_jsonl(data / "test.jsonl", make_pairs(4, 1))
    finals = {}
    for head in heads:
        cfg = RMTrainConfig(
            model_name_or_path=str(model_dir), dataset_name=str(data), head=head, n_bins=n_bins,
            max_steps=1, max_length=64, max_prompt_length=32, report_to="none",
            output_dir=str(out / f"rm_{head}"),
        )  # fmt: skip
        run(cfg)
        finals[head] = out / f"rm_{head}" / "final"
    return finals
