"""YAML + key=value / --key value configs onto typed dataclasses; renamed keys are refused
with their new name; every shipped config loads."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import yaml

from distalign.command_configs import (
    GenerateConfig,
    RMEvalConfig,
)
from distalign.config import (
    ConfigError,
    bool_keys,
    list_keys,
    load_config,
    parse_cli_args,
    save_config,
)
from distalign.eval.config import CompareConfig
from distalign.gold.build import BenchConfig
from distalign.rl.config import RLTrainConfig
from distalign.rm.config import RMTrainConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
COMMANDS = {
    "generate": GenerateConfig,
    "rm": RMTrainConfig,
    "gold": BenchConfig,
    "rl": RLTrainConfig,
}


def from_cli(cls, args, **kw):
    """What a command builds from its CLI words."""
    kw = {"list_keys": list_keys(cls), "bool_keys": bool_keys(cls), **kw}
    path, overrides = parse_cli_args(args, **kw)
    return load_config(cls, path, overrides)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts: [hi]\nnum_generations: 2\ntemperature: 0.5\n")
    cfg = load_config(GenerateConfig, path, ["num_generations=3", "top_p=0.8"])
    assert isinstance(cfg, GenerateConfig)
    assert (cfg.num_generations, cfg.temperature, cfg.top_p) == (3, 0.5, 0.8)
    assert cfg.prompts == ["hi"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompts=[a]", "kk=1"], "Key 'kk' not in 'GenerateConfig'"),
        (["prompts=[a]", "num_generations=many"], "num_generations"),
        (["prompts=[a]", "top_p=2"], "top_p must be in"),
        (["num_generations=2"], "give prompts"),
        (["prompts"], "not of the form key=value"),
    ],
)
def test_bad_overrides_are_clear(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GenerateConfig, None, overrides)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts: [hi]\ntemprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*temprature"):
        load_config(GenerateConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GenerateConfig, tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(GenerateConfig, None, ["prompts=[a,b]", "seed=5"])
    path = save_config(cfg, tmp_path)
    assert yaml.safe_load(path.read_text())["seed"] == 5
    assert load_config(GenerateConfig, path) == cfg


def test_parse_cli_args_both_styles():
    assert parse_cli_args(["c.yaml", "a=1"]) == ("c.yaml", ["a=1"])
    assert parse_cli_args(["a=1"]) == (None, ["a=1"])
    assert parse_cli_args([]) == (None, [])
    assert parse_cli_args(["--config", "c.yaml", "--a", "1"]) == ("c.yaml", [("a", "1")])
    assert parse_cli_args(["--config=c.yaml", "--a=1"]) == ("c.yaml", [("a", "1")])
    # dashes become underscores; a bare flag is true, also before another flag
    assert parse_cli_args(
        ["--max-length", "64", "--use_peft", "--b-c"], bool_keys=["use_peft"]
    ) == (
        None,
        [("max_length", "64"), ("use_peft", "true"), ("b_c", "true")],
    )
    # a positional word fills the command's positional key; list keys collect repeats
    assert parse_cli_args(["src.jsonl", "x=1"], positional="dataset_name") == (
        None,
        [("dataset_name", "src.jsonl"), "x=1"],
    )
    assert parse_cli_args(
        ["--policy", "a=1", "--policy", "b=2"],
        aliases={"policy": "policies"},
        list_keys=["policies"],
    ) == (None, [("policies", ["a=1", "b=2"])])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_cli_args(["stray"])
    # a bare bool flag before key=value or the YAML file does not swallow them
    assert parse_cli_args(["--use_peft", "max_steps=3"], bool_keys=["use_peft"]) == (
        None,
        [("use_peft", "true"), "max_steps=3"],
    )
    assert parse_cli_args(["--use_peft", "c.yaml"], bool_keys=["use_peft"]) == (
        "c.yaml",
        [("use_peft", "true")],
    )
    assert parse_cli_args(["--use_peft", "false"], bool_keys=["use_peft"]) == (
        None,
        [("use_peft", "false")],
    )


def test_trl_flags_and_key_value_build_the_same_config(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("max_steps: 7\nuse_peft: false\nreport_to: none\n")
    flags = from_cli(RMTrainConfig, ["--config", str(path), "--learning_rate", "2e-5"])
    pairs = from_cli(RMTrainConfig, [str(path), "learning_rate=2e-5"])
    assert flags == pairs
    assert (flags.learning_rate, flags.max_steps, flags.use_peft) == (2e-5, 7, False)
    assert isinstance(flags.learning_rate, float)


def test_flag_spellings():
    cfg = from_cli(
        RMTrainConfig,
        ["--learning_rate=3e-4", "--max-length", "64", "--max-prompt-length=32", "--use_peft"],
    )
    assert (cfg.learning_rate, cfg.max_length, cfg.max_prompt_length, cfg.use_peft) == (
        3e-4,
        64,
        32,
        True,
    )
    assert cfg == from_cli(
        RMTrainConfig,
        ["learning_rate=3e-4", "max_length=64", "max_prompt_length=32", "use_peft=true"],
    )
    assert from_cli(RMTrainConfig, ["--use-peft", "--max_steps", "3"]).use_peft is True
    assert from_cli(RMTrainConfig, ["--use_peft", "false"]).use_peft is False
    # a key that may be unset (tf32: None leaves torch's setting) is a bare flag too
    assert from_cli(RMTrainConfig, ["--tf32", "--max_steps", "3"]).tf32 is True
    assert from_cli(RLTrainConfig, ["--tf32", "false"]).tf32 is False
    assert from_cli(RMTrainConfig, []).tf32 is None
    # and may be set back to unset by its flag, as by key=value
    flags = {"bool_keys": bool_keys(RMTrainConfig)}
    assert from_cli(RMTrainConfig, ["--tf32", "null", "--max_steps", "3"], **flags).tf32 is None
    assert from_cli(RMTrainConfig, ["--tf32", "~"], **flags).tf32 is None
    assert from_cli(RMTrainConfig, ["tf32=null"]).tf32 is None
    # a key that may not be unset says so, with the word given
    with pytest.raises(ConfigError, match=r"--use_peft: `use_peft` cannot be null here; give "
                       r"a value \(default False\)"):  # fmt: skip
        from_cli(RMTrainConfig, ["--use_peft", "null"], **flags)
    with pytest.raises(ConfigError, match=r"--learning_rate: `learning_rate` cannot be null"):
        from_cli(RMTrainConfig, ["--learning_rate", "~"])


def test_training_arguments_keys_do_nothing_at_their_default_and_are_refused_otherwise():
    """Any transformers TrainingArguments key: at transformers' default (a TRL config spells
    many out) it is read as absent; at another value it is refused with what does its job."""
    defaults = ["ddp_timeout=1800", "log_level=passive", "fsdp=''", "--dataloader_pin_memory",
                "true", "--local_rank=0"]  # fmt: skip
    cfg = from_cli(RLTrainConfig, defaults)
    assert cfg == from_cli(RLTrainConfig, [])
    with pytest.raises(ConfigError, match=r"`deepspeed` .*accelerate launch --config_file"):
        from_cli(RMTrainConfig, ["--deepspeed", "ds_z3.json"])
    with pytest.raises(ConfigError, match=r"`ddp_backend` .* accelerate"):
        from_cli(RMTrainConfig, ["ddp_backend=gloo"])
    with pytest.raises(ConfigError, match=r"`dataloader_num_workers` .*built in the training"):
        from_cli(RMTrainConfig, ["dataloader_num_workers=4"])


def test_a_transformers_dump_with_both_names_of_a_key_takes_the_one_that_is_set(tmp_path):
    """transformers 4 writes warmup_ratio beside warmup_steps: 0 (and takes the ratio);
    transformers 5 writes warmup_ratio: null; TRL configs carry dtype: null beside torch_dtype."""
    path = tmp_path / "c.yaml"
    for text, key, expected in [
        ("warmup_ratio: 0.1\nwarmup_steps: 0\n", "warmup_steps", 0.1),
        ("warmup_steps: 0\nwarmup_ratio: 0.1\n", "warmup_steps", 0.1),
        ("warmup_ratio: null\nwarmup_steps: 5\n", "warmup_steps", 5),
        ("torch_dtype: bfloat16\ndtype: null\n", "dtype", "bfloat16"),
        ("eval_steps: null\naverage_tokens_across_devices: false\n", "eval_steps", 50),
    ]:
        path.write_text(text)
        assert getattr(load_config(RMTrainConfig, path), key) == expected, text
    path.write_text("warmup_ratio: 0.1\nwarmup_steps: 5\n")
    with pytest.raises(ConfigError, match="`warmup_ratio` and `warmup_steps` both given"):
        load_config(RMTrainConfig, path)
    # so on the command line, in either order and either style
    for words in (["warmup_ratio=0.1", "warmup_steps=0"], ["warmup_steps=0", "warmup_ratio=0.1"],
                  ["--warmup_ratio", "0.1", "--warmup_steps", "0"]):  # fmt: skip
        _, overrides = parse_cli_args(words)
        assert load_config(RMTrainConfig, None, overrides).warmup_steps == 0.1, words
    # over a file's other name, a command line's 0 wins, as any override does
    path.write_text("warmup_ratio: 0.1\nkl_coef: 0.05\n")
    assert load_config(RLTrainConfig, path, ["warmup_steps=0"]).warmup_steps == 0
    assert load_config(RLTrainConfig, path, ["beta=0"]).beta == 0


def test_trl_nulls_that_mean_something_here():
    """TRL writes null for 'off' or 'the library's choice'; those nulls are read so, in a YAML
    file, key=null and --key null alike; a null that means nothing here is refused."""
    for overrides in (
        ["center_rewards_coefficient=null", "attn_implementation=null", "dtype=null"],
        ["--center_rewards_coefficient", "null", "--attn_implementation", "~", "--dtype", "null"],
    ):
        cfg = from_cli(RMTrainConfig, overrides)
        assert cfg.center_rewards_coefficient == 0.0  # TRL: None is no centring
        assert (cfg.attn_implementation, cfg.dtype) == ("sdpa", "float32")
    # max_length: null is no truncation, as in TRL (the backbone's own limit, read at load)
    assert from_cli(RMTrainConfig, ["max_length=null"]).max_length is None
    with pytest.raises(ConfigError, match="`num_generations` cannot be null here"):
        from_cli(RLTrainConfig, ["num_generations=null"])
    # a config object built in Python reads them as well
    cfg = RMTrainConfig(center_rewards_coefficient=None, eval_steps=None, attn_implementation=None)
    assert (cfg.center_rewards_coefficient, cfg.eval_steps, cfg.attn_implementation) == (
        0.0, RMTrainConfig().eval_steps, "sdpa")  # fmt: skip
    assert RLTrainConfig(top_k=None, save_steps=None).top_k == 0
    assert GenerateConfig(prompts=["a"], top_k=None, dtype=None).dtype == "auto"


def test_wrong_flag_type_names_the_flag():
    with pytest.raises(ConfigError, match="max_steps"):
        from_cli(RMTrainConfig, ["--max_steps", "many"])
    with pytest.raises(ConfigError, match="Key 'max_stepz' not in 'RMTrainConfig'"):
        from_cli(RMTrainConfig, ["--max_stepz", "3"])


@pytest.mark.parametrize(
    ("cls", "args", "old", "new"),
    [
        (RMTrainConfig, ["lr=1"], "lr", "learning_rate"),
        (RMTrainConfig, ["--lr", "1"], "lr", "learning_rate"),
        (RMTrainConfig, ["model=x"], "model", "model_name_or_path"),
        (RMTrainConfig, ["tracker=none"], "tracker", "report_to"),
        (RMTrainConfig, ["resume=true"], "resume", "resume_from_checkpoint"),
        (RMTrainConfig, ["mixed_precision=bf16"], "mixed_precision", "bf16=true or fp16=true"),
        (RLTrainConfig, ["k=2"], "k", "num_generations"),
        (RLTrainConfig, ["prompts_per_step=2"], "prompts_per_step", "per_device_train_batch_size"),
        (RLTrainConfig, ["sampling.max_new_tokens=5"], "sampling", "max_completion_length"),
        (GenerateConfig, ["prompts=[a]", "sampling.max_new_tokens=5"], "sampling",
         "max_completion_length"),
        (GenerateConfig, ["prompts=[a]", "k=2"], "k", "num_generations"),
    ],
)  # fmt: skip
def test_old_keys_are_refused_with_the_new_name(cls, args, old, new):
    with pytest.raises(ConfigError, match=f"`{old}` is now") as info:
        from_cli(cls, args)
    assert new in str(info.value)


def test_a_renamed_key_is_said_so_only_where_its_new_name_is_the_commands():
    with pytest.raises(ConfigError, match="`gamma` is now `center_rewards_coefficient`"):
        from_cli(RMTrainConfig, ["gamma=0.01"])
    # in rl train, gamma is PPO's discount (TRL's earlier PPO config): no value model here
    assert from_cli(RLTrainConfig, ["gamma=1.0", "lam=0.95"]).beta == RLTrainConfig().beta
    with pytest.raises(ConfigError, match=r"Key 'max_new_tokens' not in 'RMTrainConfig'$"):
        from_cli(RMTrainConfig, ["max_new_tokens=64"])  # not "now max_completion_length"


def test_transformers_4_and_earlier_trl_on_policy_configs_load(tmp_path, caplog):
    """Keys transformers 5 removed, and TRL's RLOO/PPO keys before TRL 0.20, as their dumps
    write them: at their defaults they do nothing (said), earlier names are read as today's,
    and another value is refused with what does its job here."""
    path = tmp_path / "tf4.yaml"
    path.write_text("save_safetensors: true\nno_cuda: false\nuse_mps_device: false\n"
                    "half_precision_backend: auto\nevaluation_strategy: epoch\n"
                    "push_to_hub_token: null\ninclude_tokens_per_second: false\n"
                    "per_gpu_train_batch_size: null\n")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="distalign.config"):
        assert load_config(RMTrainConfig, path).eval_strategy == "epoch"
    assert "evaluation_strategy is read as eval_strategy" in caplog.text
    assert "save_safetensors: checkpoints are written as safetensors only" in caplog.text
    assert from_cli(RMTrainConfig, ["no_cuda=true"]).use_cpu is True
    path = tmp_path / "rloo019.yaml"
    path.write_text("exp_name: rloo_config\nnum_mini_batches: 1\ntotal_episodes: null\n"
                    "whiten_rewards: false\nnormalize_reward: false\ntoken_level_kl: false\n"
                    "cliprange: 0.3\nnormalize_advantage: true\nkl_coef: 0.05\nrloo_k: 4\n"
                    "stop_token: null\nlocal_rollout_forward_batch_size: 64\n"
                    "num_sample_generations: 10\nmini_batch_size: 16\n")  # fmt: skip
    cfg = load_config(RLTrainConfig, path)
    assert (cfg.epsilon, cfg.normalize_advantages, cfg.beta, cfg.num_generations) == (
        0.3, True, 0.05, 4)  # fmt: skip
    for words, said in (
        (["whiten_rewards=true"], "rewards are centred by the baseline"),
        (["total_episodes=10000"], "give max_steps (each a batch of rollouts)"),
        (["save_safetensors=false"], "safetensors only"),
        (["max_length=512"], "bounded by max_completion_length"),
    ):
        with pytest.raises(ConfigError, match="distalign does not take") as info:
            from_cli(RLTrainConfig, words)
        assert said in str(info.value)
    with pytest.raises(ConfigError, match="`no_cuda` is a training key; this command takes "
                       "device=cpu"):  # fmt: skip
        from_cli(RMEvalConfig, ["model_name_or_path=m", "no_cuda=true"])


# TRL 0.19's OnPolicyConfig and RLOOConfig fields beyond TrainingArguments, at their defaults
# (batch sizes as its __post_init__ computes them for one process)
TRL_0_19_RLOO = {
    "dataset_num_proc": None, "num_mini_batches": 1, "total_episodes": None,
    "local_rollout_forward_batch_size": 64, "num_sample_generations": 10,
    "response_length": 53, "stop_token": None, "stop_token_id": None, "temperature": 0.7,
    "missing_eos_penalty": None, "sft_model_path": "EleutherAI/pythia-160m", "world_size": 1,
    "num_total_batches": 10, "micro_batch_size": 8, "local_batch_size": 64, "batch_size": 64,
    "local_mini_batch_size": 64, "mini_batch_size": 64, "exp_name": "rloo_config",
    "reward_model_path": "EleutherAI/pythia-160m", "num_ppo_epochs": 4, "whiten_rewards": False,
    "kl_coef": 0.05, "cliprange": 0.2, "rloo_k": 2, "normalize_reward": False,
    "reward_clip_range": 10.0, "normalize_advantage": False, "token_level_kl": False,
    "ds3_gather_for_generation": True,
}  # fmt: skip


def test_a_whole_trl_0_19_rloo_dump_under_transformers_4_loads(tmp_path):
    from transformers import TrainingArguments

    from distalign.config import TRANSFORMERS_4_DEFAULTS

    dump = json.loads(json.dumps(TrainingArguments(output_dir="x").to_dict(), default=str))
    dump |= TRANSFORMERS_4_DEFAULTS | TRL_0_19_RLOO
    path = tmp_path / "rloo.yaml"
    path.write_text(yaml.safe_dump(dump))
    cfg = load_config(RLTrainConfig, path)
    assert (cfg.beta, cfg.num_generations, cfg.num_iterations, cfg.epsilon) == (0.05, 2, 4, 0.2)
    assert (cfg.max_completion_length, cfg.temperature, cfg.missing_eos_penalty) == (53, 0.7, 0)
    assert cfg.reward_clip_range == [-10.0, 10.0] and cfg.reward == "EleutherAI/pythia-160m"
    with pytest.raises(ConfigError, match="`batch_size` is now"):  # distalign's earlier key
        from_cli(RLTrainConfig, ["batch_size=8"])


def test_old_key_in_yaml_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("learning_rate: 1.0e-5\nbatch_size: 8\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: `batch_size` is now") as info:
        load_config(RMTrainConfig, path)
    assert "per_device_train_batch_size" in str(info.value)
    path.write_text("sampling:\n  max_new_tokens: 8\n")
    with pytest.raises(ConfigError, match="max_completion_length"):
        load_config(RLTrainConfig, path)


TRL_RLOO_YAML = """\
model_name_or_path: smollm2-135m-instruct
dataset_name: gold
learning_rate: 1.0e-6
num_generations: 4
max_completion_length: 32
beta: 0.05
normalize_advantages: true
disable_dropout: true
use_peft: true
lora_target_modules: [q_proj, v_proj]
lora_task_type: CAUSAL_LM
model_init_kwargs:
  torch_dtype: float32
