"""Where every command runs: the device/dtype resolver (torch's device queries monkeypatched,
so no GPU is needed), what each command hands its loader, the 4-D-mask rule of the attention
kernels, and (``-m gpu``) the commands on a real CUDA device."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import distalign.models.load as load
from distalign import api
from distalign.command_configs import (
    GenerateConfig,
    GoldJudgeConfig,
    RMEvalConfig,
    RMScoreConfig,
)
from distalign.config import (
    ConfigError,
    load_config,
)
from distalign.models.load import (
    prefix_sharing_for,
    require_4d_mask,
    resolve_device_dtype,
    takes_4d_mask,
)
from tests.conftest import write_jsonl

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def machine(monkeypatch, cuda: bool = False, bf16: bool = False, mps: bool = False) -> None:
    """Make torch report this machine's accelerators (nothing else is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    # emulated bf16 (pre-Ampere) must not count: the resolver asks without emulation
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: bf16 or including_emulation,
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "bf16", "mps", "expected"),
    [
        (False, False, False, (CPU, torch.float32)),
        (True, True, False, (CUDA, torch.bfloat16)),  # Ampere and later
        (True, False, False, (CUDA, torch.float32)),  # V100/T4: no native bf16
        (False, False, True, (torch.device("mps"), torch.float32)),
        (True, True, True, (CUDA, torch.bfloat16)),  # CUDA first
    ],
)
def test_auto_picks_the_accelerator_and_its_dtype(monkeypatch, cuda, bf16, mps, expected):
    machine(monkeypatch, cuda, bf16, mps)
    assert resolve_device_dtype() == expected
    assert resolve_device_dtype("auto", "auto") == expected


def test_explicit_values_are_taken_as_given(monkeypatch):
    machine(monkeypatch, cuda=True, bf16=True)
    assert resolve_device_dtype("cpu") == (CPU, torch.float32)  # auto dtype follows the device
    assert resolve_device_dtype("cpu", "bfloat16") == (CPU, torch.bfloat16)
    assert resolve_device_dtype("cuda", "float16") == (CUDA, torch.float16)
    assert resolve_device_dtype("cuda:0", "float32") == (torch.device("cuda:0"), torch.float32)
    # resolved values pass through unchanged, so loaders may resolve again
    assert resolve_device_dtype(CUDA, torch.bfloat16) == (CUDA, torch.bfloat16)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "cuda", "bf16_gpu", "device", "expected"),
    [
        (False, False, False, False, "auto", False),  # a laptop's AVX2 CPU: emulated, slower
        (True, False, False, False, "auto", True),  # Sapphire Rapids: AMX tiles
        (False, True, False, False, "cpu", True),  # Zen 4 / Cooper Lake: AVX512-BF16
        (True, True, True, False, "auto", False),  # auto picks a pre-Ampere GPU: not native
        (False, False, True, True, "auto", True),  # Ampere and later
        (False, False, True, True, "cpu", False),  # the CPU beside that GPU
    ],
)
def test_native_bf16_asks_the_device_auto_picks(
    monkeypatch, amx, avx512_bf16, cuda, bf16_gpu, device, expected
):
    machine(monkeypatch, cuda, bf16_gpu)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert load.native_bf16(device) is expected


def test_native_bf16_without_torch_cpu_queries_is_false(monkeypatch):
    machine(monkeypatch)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert load.native_bf16() is False


