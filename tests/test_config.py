"""YAML + key=value configs onto typed dataclasses; every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distalign.gold.build import BenchConfig
from distalign.config import (
    ConfigError,
    GenerateConfig,
    load_config,
    save_config,
    split_config_args,
)
from distalign.rl.train import RLTrainConfig
from distalign.rm.train import RMTrainConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
COMMANDS = {
    "generate": GenerateConfig,
    "rm": RMTrainConfig,
    "gold": BenchConfig,
    "rl": RLTrainConfig,
}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts: [hi]\nk: 2\nsampling:\n  temperature: 0.5\n")
    cfg = load_config(GenerateConfig, path, ["k=3", "sampling.top_p=0.8"])
    assert isinstance(cfg, GenerateConfig)
    assert (cfg.k, cfg.sampling.temperature, cfg.sampling.top_p) == (3, 0.5, 0.8)
    assert cfg.prompts == ["hi"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompts=[a]", "kk=1"], "Key 'kk' not in 'GenerateConfig'"),
        (["prompts=[a]", "k=many"], "k"),
        (["prompts=[a]", "sampling.top_p=2"], "top_p must be in"),
        (["k=2"], "give prompts"),
        (["prompts"], "not of the form key=value"),
    ],
)
def test_bad_overrides_are_clear(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GenerateConfig, None, overrides)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts: [hi]\nsampling:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*temprature"):
        load_config(GenerateConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GenerateConfig, tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(GenerateConfig, None, ["prompts=[a,b]", "sampling.seed=5"])
    path = save_config(cfg, tmp_path)
    assert yaml.safe_load(path.read_text())["sampling"]["seed"] == 5
    assert load_config(GenerateConfig, path) == cfg


def test_split_config_args():
    assert split_config_args(["c.yaml", "a=1"]) == ("c.yaml", ["a=1"])
    assert split_config_args(["a=1"]) == (None, ["a=1"])
    assert split_config_args([]) == (None, [])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    command = path.stem.split("_")[0]
    assert command in COMMANDS, f"{path.name}: no config class for command {command!r}"
    load_config(COMMANDS[command], path)