use_vllm: false
vllm_mode: colocate
num_iterations: 1
epsilon: 0.2
repetition_penalty: 1.0
log_completions: false
gradient_checkpointing_kwargs:
  use_reentrant: false
push_to_hub: false
top_k: null
delta: null
importance_sampling_level: token
top_entropy_quantile: 1.0
off_policy_mask_threshold: null
use_bias_correction_kl: false
entropy_coef: 0.0
use_adaptive_entropy: false
entropy_target: 0.2
multi_objective_aggregation: sum_then_normalize
cast_lm_head_to_fp32: false
log_completions_hub_repo: null
max_tool_calling_iterations: null
sapo_temperature_neg: 1.05
vespo_k_pos: 2.0
"""


def test_a_trl_config_loads_its_do_nothing_keys_dropped(tmp_path, caplog):
    path = tmp_path / "rloo.yaml"
    path.write_text(TRL_RLOO_YAML)
    with caplog.at_level(logging.INFO, logger="distalign.config"):
        cfg = load_config(RLTrainConfig, path, [("use_vllm", "false")])
    assert cfg.normalize_advantages and cfg.disable_dropout and cfg.lora_target_modules == [
        "q_proj", "v_proj"]  # fmt: skip
    assert "use_vllm: rollouts come from" in caplog.text  # each key with why, on one line
    assert sum("do nothing here" in r.message for r in caplog.records) == 1
    assert cfg.importance_sampling_level == "token" and cfg.delta is None  # GRPO's keys act
    assert cfg.top_k == 0  # an earlier TRL's null: no top-k filter
    assert from_cli(RLTrainConfig, ["--num_iterations", "1", "--min_p", "null"]).beta == 0.05


def test_trl_parsers_env_section_and_script_keys(tmp_path, monkeypatch):
    """TRL's TrlParser sets a config file's ``env`` section as environment variables; its
    scripts' ``ignore_bias_buffers`` does nothing at its default; ``tools`` says what instead."""
    import os

    monkeypatch.setenv("DISTALIGN_TEST_ENV", "0")  # restored after the test
    path = tmp_path / "grpo.yaml"
    path.write_text("env:\n  DISTALIGN_TEST_ENV: 3\nignore_bias_buffers: false\nmax_steps: 2\n")
    assert load_config(RLTrainConfig, path).max_steps == 2
    assert os.environ["DISTALIGN_TEST_ENV"] == "3"
    path.write_text("env: [1]\n")
    with pytest.raises(ConfigError, match="env: expected a mapping"):
        load_config(RLTrainConfig, path)
    with pytest.raises(ConfigError, match="sampled without tool calls"):
        from_cli(RLTrainConfig, ["tools=[1]"])