def test_impossible_values_are_clear_errors(monkeypatch):
    machine(monkeypatch, cuda=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device_dtype("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device_dtype("mps")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda"):
        resolve_device_dtype("gpu")
    with pytest.raises(ValueError, match="dtype must be one of auto, float32"):
        resolve_device_dtype("cpu", "fp8")
    machine(monkeypatch, cuda=True, bf16=True)
    with pytest.raises(ValueError, match=r"has 1 CUDA device\(s\)"):
        resolve_device_dtype("cuda:1")
    # the command line says them in one line (exit 2), as any other setting to change
    from distalign.cli import USER_ERRORS
    from distalign.models.load import PlacementError, _load_settings

    with pytest.raises(PlacementError) as info:
        _load_settings("cpu", "float32", "flash_attention_2", trust_remote_code=False)
    assert isinstance(info.value, USER_ERRORS) and "runs on a CUDA GPU" in str(info.value)


@pytest.mark.parametrize("cls", [GenerateConfig, RMEvalConfig, RMScoreConfig])
def test_commands_check_the_names_of_device_and_dtype(cls):
    base = ["model_name_or_path=x", "input_file=y"] if cls is RMScoreConfig else []
    base += ["prompts=[hi]"] if cls is GenerateConfig else []
    base += ["model_name_or_path=x"] if cls is RMEvalConfig else []
    cfg = load_config(cls, None, base)
    assert (cfg.device, cfg.dtype, cfg.attn_implementation) == ("auto", "auto", "sdpa")
    # a device this machine lacks is fine in a config (checked when the command runs)
    assert load_config(cls, None, [*base, "device=cuda:1", "dtype=bfloat16"]).device == "cuda:1"
    with pytest.raises(ConfigError, match="device must be"):
        load_config(cls, None, [*base, "device=gpu"])
    with pytest.raises(ConfigError, match="dtype must be one of auto"):
        load_config(cls, None, [*base, "dtype=fp8"])
    with pytest.raises(ValueError, match="device must be"):
        GoldJudgeConfig(input_file="x", device="tpu0")


def test_frozen_models_of_a_training_run_follow_its_mixed_precision():
    from distalign.config import frozen_dtype

    assert [frozen_dtype(m) for m in ("bf16", "fp16", "no", None, "fp8")] == [
        "bfloat16",
        "float16",
        "float32",
        "float32",
        "float32",
    ]


# --- the 4-D mask rule ----------------------------------------------------------------------


def test_only_sdpa_and_eager_take_a_4d_mask():
    assert takes_4d_mask("sdpa") and takes_4d_mask("eager")
    for kernel in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        assert not takes_4d_mask(kernel)


def test_prefix_sharing_falls_back_with_one_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="distalign.models.load"):
        assert prefix_sharing_for("sdpa", True, "rm train") is True
        assert prefix_sharing_for("flash_attention_2", False, "rm train") is False
        assert caplog.records == []  # nothing to say when sharing is off or possible
        assert prefix_sharing_for("flash_attention_2", True, "rm train") is False
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert record.getMessage().startswith("rm train: attn_implementation=flash_attention_2")
    assert "prefix_sharing is off" in record.getMessage()


def test_commands_that_need_the_4d_mask_refuse_flash_attention():
    from distalign.eval.config import CompareConfig

    require_4d_mask("sdpa", "rl train", "its teacher-forced pass")
    with pytest.raises(ValueError, match=r"^rl train: attn_implementation=flash_attention_2"):
        require_4d_mask("flash_attention_2", "rl train", "its teacher-forced pass")
    with pytest.raises(ValueError, match=r"eval compare: .*KL to SFT"):
        CompareConfig(attn_implementation="flash_attention_2")
    assert CompareConfig(attn_implementation="eager").attn_implementation == "eager"


# --- what each command hands its loader --------------------------------------------------


class Loaded(Exception):
    """Raised by a stand-in loader: the command got as far as loading, with these kwargs."""


def recording(calls: list):
    def fake(*args, **kwargs):
        calls.append(kwargs)
        raise Loaded

    return fake


def placement(kwargs: dict) -> tuple:
    return kwargs["device"], kwargs["dtype"], kwargs["attn_implementation"]


@pytest.fixture()
def gpu(monkeypatch):
    """A machine whose torch reports a bf16-capable CUDA GPU."""
    machine(monkeypatch, cuda=True, bf16=True)


@pytest.fixture()
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Name a fruit.", "reply": "A fig."}])


def test_generate_loads_on_the_gpu_in_bf16(gpu, monkeypatch):
    calls = []
    monkeypatch.setattr(load, "load_policy", recording(calls))
    with pytest.raises(Loaded):
        api.generate(prompts=["hi"])
    with pytest.raises(Loaded):
        api.generate(prompts=["hi"], device="cpu", attn_implementation="eager")
    with pytest.raises(Loaded):
        api.generate(prompts=["hi"], dtype="float32")
    assert [placement(c) for c in calls] == [
        (CUDA, torch.bfloat16, "sdpa"),
        (CPU, torch.float32, "eager"),
        (CUDA, torch.float32, "sdpa"),
    ]


def test_rm_eval_and_rm_score_load_on_the_gpu_in_bf16(gpu, monkeypatch, rows_file, tmp_path):
    import distalign.models.reward_model as reward_model

    calls = []
    monkeypatch.setattr(reward_model, "load_reward_model", recording(calls))
    rm = tmp_path / "rm"  # a distalign reward-model folder, as far as the loaders look
    rm.mkdir()
    (rm / "config.json").write_text("{}")
    (rm / reward_model.META_FILE).write_text('{"head": "scalar"}')
    with pytest.raises(Loaded):
        api.evaluate_reward_model(model_name_or_path=str(rm))
    with pytest.raises(Loaded):
        api.score(model_name_or_path=str(rm), input_file=str(rows_file), dtype="float16")
    assert [placement(c) for c in calls] == [
        (CUDA, torch.bfloat16, "sdpa"),
        (CUDA, torch.float16, "sdpa"),
    ]