def test_lora_at_a_full_fine_tunes_learning_rate_is_said(caplog):
    """A GRPO or RLOO config's dump carries TRL's learning rate for every weight (1e-6), where
    distalign trains LoRA adapters by default."""
    with caplog.at_level(logging.WARNING):
        from_cli(RLTrainConfig, ["learning_rate=1e-6"])
    assert "is a full fine-tune's rate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        from_cli(RLTrainConfig, ["learning_rate=1e-6", "use_peft=false"])
        from_cli(RLTrainConfig, [])
    assert "fine-tune's rate" not in caplog.text


@pytest.mark.parametrize(
    ("args", "key", "hint"),
    [(["use_vllm=true"], "use_vllm", "own sampler"),
     (["repetition_penalty=1.2"], "repetition_penalty", "unbiased"),
     (["load_in_4bit=true"], "load_in_4bit", "use_peft=true dtype=bfloat16"),
     (["hub_always_push=true"], "hub_always_push", "transformers' default (False)"),
     (["whiten_advantages=true"], "whiten_advantages", "normalize_advantages"),
     (["use_adaptive_entropy=true"], "use_adaptive_entropy", "coefficient is fixed"),
     (["multi_objective_aggregation=normalize_then_sum"], "multi_objective_aggregation",
      "summed with reward_weights")],
)  # fmt: skip
def test_a_trl_key_that_would_act_is_refused_with_what_to_use(args, key, hint):
    with pytest.raises(ConfigError, match=f"`{key}`") as info:
        from_cli(RLTrainConfig, args)
    assert hint in str(info.value)


def test_trl_list_and_mapping_flags():
    """HfArgumentParser's nargs (--lora_target_modules q_proj v_proj), a YAML list or mapping
    after a flag, and key=value all give the same values."""
    cfg = from_cli(RLTrainConfig, ["--lora_target_modules", "q_proj", "v_proj",
                                   "--reward_clip_range", "-1", "1",
                                   "--model_init_kwargs", '{"low_cpu_mem_usage": true}',
                                   "--lora_modules_to_save", "[norm]"])  # fmt: skip
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.reward_clip_range == [-1, 1]
    assert cfg.load_kwargs()["init_kwargs"] == {"low_cpu_mem_usage": True}
    assert cfg.lora_modules_to_save == ["norm"]
    same = from_cli(RLTrainConfig, ["lora_target_modules=[q_proj,v_proj]",
                                    "--reward_clip_range", "[-1, 1]"])  # fmt: skip
    assert (same.lora_target_modules, same.reward_clip_range) == (["q_proj", "v_proj"], [-1, 1])
    assert from_cli(RMTrainConfig, ["--lora_target_modules", "all-linear"]).lora_target_modules \
        == "all-linear"  # fmt: skip
    assert from_cli(RMTrainConfig, ["lora_target_modules=null"]).lora_target_modules is None
    # a list flag stops at the next flag, key=value or the YAML file
    words = ["--lora_target_modules", "q_proj", "v_proj", "c.yaml", "max_steps=3"]
    path, overrides = parse_cli_args(words, list_keys=["lora_target_modules"])
    assert path == "c.yaml" and overrides == ["max_steps=3", ("lora_target_modules",
                                                              ["q_proj", "v_proj"])]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [(["dtype=bf16"], "dtype must be one of auto, float32"),
     (["model_init_kwargs={torch_dtype: fp8}"], "dtype must be one of"),
     (["model_init_kwargs={attn_implementation: eager}"], "as keys of their own"),
     (["optim=sgd"], "AdamW"), (["vllm_mode=server"], None)],
)  # fmt: skip
def test_model_keys_are_checked_when_the_config_is_built(args, message):
    if message is None:  # any vllm_* key does nothing without use_vllm
        assert from_cli(RMTrainConfig, args).dtype == "float32"
        return
    with pytest.raises(ConfigError, match=message):
        from_cli(RMTrainConfig, args)
    assert from_cli(RMTrainConfig, ["optim=adamw_torch_fused", "dtype=auto"]).dtype == "auto"


def test_the_python_api_drops_do_nothing_keys_too():
    from distalign.api import _config

    cfg = _config(RMTrainConfig, None, {"use_vllm": False, "learning_rate": 2e-5})
    assert cfg.learning_rate == 2e-5
    assert _config(RMTrainConfig, None, {"torch_dtype": "bfloat16"}).dtype == "bfloat16"


def test_a_command_s_own_key_is_not_taken_for_an_old_one():
    """`prompts` is a key of generate (the user messages) and an old key of rl train."""
    assert load_config(GenerateConfig, None, ["prompts=[a]"]).prompts == ["a"]
    with pytest.raises(ConfigError, match="dataset_name"):
        load_config(RLTrainConfig, None, ["prompts=gold"])


@pytest.mark.parametrize("cls", [RMTrainConfig, RLTrainConfig])
def test_report_to_takes_one_name_a_comma_list_or_a_list(cls, tmp_path, monkeypatch):
    import distalign.tracking as tracking

    monkeypatch.setattr(tracking, "_installed", lambda name: True)  # every tracker "there"
    assert from_cli(cls, ["report_to=none"]).report_to == ["none"]
    assert from_cli(cls, ["--report_to", "none"]).report_to == ["none"]
    assert from_cli(cls, ["--report_to", "wandb,tensorboard"]).report_to == [
        "wandb",
        "tensorboard",
    ]
    assert from_cli(cls, ["report_to=[wandb,tensorboard]"]).report_to == ["wandb", "tensorboard"]
    two = from_cli(cls, ["--report_to", "wandb", "tensorboard"])  # TRL's nargs
    assert two.report_to == ["wandb", "tensorboard"]
    path = tmp_path / "c.yaml"
    path.write_text("report_to: [wandb, trackio]\n")
    assert load_config(cls, path).report_to == ["wandb", "trackio"]
    assert load_config(cls).report_to == ["tensorboard"]


@pytest.mark.parametrize("cls", [RMTrainConfig, RLTrainConfig])
def test_resume_from_checkpoint(cls):
    assert from_cli(cls, []).resume_from_checkpoint is None
    assert from_cli(cls, ["resume_from_checkpoint=true"]).resume_from_checkpoint == "last"
    assert from_cli(cls, ["--resume_from_checkpoint"]).resume_from_checkpoint == "last"
    assert from_cli(cls, ["resume_from_checkpoint=false"]).resume_from_checkpoint is None
    folder = from_cli(cls, ["--resume_from_checkpoint", "runs/x/checkpoints/last"])
    assert folder.resume_from_checkpoint == "runs/x/checkpoints/last"


def test_rl_step_holds_whole_prompt_groups_and_micro_batches_may_cut_them():
    cfg = load_config(
        RLTrainConfig,
        None,
        ["num_generations=4", "per_device_train_batch_size=8", "gradient_accumulation_steps=3"],
    )
    assert cfg.prompts_per_step == 6
    # TRL's shape: 8 generations of a prompt over 4 micro-batches of 2 replies
    cfg = load_config(RLTrainConfig, None, ["num_generations=8", "per_device_train_batch_size=2"])
    assert cfg.prompts_per_step == 1
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        load_config(
            RLTrainConfig,
            None,
            ["num_generations=4", "per_device_train_batch_size=3", "gradient_accumulation_steps=2"],
        )
    with pytest.raises(ConfigError, match="bf16 and fp16"):
        load_config(RMTrainConfig, None, ["bf16=true", "fp16=true"])