def test_compare_loads_policies_and_reward_models_alike(gpu, monkeypatch, tmp_path):
    import distalign.rl.rewards as rewards

    sources, policies = [], []

    class Source:
        distributional = False

        def __init__(self, path, **kwargs):
            sources.append(kwargs)

    monkeypatch.setattr(rewards, "RewardModelSource", Source)
    monkeypatch.setattr(load, "load_policy", recording(policies))
    with pytest.raises(Loaded):
        api.compare(rewards=["rm=somewhere"], max_eval_samples=1, output_dir=str(tmp_path))
    assert placement(sources[0]) == placement(policies[0]) == (CUDA, torch.bfloat16, "sdpa")
    assert policies[0]["merge_adapter"] is True


def test_gold_make_samples_on_the_gpu(gpu, monkeypatch, tmp_path):
    from distalign.gold.build import BenchConfig, run_bench_make

    calls = []
    monkeypatch.setattr(load, "load_policy", recording(calls))
    cfg = BenchConfig(limit_prompts=1, work_dir=str(tmp_path / "w"), output_dir=str(tmp_path))
    with pytest.raises(Loaded):
        run_bench_make(cfg)
    assert placement(calls[0]) == (CUDA, torch.bfloat16, "sdpa")


def test_gold_judge_runs_its_encoder_on_the_gpu(gpu, monkeypatch, rows_file):
    from distalign.gold import judge
    from tests.gold.test_judge import FakeEncoder

    built = {}
    monkeypatch.setattr(judge, "_encoder", lambda d: built.setdefault(d, FakeEncoder(d)))
    out, means = api.gold_judge(input_file=str(rows_file))
    assert list(built) == ["cuda"] and built["cuda"].batch_sizes == [256, 256]
    assert "gold_mean" in json.loads(out.read_text()) and "gold_mean" in means
    api.gold_judge(input_file=str(rows_file), device="cpu")
    assert sorted(built) == ["cpu", "cuda"]


def test_rm_eval_with_flash_attention_scores_one_row_per_reply(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    """The fallback gives the prefix-shared numbers: only the batching differs."""
    import distalign.models.reward_model as reward_model
    from distalign.models.reward_model import build_reward_model, save_reward_model
    from tests.rm.test_train import make_pairs

    torch.manual_seed(0)
    model, tokenizer = build_reward_model(str(tiny_model_dir))
    save_reward_model(model, tokenizer, tmp_path / "rm", {"head": "scalar"})
    (tmp_path / "pairs").mkdir()
    write_jsonl(tmp_path / "pairs" / "test.jsonl", make_pairs(6, 1))
    real, kernels = reward_model.load_reward_model, []

    def on_this_cpu(path, **kwargs):  # flash attention cannot load here: sdpa stands in
        kernels.append(kwargs["attn_implementation"])
        return real(path, **{**kwargs, "attn_implementation": "sdpa"})

    monkeypatch.setattr(reward_model, "load_reward_model", on_this_cpu)
    common = dict(
        model_name_or_path=str(tmp_path / "rm"), dataset_name=str(tmp_path / "pairs"), device="cpu"
    )
    shared = api.evaluate_reward_model(**common, output_file=str(tmp_path / "a.json"))
    with caplog.at_level(logging.WARNING, logger="distalign.models.load"):
        flash = api.evaluate_reward_model(
            **common, attn_implementation="flash_attention_2", output_file=str(tmp_path / "b.json")
        )
    assert kernels == ["sdpa", "flash_attention_2"]
    assert "rm eval: attn_implementation=flash_attention_2" in caplog.text
    assert flash["accuracy"] == shared["accuracy"]
    assert flash["margin"] == pytest.approx(shared["margin"], abs=1e-5)
    assert (shared["device"], shared["dtype"]) == ("cpu", "float32")


def test_every_command_in_the_gpu_doc_parses(monkeypatch):
    """docs/gpu.md's command lines name real commands and keys (parsed, not run)."""
    import re
    import shlex
    from pathlib import Path

    from distalign.cli import COMMANDS, parse_command

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)  # config paths are relative to the repository
    text = (root / "docs" / "gpu.md").read_text(encoding="utf-8")
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
    ]
    parsed = 0
    for line in lines:
        line = re.sub(
            r"^(\w+=\S+ )*(accelerate launch|torchrun) .*-m distalign\.cli ",
            "distalign ",
            line.split("  #")[0],
        )
        words = shlex.split(line)[1:]
        name = " ".join(words[:2]) if " ".join(words[:2]) in COMMANDS else words[0]
        assert parse_command(name, words[len(name.split()) :]) is not None, line
        parsed += 1
    assert parsed >= 10


# --- on a real GPU (make test-gpu) -----------------------------------------------------------


def auto_dtype() -> torch.dtype:
    """What ``dtype=auto`` gives on this GPU (bfloat16 from Ampere on)."""
    return resolve_device_dtype("cuda")[1]


def spy(monkeypatch, module, name: str, seen: list):
    """Wrap ``module.name`` so that the models it returns are kept in ``seen``."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr(module, name, wrapper)


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory):
    from distalign.models.reward_model import build_reward_model, save_reward_model

    torch.manual_seed(0)
    model, tokenizer = build_reward_model(str(tiny_model_dir))
    return save_reward_model(
        model, tokenizer, tmp_path_factory.mktemp("rm"), {"head": "scalar", "max_length": 64}
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_on_cuda(tiny_model_dir, monkeypatch):
    seen = []
    spy(monkeypatch, load, "load_policy", seen)
    rows = api.generate(
        model_name_or_path=str(tiny_model_dir), prompts=["hi", "bye"], max_completion_length=4
    )
    assert len(rows) == 2
    param = next(seen[0].parameters())
    assert param.device.type == "cuda" and param.dtype == auto_dtype()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rm_eval_and_score_on_cuda_match_the_cpu(tiny_rm_dir, tmp_path, monkeypatch):
    import distalign.models.reward_model as reward_model
    from tests.rm.test_train import make_pairs

    (tmp_path / "pairs").mkdir()
    write_jsonl(tmp_path / "pairs" / "test.jsonl", make_pairs(12, 1))
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Name a fruit.", "reply": "A fig."}])
    seen = []
    spy(monkeypatch, reward_model, "load_reward_model", seen)  # rm eval and rm score load here
    common = dict(model_name_or_path=str(tiny_rm_dir), dataset_name=str(tmp_path / "pairs"))
    on_gpu = api.evaluate_reward_model(**common, output_file=str(tmp_path / "g.json"))
    exact = api.evaluate_reward_model(
        **common, dtype="float32", output_file=str(tmp_path / "f.json")
    )
    on_cpu = api.evaluate_reward_model(**common, device="cpu", output_file=str(tmp_path / "c.json"))
    assert [next(m.parameters()).device.type for m in seen] == ["cuda", "cuda", "cpu"]
    assert [m.dtype for m in seen] == [auto_dtype(), torch.float32, torch.float32]
    assert on_gpu["device"] == "cuda" and exact["dtype"] == "float32"
    assert exact["margin"] == pytest.approx(on_cpu["margin"], abs=1e-4)
    assert on_gpu["margin"] == pytest.approx(on_cpu["margin"], abs=0.1)  # bfloat16

    seen.clear()
    common = dict(model_name_or_path=str(tiny_rm_dir), input_file=str(rows))
    out_gpu = api.score(**common, output_file=str(tmp_path / "g.jsonl"), dtype="float32")
    out_cpu = api.score(**common, output_file=str(tmp_path / "c.jsonl"), device="cpu")
    assert [next(m.parameters()).device.type for m in seen] == ["cuda", "cpu"]
    gpu_reward = json.loads(out_gpu.read_text())["reward"]
    assert gpu_reward == pytest.approx(json.loads(out_cpu.read_text())["reward"], abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compare_scoring_on_cuda(tiny_model_dir, tiny_rm_dir):
    """What eval compare does per policy: sample, score with a reward model, KL to SFT, judge."""
    from distalign.eval.policy import kl_to_sft, sample_policy, score_all
    from distalign.gold import judge
    from distalign.models.generate import SamplingConfig
    from distalign.rl.rewards import RewardModelSource

    prompts = [[{"role": "user", "content": q}] for q in ("Name a fruit.", "List two birds.")]
    opts = {"device": CUDA, "dtype": auto_dtype(), "attn_implementation": "sdpa"}
    sampling = SamplingConfig(max_completion_length=6, temperature=1.0)
    model, tokenizer, samples = sample_policy(str(tiny_model_dir), prompts, sampling, 2, **opts)
    assert next(model.parameters()).device.type == "cuda" and model.dtype == auto_dtype()
    kl = kl_to_sft(model, model, tokenizer, samples, 1.0)
    assert kl.shape == (4,) and abs(kl).max() < 1e-3  # a policy against itself
    source = RewardModelSource(str(tiny_rm_dir), **opts)
    assert next(source.model.parameters()).device.type == "cuda"
    assert source.model.dtype == auto_dtype()
    per_reply = [p for p in prompts for _ in range(2)]
    scored = score_all({"rm": source}, per_reply, samples.texts)["rm"]["value"]
    exact = RewardModelSource(str(tiny_rm_dir), device="cpu")(per_reply, samples.texts).rewards
    assert scored == pytest.approx(exact.numpy(), abs=0.1)  # bfloat16
    texts = [p[-1]["content"] for p in per_reply]
    on_gpu = judge.relevance(texts, samples.texts, device="cuda")
    on_cpu = judge.relevance(texts, samples.texts, device="cpu")
    assert on_gpu == pytest.approx(on_cpu, abs=1e-5)  # float32 on both