def test_trls_steps_per_generation_and_generation_batch_size(monkeypatch):
    """TRL's two ways to size a batch of rollouts: in micro-batches per process, or in
    completions over all processes; each makes whole optimizer updates."""
    base = ["num_generations=4", "per_device_train_batch_size=8", "gradient_accumulation_steps=2"]
    default = load_config(RLTrainConfig, None, base)
    assert (default.micro_batches_per_step, default.updates_per_step) == (2, 1)
    cfg = load_config(RLTrainConfig, None, [*base, "steps_per_generation=6", "num_iterations=2"])
    assert (cfg.micro_batches_per_step, cfg.updates_per_step, cfg.prompts_per_step) == (6, 6, 12)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch sets it
    cfg = load_config(RLTrainConfig, None, [*base, "generation_batch_size=64"])
    assert (cfg.micro_batches_per_step, cfg.updates_per_step, cfg.prompts_per_step) == (4, 2, 8)
    # both, as a TRL config's dump holds them: read when they agree
    both = load_config(RLTrainConfig, None, [*base, "generation_batch_size=64",
                                             "steps_per_generation=4"])  # fmt: skip
    assert (both.micro_batches_per_step, both.updates_per_step) == (4, 2)
    # made for another number of processes: the steps are read
    other = load_config(RLTrainConfig, None, [*base, "generation_batch_size=64",
                                              "steps_per_generation=2"])  # fmt: skip
    assert other.micro_batches_per_step == 2
    for extra, message in [
        (["generation_batch_size=24"], r"positive multiple of .* \(8 × 2\)"),
        (["steps_per_generation=3"], r"steps_per_generation \(3\) must be a multiple of "
         "gradient_accumulation_steps"),
        (["steps_per_generation=0"], ">= 1"),
        (["per_device_train_batch_size=3", "steps_per_generation=2"],
         r"per_device_train_batch_size × steps_per_generation \(3 × 2\)"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_config(RLTrainConfig, None, [*base, *extra])


def test_sampling_keys_are_flat_and_inherited():
    cfg = load_config(RLTrainConfig, None, ["max_completion_length=6", "temperature=0.7"])
    assert (cfg.max_completion_length, cfg.temperature) == (6, 0.7)
    assert RLTrainConfig().max_completion_length == 64  # redeclared default
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        load_config(RLTrainConfig, None, ["temperature=-1"])
    # greedy rollouts are alike within a prompt: every advantage 0, nothing learned
    with pytest.raises(ConfigError, match=r"temperature 0: rl train.s gradient needs replies"):
        load_config(RLTrainConfig, None, ["temperature=0"])
    assert load_config(GenerateConfig, None, ["prompts=[a]", "temperature=0"]).temperature == 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    command = path.stem.split("_")[0]
    assert command in COMMANDS, f"{path.name}: no config class for command {command!r}"
    load_config(COMMANDS[command], path)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs" / "accelerate").glob("*.yaml")),
    ids=lambda p: p.name,
)  # fmt: skip
def test_accelerate_configs_parse(path):
    """The shipped `accelerate launch --config_file` configs load as accelerate reads them."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(path.stem, "DEEPSPEED")
    assert config.distributed_type.value == expected
    if path.stem == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    if path.stem.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def test_max_length_alone_below_the_default_prompt_limit_halves_it(caplog):
    with caplog.at_level(logging.INFO):
        cfg = from_cli(RMTrainConfig, ["max_length=128"])
    assert (cfg.max_length, cfg.max_prompt_length) == (128, 64)
    # the default, not the user's setting: said, not warned
    assert "max_prompt_length 256 (its default) >= max_length 128: prompts keep at most 64" in (
        caplog.text
    )
    assert all(r.levelno == logging.INFO for r in caplog.records if "prompts keep" in r.message)
    with caplog.at_level(logging.WARNING):
        from_cli(RMTrainConfig, ["max_length=128", "max_prompt_length=200"])
    assert any(r.levelno == logging.WARNING and "200 >= max_length" in r.message
               for r in caplog.records)  # fmt: skip
    assert (
        from_cli(RMTrainConfig, ["max_length=128", "max_prompt_length=100"]).max_prompt_length
        == 100
    )


def test_more_trl_and_transformers_keys():
    import torch

    from distalign.rl.train import optimizer_and_schedule as rl_schedule
    from distalign.rm.train import optimizer_and_schedule as rm_schedule

    # TRL's names of reward (the one key here for functions and models), read as it
    one = "tests.rl.test_train:reward_apple"
    assert from_cli(RLTrainConfig, ["--reward_funcs", one, one]).reward == [one, one]
    assert from_cli(RLTrainConfig, [f"reward_model_name_or_path={one}"]).reward == one
    assert from_cli(CompareConfig, ["sft_model_path=runs/sft"]).sft == "runs/sft"  # TRL's PPO
    rm_eval = from_cli(RMEvalConfig, ["model_name_or_path=m", "skip_bad_rows=true",
                                      "dataset_config=main", "dataset_revision=v1"])  # fmt: skip
    assert (rm_eval.skip_bad_rows, rm_eval.dataset_config, rm_eval.dataset_revision) == (
        True, "main", "v1")  # fmt: skip
    with pytest.raises(ConfigError, match="`reward_funcs` and `reward` both given"):
        from distalign.api import _config

        _config(RLTrainConfig, None, {"reward_funcs": one, "reward": "other:f"})
    # transformers' spelled-out defaults do nothing; another value is refused
    cfg = from_cli(RMTrainConfig, ["adam_beta1=0.9", "logging_strategy=steps", "max_steps=-1",
                                   "dataloader_num_workers=0", "--report_to", "none"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"AdamW .* adam_beta2"):
        from_cli(RMTrainConfig, ["optim=adafactor"])
    model = torch.nn.Linear(2, 1)
    # max_steps -1 (transformers' default): the steps of num_train_epochs, 32 pairs / 8
    assert rm_schedule(model, cfg, n_pairs=32, processes=1)[2] == 4
    rl = from_cli(RLTrainConfig, ["lr_scheduler_type=linear", "weight_decay=0.0",
                                  "max_steps=4"])  # fmt: skip
    optimizer, scheduler = rl_schedule(model, rl, sharded=False)
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    # transformers' AdamW keys reach the optimizer of both commands
    adam = ["adam_beta1=0.8", "adam_beta2=0.95", "adam_epsilon=1e-6"]
    for optimizer in (
        rm_schedule(model, from_cli(RMTrainConfig, adam), n_pairs=32, processes=1)[0],
        rl_schedule(model, from_cli(RLTrainConfig, [*adam, "max_steps=4"]), sharded=False)[0],
    ):
        group = optimizer.param_groups[0]
        assert (group["betas"], group["eps"]) == ((0.8, 0.95), 1e-6)
    for bad in ("adam_beta2=1", "adam_beta1=-0.1", "adam_epsilon=0"):
        with pytest.raises(ConfigError, match="adam_"):
            from_cli(RLTrainConfig, [bad])
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(rl.learning_rate * 0.5)
    steps = r"max_steps must be > 0, or -1 \(or 0, as transformers reads it\) with num_train_"
    with pytest.raises(ConfigError, match=steps):
        from_cli(RLTrainConfig, ["max_steps=-2"])
    for zero in ("-1", "0"):
        with pytest.raises(ConfigError, match=steps):
            from_cli(RLTrainConfig, [f"max_steps={zero}", "num_train_epochs=0"])
    with pytest.raises(ConfigError, match="rl train keeps float32 weights"):
        from_cli(RLTrainConfig, ["dtype=bfloat16"])


def test_trl_s_reward_model_beside_reward_funcs_gives_both(tmp_path):
    """TRL's rloo script uses reward_model_name_or_path and reward_funcs together."""
    path = tmp_path / "c.yaml"
    for text in ("reward_model_name_or_path: rm\nreward_funcs: [a.b, c.d]\n",
                 "reward_funcs: [a.b, c.d]\nreward_model_name_or_path: rm\n"):  # fmt: skip
        path.write_text(text)
        assert load_config(RLTrainConfig, path).reward == ["rm", "a.b", "c.d"]


def test_transformers_sampling_strategy_and_trl_launch_keys(tmp_path, caplog):
    assert not load_config(RMTrainConfig, None, ["train_sampling_strategy=random"]).group_by_length
    with pytest.raises(ConfigError, match=r"train_sampling_strategy: random \| group_by_length"):
        load_config(RMTrainConfig, None, ["train_sampling_strategy=sequential"])
    # epochs without max_steps count passes, as in TRL (whose max_steps is -1 by default)
    epochs = from_cli(RLTrainConfig, ["--num_train_epochs", "3"])
    assert (epochs.max_steps, epochs.num_train_epochs) == (-1, 3)
    assert epochs.for_prompts(80).max_steps == 30
    assert RLTrainConfig().for_prompts(80).max_steps == 20
    # a TRL RLOO config with both: transformers ignores the epochs beside max_steps
    path = tmp_path / "rloo.yaml"
    path.write_text("num_train_epochs: 1\nmax_steps: 7\n")
    assert load_config(RLTrainConfig, path).max_steps == 7
    path.write_text("num_train_epochs: 1\n")  # max_steps from the command line
    assert load_config(RLTrainConfig, path, ["max_steps=9"]).max_steps == 9
    assert from_cli(RLTrainConfig, ["--num_train_epochs", "1", "--max_steps", "9"]).max_steps == 9
    path.write_text("num_train_epochs: 2\n")
    assert load_config(RLTrainConfig, path).max_steps == -1
    assert load_config(RLTrainConfig, path, ["steps_per_generation=4"]).max_steps == -1
    assert load_config(RLTrainConfig, None, ["max_steps=-1"]).num_train_epochs == 3
    # the Python API: as the command line, but a config object's own max_steps stands
    from distalign.api import _config

    assert _config(RLTrainConfig, None, {"num_train_epochs": 2}).max_steps == -1
    assert _config(RLTrainConfig, RLTrainConfig(), {"num_train_epochs": 2}).max_steps == -1
    assert (
        _config(RLTrainConfig, RLTrainConfig(max_steps=50), {"num_train_epochs": 2}).max_steps == 50
    )
    with caplog.at_level(logging.WARNING):
        RLTrainConfig(num_train_epochs=2)  # built in Python: said, not counted
    assert "num_train_epochs=2 does nothing beside max_steps=20" in caplog.text
    # TRL's data set mixture: its empty default does nothing; rm train reads a mixture
    # (tests/data/test_mixture.py), a command that does not train says what to do
    path.write_text("datasets: []\nstreaming: false\ntest_split_size: null\n")
    assert load_config(RMTrainConfig, path) == RMTrainConfig(datasets=[])
    path.write_text("datasets:\n  - path: org/a\n  - path: org/b\n")
    assert load_config(RMTrainConfig, path).dataset_name == "datasets: org/a[train] + org/b[train]"
    with pytest.raises(ConfigError, match=r"rm train, rl train and data inspect read: here give"):
        load_config(RMEvalConfig, path)
    with pytest.raises(ConfigError, match=r"`num_processes` .*accelerate launch"):
        load_config(RMTrainConfig, None, ["num_processes=4"])


def test_every_key_problem_of_a_config_is_said_at_once(tmp_path):
    """A TRL config with several keys to change: one run tells all of them."""
    path = tmp_path / "c.yaml"
    path.write_text("whiten_advantages: true\nuse_vllm: true\nmax_stepz: 3\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as info:
        from_cli(RLTrainConfig, [str(path), "eval_at_start=false", "--learning_rate", "~"])
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    for expected in ("`whiten_advantages` is now `normalize_advantages`", "`use_vllm`",
                     "Key 'max_stepz' not in 'RLTrainConfig'. Did you mean 'max_steps'?",
                     "`eval_at_start` is now `eval_on_start`",
                     "`learning_rate` cannot be null"):  # fmt: skip
        assert any(expected in line for line in lines), expected


@pytest.mark.parametrize("cls", [RMTrainConfig, RLTrainConfig])
def test_lr_scheduler_type_is_checked_with_what_it_needs(cls):
    with pytest.raises(ConfigError, match="'bogus' is none of linear, cosine"):
        cls(lr_scheduler_type="bogus", report_to="none")
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau steps on a metric"):
        cls(lr_scheduler_type="reduce_lr_on_plateau", report_to="none")
    with pytest.raises(ConfigError, match=r"needs lr_scheduler_kwargs with min_lr or min_lr_rate"):
        cls(lr_scheduler_type="cosine_with_min_lr", report_to="none")
    with pytest.raises(ConfigError, match=r"e\.g\. lr_scheduler_kwargs=\{num_decay_steps: 100\}"):
        cls(lr_scheduler_type="warmup_stable_decay", report_to="none")
    with pytest.raises(ConfigError, match="linear takes no min_lr_rate"):
        cls(lr_scheduler_type="linear", lr_scheduler_kwargs={"min_lr_rate": 0.1}, report_to="none")
    cfg = cls(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
              report_to="none")  # fmt: skip
    assert cfg.lr_scheduler_kwargs == {"min_lr_rate": 0.1}


@pytest.mark.parametrize("cls", [RMTrainConfig, RLTrainConfig])
def test_a_mapping_key_takes_a_json_string_as_transformers_does(cls, tmp_path):
    """TRL configs often write a dict field as a JSON string (transformers' TrainingArguments
    loads those): in a file, as key=value and as --key value."""
    path = tmp_path / "c.yaml"
    path.write_text("lr_scheduler_type: cosine_with_min_lr\n"
                    "lr_scheduler_kwargs: '{\"min_lr_rate\": 0.1}'\n")  # fmt: skip
    assert load_config(cls, path).lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    cfg = from_cli(cls, ["lr_scheduler_type=cosine_with_min_lr",
                         "--lr_scheduler_kwargs", '{"min_lr": 1e-6}',
                         "model_init_kwargs='{\"low_cpu_mem_usage\": true}'"])  # fmt: skip
    assert cfg.lr_scheduler_kwargs == {"min_lr": 1e-6}
    assert cfg.model_init_kwargs == {"low_cpu_mem_usage": True}
    path.write_text("model_init_kwargs: '{low_cpu_mem_usage: true}'\n")  # YAML's flow style
    assert load_config(cls, path).model_init_kwargs == {"low_cpu_mem_usage": True}
    with pytest.raises(ConfigError, match=r"lr_scheduler_kwargs: .* '\{min_lr_rate: 0\.1' is not"):
        load_config(cls, None, ["lr_scheduler_kwargs='{min_lr_rate: 0.1'"])
    with pytest.raises(ConfigError, match=r"a JSON object as a string, got '\[1\]'"):
        load_config(cls, None, ["lr_scheduler_kwargs='[1]'"])


def test_an_exponent_is_a_number_inside_a_mapping_too(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-6 as a string; a scheduler would get min_lr='1e-6'."""
    path = tmp_path / "c.yaml"
    path.write_text("lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr: 1e-6}\n"
                    "learning_rate: 3e-5\n")  # fmt: skip
    cfg = load_config(RLTrainConfig, path)
    assert cfg.lr_scheduler_kwargs == {"min_lr": 1e-6} and cfg.learning_rate == 3e-5
    cfg = from_cli(RMTrainConfig, ["lr_scheduler_type=cosine_with_min_lr",
                                   "--lr_scheduler_kwargs", "{min_lr: 2E-7}"])  # fmt: skip
    assert cfg.lr_scheduler_kwargs == {"min_lr": 2e-7}
    # and a string that reads as such a number is saved quoted, so it comes back a string
    named = RMTrainConfig(run_name="1e3", model_revision="2E5", report_to="none")
    assert load_config(RMTrainConfig, save_config(named, tmp_path)) == named


@pytest.mark.parametrize("cls", [RMTrainConfig, RLTrainConfig])
def test_transformers_enums_are_saved_as_their_values(cls, tmp_path):
    """TRL users pass SchedulerType.COSINE or IntervalStrategy.EPOCH from Python."""
    from transformers import IntervalStrategy, SchedulerType

    every = IntervalStrategy.EPOCH if cls is RMTrainConfig else IntervalStrategy.STEPS
    cfg = cls(lr_scheduler_type=SchedulerType.COSINE, eval_strategy=every,
              save_strategy=IntervalStrategy.NO, report_to="none")  # fmt: skip
    saved = yaml.safe_load(save_config(cfg, tmp_path).read_text())
    assert (saved["lr_scheduler_type"], saved["eval_strategy"], saved["save_strategy"]) == (
        "cosine", every.value, "no")  # fmt: skip
    assert load_config(cls, tmp_path / "config.yaml") == cfg


def test_a_training_config_handed_to_a_command_that_does_not_train(tmp_path, caplog):
    """rm eval --config rm_trl.yaml: the training keys do nothing, and each says so for this
    command (not another command's reason, nor "give transformers' default" for a default)."""
    path = tmp_path / "rm_trl.yaml"
    path.write_text("model_name_or_path: rm\nlearning_rate: 3.0e-5\nnum_train_epochs: 1\n"
                    "report_to: none\nper_device_eval_batch_size: 8\n")  # fmt: skip
    with caplog.at_level(logging.INFO):
        cfg = load_config(RMEvalConfig, path)
    assert cfg.per_device_eval_batch_size == 8  # a key of rm eval's own
    # one line for all of them
    assert (
        "3 keys that do nothing here: learning_rate, num_train_epochs, report_to: this "
        "command does not train" in caplog.text
    )
    assert "rl train" not in caplog.text
    with pytest.raises(ConfigError, match="`bf16` is a training key; this command takes dtype=bf"):
        load_config(CompareConfig, None, ["bf16=true"])
    assert load_config(CompareConfig, None, ["bf16=false"]) == CompareConfig()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_config(RMTrainConfig, None, ["logging_dir=null", "adam_beta1=0.9"])
    assert "logging_dir: trackers write under output_dir" in caplog.text
    assert "give transformers' default" not in caplog.text


def test_an_override_beats_the_file_for_a_key_and_its_other_name(tmp_path):
    """The file's warmup_ratio and a command line's warmup_steps: the command line wins, as
    any override does (each override is read on its own)."""
    path = tmp_path / "c.yaml"
    path.write_text("warmup_ratio: 0.1\n")
    assert load_config(RMTrainConfig, path, ["warmup_steps=5"]).warmup_steps == 5
    path.write_text("warmup_steps: 10\n")
    assert load_config(RMTrainConfig, path, ["warmup_ratio=0.2"]).warmup_steps == 0.2


def test_trl_s_pad_to_multiple_of_auto_is_no_rounding_up():
    # TRL's RewardConfig and RLOOConfig default: "auto", padding to a multiple on Neuron only
    assert from_cli(RMTrainConfig, ["pad_to_multiple_of=auto"]).pad_to_multiple_of is None
    assert from_cli(RMTrainConfig, ["pad_to_multiple_of=8"]).pad_to_multiple_of == 8
    from_cli(RLTrainConfig, ["--pad_to_multiple_of", "auto"])  # does nothing
    with pytest.raises(ConfigError, match="pads each pass to its longest row"):
        from_cli(RLTrainConfig, ["pad_to_multiple_of=8"])


def test_ddp_timeout_reaches_the_process_group_and_local_rank_is_the_launchers():
    from distalign.config import NOT_OFFERED

    assert from_cli(RMTrainConfig, ["ddp_timeout=7200"]).ddp_timeout == 7200
    assert from_cli(RLTrainConfig, ["--ddp_timeout", "60"]).ddp_timeout == 60
    assert "LOCAL_RANK" in NOT_OFFERED["local_rank"]
    from_cli(RMTrainConfig, ["local_rank=-1"])  # does nothing


def test_start_run_gives_accelerate_the_timeout(tmp_path, monkeypatch):
    import accelerate

    from distalign.tracking import start_run

    seen = {}

    class Spy(accelerate.Accelerator):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", Spy)
    start_run(RMTrainConfig(report_to="none", ddp_timeout=90), tmp_path / "run")
    (handler,) = seen["kwargs_handlers"]
    assert handler.timeout.total_seconds() == 90


def test_a_config_s_text_is_read_as_written_not_interpolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "hf_secret")
    path = tmp_path / "shipped.yaml"
    path.write_text("run_name: ${oc.env:SOME_TOKEN}\nreport_to: [none]\n")
    assert load_config(RMTrainConfig, path).run_name == "${oc.env:SOME_TOKEN}"
    for args in (["run_name=x_${oc.env:SOME_TOKEN}"], ["--run_name", "x_${oc.env:SOME_TOKEN}"]):
        assert from_cli(RMTrainConfig, args).run_name == "x_${oc.env:SOME_TOKEN}"
    cfg = from_cli(RLTrainConfig, ["reward=${oc.env:SOME_TOKEN}"])
    assert cfg.reward == "${oc.env:SOME_TOKEN}"
    # OmegaConf's own escapes stay text too: a backslash before ${ is kept, nothing resolves
    for text in ("a\\${oc.env:SOME_TOKEN}", "a\\\\${oc.env:SOME_TOKEN}"):
        path.write_text(f"run_name: '{text}'\n")
        assert load_config(RMTrainConfig, path).run_name == text
        assert from_cli(RMTrainConfig, [f"run_name={text}"]).run_name == text


def test_a_no_flag_sets_a_bool_key_false_as_hfargumentparser_reads_it():
    assert from_cli(RLTrainConfig, ["--no_use_peft"]).use_peft is False
    assert from_cli(RLTrainConfig, ["--no-disable-dropout"]).disable_dropout is False
    cfg = from_cli(RMTrainConfig, ["--gradient_checkpointing", "--no_group_by_length"])
    assert cfg.gradient_checkpointing and cfg.group_by_length is False
    # transformers 5's name of gradient_checkpointing, as a flag too
    assert from_cli(RMTrainConfig, ["--activation_checkpointing"]).gradient_checkpointing
    assert not from_cli(RLTrainConfig, ["--no_activation_checkpointing"]).gradient_checkpointing


TRL_DUMP_KEYS = """\
accelerator_config: {split_batches: false, dispatch_batches: null, even_batches: true,
  use_seedable_sampler: true, non_blocking: false, gradient_accumulation_kwargs: null}
debug: []
hub_token: <HUB_TOKEN>
activation_checkpointing: true
gradient_checkpointing: true
per_device_train_batch_size: 8
steps_per_generation: 1
generation_batch_size: 8
gradient_accumulation_steps: 1
max_steps: 5
"""


def test_the_keys_trainingarguments_to_dict_writes_at_their_defaults_load(tmp_path):
    path = tmp_path / "dump.yaml"
    path.write_text(TRL_DUMP_KEYS)
    cfg = load_config(RLTrainConfig, path)
    assert cfg.gradient_checkpointing and cfg.micro_batches_per_step == 1
    path.write_text(TRL_DUMP_KEYS.replace("split_batches: false", "split_batches: true"))
    with pytest.raises(ConfigError, match="accelerator_config"):
        load_config(RLTrainConfig, path)


@pytest.mark.parametrize("laptop", [False, True])
def test_trl_config_dumps_load(tmp_path, laptop):
    """TRL's RLOOConfig and RewardConfig as ``to_dict()`` writes them, on a GPU machine's
    settings and on a laptop's, where TRL needs use_cpu=true (and transformers then writes
    dataloader_pin_memory: false)."""
    pytest.importorskip("trl")
    import enum
    import warnings

    from trl import RewardConfig, RLOOConfig

    settings = {"use_cpu": True} if laptop else {"bf16": False, "save_only_model": True}
    for trl_cls, cls in ((RLOOConfig, RLTrainConfig), (RewardConfig, RMTrainConfig)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dump = trl_cls(output_dir=str(tmp_path), **settings).to_dict()
        dump = {k: v.value if isinstance(v, enum.Enum) else v for k, v in dump.items()}
        path = tmp_path / "trl.yaml"
        path.write_text(yaml.safe_dump(json.loads(json.dumps(dump, default=str))))
        cfg = load_config(cls, path)
        assert cfg.learning_rate == dump["learning_rate"] and cfg.use_cpu is laptop
        assert cfg.save_only_model is not laptop  # transformers' key, as set
        assert (cfg.max_steps, cfg.num_train_epochs) == (-1, 3)  # TRL's: 3 passes


def test_a_laptop_s_trl_keys_load_and_use_cpu_keeps_training_on_the_cpu(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("use_cpu: true\ndataloader_pin_memory: false\neos_token: <EOS_TOKEN>\n"
                    "pad_token: <PAD_TOKEN>\nreport_to: none\n")  # fmt: skip
    cfg = load_config(RMTrainConfig, path)
    assert cfg.use_cpu
    with pytest.raises(ConfigError, match="`eos_token`"):
        load_config(RMTrainConfig, None, ["eos_token=<|im_end|>"])  # a token set: refused
    import accelerate

    from distalign.tracking import start_run

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(accelerate, "Accelerator", fake)
    with pytest.raises(RuntimeError, match="stop"):
        start_run(cfg, tmp_path / "out")
    assert seen["cpu"] is True


def test_a_reward_model_flag_beside_a_files_reward_funcs_trains_on_both(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward_funcs: [a.b:f]\n")
    cfg = from_cli(RLTrainConfig, ["--config", str(path), "--reward_model_name_or_path", "rm"])
    assert cfg.reward == ["rm", "a.b:f"]  # the model first, as TRL's rloo script
    cfg = from_cli(RLTrainConfig, [str(path), "reward_model_name_or_path=rm"])
    assert cfg.reward == ["rm", "a.b:f"]
    # a flag of the file's own key replaces that field, and keeps the other
    assert from_cli(RLTrainConfig, [str(path), "--reward_funcs", "c.d:g"]).reward == ["c.d:g"]
    both = [str(path), "--reward_funcs", "c.d:g", "--reward_model_name_or_path", "rm"]
    assert from_cli(RLTrainConfig, both).reward == ["rm", "c.d:g"]
    path.write_text("reward_funcs: [a.b:f]\nreward_model_name_or_path: rm\n")
    swap = [str(path), "--reward_model_name_or_path", "rm2"]
    assert from_cli(RLTrainConfig, swap).reward == ["rm2", "a.b:f"]
    with pytest.raises(ConfigError, match="is not of the form key=value"):
        load_config(RLTrainConfig, path, ["oops"])
    # flags alone of both names train on both too, in either order (TRL's rloo script)
    for flags in (
        ["--reward_model_name_or_path", "rm", "--reward_funcs", "c.d:g", "e:f"],
        ["--reward_funcs", "c.d:g", "e:f", "--reward_model_name_or_path", "rm"],
    ):
        assert from_cli(RLTrainConfig, flags).reward == ["rm", "c.d:g", "e:f"]  # fmt: skip
    assert from_cli(RLTrainConfig, ["--reward_funcs", "c.d:g"]).reward == ["c.d:g"]


def test_trls_reward_model_path_and_vllms_top_k_off_are_read():
    cfg = load_config(RLTrainConfig, None, ["reward_model_path=runs/rm", "top_k=-1"])
    assert (cfg.reward, cfg.top_k) == ("runs/rm", 0)
    with pytest.raises(ConfigError, match="top_k must be >= 0"):
        load_config(RLTrainConfig, None, ["top_k=-2"])


def test_the_earlier_trl_rloo_names_are_read_as_today_s():
    old = ["kl_coef=0.1", "rloo_k=2", "num_ppo_epochs=2", "response_length=16"]
    cfg = load_config(RLTrainConfig, None, old)
    assert (cfg.beta, cfg.num_generations, cfg.num_iterations, cfg.max_completion_length) == (
        0.1, 2, 2, 16)  # fmt: skip
    with pytest.raises(ConfigError, match="`rloo_k` and `num_generations` both given"):
        load_config(RLTrainConfig, None, ["rloo_k=2", "num_generations=4"])


def test_transformers_generate_names_are_read_and_its_switches_said():
    given = ["prompts=[a]", "max_new_tokens=8", "num_return_sequences=2", "do_sample=true"]
    cfg = load_config(GenerateConfig, None, given)
    assert (cfg.max_completion_length, cfg.num_generations) == (8, 2)
    with pytest.raises(ConfigError, match=r"`do_sample`.*decode greedily at temperature=0"):
        load_config(GenerateConfig, None, ["prompts=[a]", "do_sample=false"])


def test_one_rule_for_formats_the_failure_budget_and_the_gold_alias(tmp_path, monkeypatch):
    from distalign.data.load import is_gold
    from distalign.rm.config import RMTrainConfig

    with pytest.raises(ConfigError, match="format must be one of"):
        load_config(RMTrainConfig, None, ["format=bogus"])
    with pytest.raises(ConfigError, match="max_nonfinite_steps must be >= 1"):
        load_config(RLTrainConfig, None, ["max_nonfinite_steps=0"])
    monkeypatch.chdir(tmp_path)
    assert is_gold("gold")
    (tmp_path / "gold").mkdir()  # a local folder of that name comes first, as data loads it
    assert not is_gold("gold")


def test_trls_older_reward_model_key_joins_reward_funcs_and_reward_beside_both_is_refused(
    tmp_path,
):
    flags = ["reward_model_path=rm", "reward_funcs=a.b"]
    assert load_config(RLTrainConfig, None, flags).reward == ["rm", "a.b"]
    path = tmp_path / "c.yaml"
    path.write_text("reward_model_path: rm\nreward_funcs: [a.b]\n")
    assert load_config(RLTrainConfig, path, []).reward == ["rm", "a.b"]
    with pytest.raises(ConfigError, match="give one of them"):
        load_config(RLTrainConfig, None, ["reward=x", "reward_model_path=rm", "reward_funcs=a.b"])


def test_grpo_s_scale_rewards_and_loss_type_pick_what_does_their_job(tmp_path):
    """TRL GRPO's scale_rewards names the estimator that scales so (group: grpo, batch:
    grpo_batch, none: dr_grpo) and its loss_type the weighting of each reply; a baseline
    beside it that disagrees is refused."""
    pairs = [("group", "grpo"), ("none", "dr_grpo"), ("true", "grpo"), ("false", "dr_grpo"),
             ("batch", "grpo_batch")]  # fmt: skip
    for value, baseline in pairs:
        assert from_cli(RLTrainConfig, [f"scale_rewards={value}"]).baseline == baseline
    clashes = (["baseline=rloo", "scale_rewards=group"], ["scale_rewards=group", "baseline=rloo"],
               [("scale_rewards", "group"), ("baseline", "rloo")])  # fmt: skip
    for flags in clashes:
        with pytest.raises(ConfigError, match="`scale_rewards` and `baseline` both given"):
            load_config(RLTrainConfig, None, flags)  # not the later one silently
    assert (
        load_config(RLTrainConfig, None, ["scale_rewards=none", "baseline=dr_grpo"]).baseline
        == "dr_grpo"
    )
    path = tmp_path / "grpo.yaml"
    path.write_text("scale_rewards: group\nloss_type: dapo\nuse_bias_correction_kl: true\n"
                    "baseline: grpo\n")  # fmt: skip
    cfg = load_config(RLTrainConfig, path)
    assert (cfg.baseline, cfg.loss_type) == ("grpo", "dapo")
    path.write_text("scale_rewards: group\nbaseline: rloo\n")
    with pytest.raises(ConfigError, match="`scale_rewards: group` is `baseline: grpo`"):
        load_config(RLTrainConfig, path)
    with pytest.raises(ConfigError, match="scale_rewards must be group, batch or none"):
        from_cli(RLTrainConfig, ["scale_rewards=sometimes"])
    with pytest.raises(ConfigError, match="loss_type: sequence"):
        from_cli(RLTrainConfig, ["loss_type=token"])


def test_a_trl_grpo_config_dump_loads_as_grpo(tmp_path):
    pytest.importorskip("trl")
    import warnings

    from trl import GRPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dump = GRPOConfig(output_dir=str(tmp_path), use_cpu=True).to_dict()
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(dump, default=str))))
    cfg = load_config(RLTrainConfig, path)
    assert (cfg.baseline, cfg.loss_type, cfg.beta) == ("grpo", dump["loss_type"], dump["beta"])
    assert (cfg.max_steps, cfg.num_train_epochs) == (-1, dump["num_train_epochs"])
    assert cfg.importance_sampling_level == "token" and cfg.delta is None  # TRL GRPO's


def test_importance_sampling_level_and_delta_are_checked():
    assert RLTrainConfig().ratio_level == "reply"  # TRL RLOO's
    gspo = from_cli(RLTrainConfig, ["importance_sampling_level=sequence", "delta=1.5"])
    assert (gspo.importance_sampling_level, gspo.delta) == ("sequence", 1.5)
    with pytest.raises(ConfigError, match=r"importance_sampling_level: reply \| token \| seq"):
        from_cli(RLTrainConfig, ["importance_sampling_level=tokens"])
    eighty = from_cli(RLTrainConfig, ["top_entropy_quantile=0.2", "num_iterations=2",
                                      "importance_sampling_level=token"])  # fmt: skip
    assert eighty.top_entropy_quantile == 0.2
    assert from_cli(RLTrainConfig, ["top_entropy_quantile=0.2"]).num_iterations == 1
    with pytest.raises(ConfigError, match="a reply-level ratio has none"):
        from_cli(RLTrainConfig, ["top_entropy_quantile=0.2", "num_iterations=2"])
    assert from_cli(RLTrainConfig, ["top_entropy_quantile=0"]).top_entropy_quantile == 0
    with pytest.raises(ConfigError, match=r"top_entropy_quantile must be in \[0, 1\]"):
        from_cli(RLTrainConfig, ["top_entropy_quantile=1.5"])
    with pytest.raises(ConfigError, match="delta must be above 1 "):
        from_cli(RLTrainConfig, ["delta=0.9"])
    assert from_cli(RLTrainConfig, ["delta=1.2", "epsilon_high=0.28"]).delta == 1.2  # as TRL


def test_data_seed_orders_the_data_alone():
    from distalign.config import order_seed
    from distalign.rm.data import epoch_batches

    lengths = {"length": [random.Random(0).randint(5, 60) for _ in range(64)]}

    def batches(**kw):
        return epoch_batches(lengths, RMTrainConfig(report_to="none", **kw), epoch=0)

    assert batches(seed=0, data_seed=7) == batches(seed=7) != batches(seed=0)
    assert order_seed(RLTrainConfig(report_to="none", seed=1, data_seed=3)) == 3
    assert order_seed(RLTrainConfig(report_to="none", seed=1)) == 1


def test_trl_grpo_s_other_loss_types_load_with_their_keys_and_warnings(tmp_path, caplog):
    """cispo, sapo, luspo and vespo are loss types of rl train with TRL's keys; what TRL's GRPO
    warns of is warned of (cispo's ε_max below 1, luspo at another level than sequence), and
    rm train reads the objectives' keys as doing nothing there."""
    path = tmp_path / "grpo.yaml"
    path.write_text("loss_type: sapo\nsapo_temperature_neg: 2.0\nvespo_k_pos: 1.5\n")
    cfg = load_config(RLTrainConfig, path)
    assert (cfg.loss_type, cfg.sapo_temperature_neg, cfg.vespo_k_pos) == ("sapo", 2.0, 1.5)
    with caplog.at_level(logging.WARNING):
        from_cli(RLTrainConfig, ["loss_type=cispo"])
    assert "epsilon_high=0.2" in caplog.text and "ScaleRL advises epsilon_high=5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        from_cli(RLTrainConfig, ["loss_type=cispo", "epsilon_high=5"])
        from_cli(RLTrainConfig, ["loss_type=luspo", "importance_sampling_level=sequence"])
        from_cli(RLTrainConfig, ["loss_type=luspo"])  # unset: GSPO's sequence level
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        from_cli(RLTrainConfig, ["loss_type=luspo", "importance_sampling_level=token"])
        from_cli(RLTrainConfig, ["loss_type=sapo", "delta=2"])
    assert "give importance_sampling_level=sequence" in caplog.text
    assert "which loss_type sapo does not take" in caplog.text
    with pytest.raises(ConfigError, match="sapo_temperature_pos and sapo_temperature_neg"):
        from_cli(RLTrainConfig, ["loss_type=sapo", "sapo_temperature_pos=0"])
    # vespo's and cispo's terms stay per token: the entropy mask needs no per-token ratio
    from_cli(RLTrainConfig, ["loss_type=vespo", "top_entropy_quantile=0.5", "num_iterations=2"])
    rm = tmp_path / "rm.yaml"
    rm.write_text("sapo_temperature_neg: 2.0\nmax_steps: 1\n")
    with caplog.at_level(logging.INFO, logger="distalign.config"):
        load_config(RMTrainConfig, rm)
    assert "only rl train's loss_type sapo | vespo reads it" in caplog.text


def test_a_list_of_text_key_takes_one_text_as_written_and_aliases_keep_their_kind():
    """prompts=Note: hi is one prompt (only a [...] value is read as YAML); a YAML file's
    item that is not text is refused with how to quote it; split=test is --split test."""
    from distalign.command_configs import GenerateConfig
    from distalign.config import parse_cli_args

    for text in ("Note: hi", "yes", "3"):
        assert load_config(GenerateConfig, None, [f"prompts={text}"]).prompts == [text]
    with pytest.raises(ConfigError, match=r"item 1 reads as bool True, not text"):
        load_config(GenerateConfig, None, ["prompts=[a, yes]"])
    aliases = {"split": "dataset_split", "rm_run": "rm_runs"}
    got = parse_cli_args(["p.jsonl", "split=test", "rm-run=x", "rm_run=y"], "dataset_name",
                         aliases, list_keys=("rm_runs",))  # fmt: skip
    assert got == (None, [("dataset_name", "p.jsonl"), ("dataset_split", "test"),
                          ("rm_runs", ["x", "y"])])  # fmt: skip


def test_rows_or_a_dataframe_handed_over_in_python_are_said_how_to_give_them():
    for cls in (RMTrainConfig, RLTrainConfig):
        with pytest.raises(
            ValueError, match=r"dataset_name: .*Dataset.from_list\(rows\).*got list"
        ):
            cls(dataset_name=[{"prompt": "a", "chosen": "b", "rejected": "c"}])
        with pytest.raises(ValueError, match=r"eval_dataset_name: .*got dict"):
            cls(eval_dataset_name={"prompt": ["a"]})
        with pytest.raises(ValueError, match=r"got int \(quote it on the command line\)"):
            from_cli(cls, ["dataset_name=2024"])
    assert RMTrainConfig(dataset_name=Path("pairs.jsonl")).dataset_name == "pairs.jsonl"
