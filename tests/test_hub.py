"""Without a network, hub ids fail at once with the reason, and cached ones still load."""

from __future__ import annotations

import socket
import time
from typing import ClassVar

import datasets
import pytest
from huggingface_hub import constants

from distalign import hub
from distalign.models.load import ModelNotFoundError, resolve_model


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """The hub's host does not resolve; offline switches restored afterwards; an empty cache."""

    def fail(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.offline_if_unreachable.cache_clear()
    yield tmp_path / "hub"
    hub.offline_if_unreachable.cache_clear()


def test_an_unreachable_hub_switches_to_offline_mode_once(no_network, caplog):
    assert "does not resolve (Name or service not known)" in hub.offline_if_unreachable()
    assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert "only the local Hugging Face cache is read" in caplog.text
    hub.offline_if_unreachable.cache_clear()
    assert hub.offline_if_unreachable() is None  # offline mode on: nothing to look up


def test_a_hub_model_not_in_the_cache_fails_at_once_with_the_reason(no_network):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="cannot be reached to download it"):
        resolve_model("someone/some-model")
    assert time.perf_counter() - start < 5


def test_a_cached_hub_model_still_resolves(no_network):
    snapshot = no_network / "models--someone--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (no_network / "models--someone--cached" / "refs").mkdir()
    (no_network / "models--someone--cached" / "refs" / "main").write_text("abc123")
    assert resolve_model("someone/cached") == "someone/cached"
    assert constants.HF_HUB_OFFLINE  # from_pretrained reads the cache without asking the hub


def test_a_hub_data_set_fails_at_once_with_the_reason(no_network):
    from distalign.data.load import DataSourceError, load_preferences

    start = time.perf_counter()
    with pytest.raises(DataSourceError, match=r"the hub cannot be reached: .* does not resolve"):
        load_preferences("someone/some-data", "train")
    assert time.perf_counter() - start < 10


class FakeHub:
    """huggingface_hub.HfApi as far as push_to_hub uses it: records the calls; ``refuse``
    makes create_repo fail as a missing login does."""

    calls: ClassVar[list] = []
    refuse = False

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, name, private=None, exist_ok=False):
        if FakeHub.refuse:
            raise RuntimeError("401 Unauthorized")
        FakeHub.calls.append(("create_repo", name, private, exist_ok))
        return type("Url", (), {"repo_id": name if "/" in name else f"me/{name}"})()

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeHub.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        card = (Path(folder_path) / "README.md").read_text()
        FakeHub.calls.append(("upload_folder", repo_id, revision, files, card, commit_message))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls, FakeHub.refuse = [], False
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(hub, "offline_if_unreachable", lambda: None)
    return FakeHub


def test_rm_train_pushes_its_final_model_with_a_card(tiny_model_dir, tmp_path, fake_hub):
    from distalign.rm.train import run
    from tests.conftest import write_jsonl
    from tests.rm.test_train import config, make_pairs

    write_jsonl(tmp_path / "train.jsonl", make_pairs(16, seed=0))
    write_jsonl(tmp_path / "test.jsonl", make_pairs(8, seed=1))
    run(config(tiny_model_dir, tmp_path, tmp_path, push_to_hub=True, hub_private_repo=True,
               hub_revision="v1", max_steps=1))  # fmt: skip
    creates = [c for c in fake_hub.calls if c[0] == "create_repo"]
    assert creates == [("create_repo", "run", True, True)] * 2  # before training, and to push
    (*_, upload) = fake_hub.calls
    name, repo_id, revision, files, card, message = upload
    assert (name, repo_id, revision) == ("upload_folder", "me/run", "v1")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert "library_name: transformers" in card and "pipeline_tag: text-classification" in card
    assert 'AutoModelForSequenceClassification.from_pretrained("me/run")' in card
    assert "| accuracy |" in card and "step 1" in message
    assert "base_model" not in card and str(tmp_path) not in card  # local folders: no path
    assert (tmp_path / "run" / "final" / "README.md").read_text() == card


def test_push_to_hub_fails_before_training_without_a_login(tiny_model_dir, tmp_path, fake_hub):
    from distalign.rl.train import run
    from distalign.rm.train import run as rm_run
    from tests.conftest import write_jsonl
    from tests.rl.test_train import config
    from tests.rm.test_train import config as rm_config
    from tests.rm.test_train import make_pairs

    fake_hub.refuse = True
    with pytest.raises(hub.HubUploadError, match=r"cannot create or reach 'org/policy'.*login"):
        run(config(tiny_model_dir, tmp_path, push_to_hub=True, hub_model_id="org/policy"))
    assert not (tmp_path / "rl" / "final").exists()
    write_jsonl(tmp_path / "train.jsonl", make_pairs(16, seed=0))
    with pytest.raises(hub.HubUploadError, match="cannot create or reach 'run'"):
        rm_run(rm_config(tiny_model_dir, tmp_path, tmp_path, push_to_hub=True, max_steps=1))
    assert not (tmp_path / "run" / "final").exists()


def test_rl_train_pushes_its_policy(tiny_model_dir, tmp_path, fake_hub):
    """A LoRA policy's card is distalign's, not the template PEFT's save_pretrained writes."""
    from distalign.rl.train import run
    from tests.rl.test_train import config

    run(config(tiny_model_dir, tmp_path, push_to_hub=True, hub_model_id="org/policy",
               max_steps=1, max_eval_samples=2, use_peft=True, learning_rate=1e-4))  # fmt: skip
    (*_, upload) = fake_hub.calls
    assert upload[1] == "org/policy" and "README.md" in upload[3]
    card = upload[4]
    assert 'AutoPeftModelForCausalLM.from_pretrained("org/policy")' in card
    assert "library_name: peft" in card and "Model Card for Model ID" not in card
    assert "pipeline_tag: text-generation" in card and "| measure | before | after |" in card
    assert "against `tests.rl.test_train:reward_apple`" in card and str(tmp_path) not in card


def test_a_final_model_carries_its_card_without_a_push(tiny_model_dir, tmp_path, fake_hub):
    """As TRL's trainers: final/README.md is the run's card (not PEFT's empty template), and
    says when its figures come from the training data."""
    from distalign.rl.train import run
    from distalign.rm.train import run as rm_run
    from tests.conftest import write_jsonl
    from tests.rl.test_train import config
    from tests.rm.test_train import config as rm_config
    from tests.rm.test_train import make_pairs

    run(config(tiny_model_dir, tmp_path, max_steps=1, max_eval_samples=2, use_peft=True,
               learning_rate=1e-4))  # fmt: skip
    card = (tmp_path / "rl" / "final" / "README.md").read_text()
    assert 'AutoPeftModelForCausalLM.from_pretrained("rl")' in card
    assert "Model Card for Model ID" not in card and "| measure | before | after |" in card
    assert not (tmp_path / "rl" / "checkpoints" / "last" / "README.md").exists()  # PEFT's
    assert "Measured on 2 held-out prompts (`gold`, split `test`)" in card
    assert "Not uploaded: until `hf upload rl <this folder>`" in card
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16, seed=0))  # one file: nothing held out
    rm_run(rm_config(tiny_model_dir, tmp_path, tmp_path, dataset_name=str(tmp_path / "pairs.jsonl"),
                     max_steps=1, use_peft=True))  # fmt: skip
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "load_reward_model" in card and "| accuracy |" in card
    assert "Measured on the training pairs (`pairs.jsonl (local)`; none were held out)" in card
    assert fake_hub.calls == []  # nothing reached the hub


def test_a_card_says_where_its_figures_were_measured(tmp_path):
    import datasets

    from distalign.rm.config import RMTrainConfig
    from tests.conftest import write_jsonl

    one = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    rows = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])

    def said(**kw):
        return hub.measured_on(RMTrainConfig(**kw))

    assert said(dataset_name="gold") == "Measured on held-out pairs (`gold`, split `test`)"
    assert said(dataset_name="org/prefs", dataset_test_split="validation") == (
        "Measured on held-out pairs (`org/prefs`, split `validation`)")  # fmt: skip
    assert said(dataset_name=str(one)).startswith("Measured on the training pairs (`pairs.jsonl")
    assert said(dataset_name=str(one), eval_dataset_name=str(one)).startswith("Measured on the tr")
    assert said(dataset_name=str(one), eval_dataset_name=str(other)) == (
        "Measured on held-out pairs (`other.jsonl (local)`)"
    )  # one file: no split named
    assert said(dataset_name="org/prefs", dataset_test_split="train").startswith("Measured on the")
    assert said(dataset_name=str(one), dataset_train_split="train[:90%]",
                dataset_test_split="train[90%:]") == (
        "Measured on held-out pairs (`pairs.jsonl (local)`, split `train[90%:]`)")  # fmt: skip
    assert (
        said(dataset_name=rows)
        == "Measured on the training pairs (the Dataset given; none were held out)"
    )
    assert said(dataset_name=rows, eval_dataset_name=rows.select([0])) == (
        "Measured on held-out pairs (the Dataset given as eval_dataset_name)")  # fmt: skip


def test_hub_keys_are_checked_and_read_from_a_trl_config(tmp_path):
    from distalign.config import ConfigError, load_config
    from distalign.rl.config import RLTrainConfig

    cfg = load_config(RLTrainConfig, None, ["push_to_hub=true", "hub_model_id=org/x",
                                            "hub_strategy=end"])  # fmt: skip
    assert (cfg.push_to_hub, cfg.hub_model_id, cfg.hub_strategy) == (True, "org/x", "end")
    with pytest.raises((ConfigError, ValueError), match="hub_strategy must be one of"):
        load_config(RLTrainConfig, None, ["hub_strategy=checkpoint"])


def test_a_model_card_names_hub_models_only():
    card = hub.model_card(repo_id="org/m", base_model="smollm2-135m-instruct", datasets=[],
                          tags=["x"], pipeline_tag="text-generation", library="transformers",
                          body="b")  # fmt: skip
    assert "base_model" not in card  # an alias, not a hub id
    assert hub.base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = hub.model_card(repo_id="org/m", base_model="a/b", datasets=["gold", "c/d"], tags=[],
                          pipeline_tag="text-generation", library="peft", body="b")  # fmt: skip
    assert "base_model: a/b" in card and "- c/d" in card and "gold" not in card
    assert card.startswith("---\n") and "\n# m\n" in card
    table = hub.figures_table({"a": {"n": 3, "nested": {"x": 1}, "flag": True}, "b": {"m": 0.5}})
    assert table.splitlines() == ["| measure | a | b |", "|---|---|---|", "| n | 3 |  |",
                                  "| m |  | 0.5 |"]  # fmt: skip
    table = hub.figures_table({"before": None, "after": {"reward": 0.25}})  # eval_on_start off
    assert table.splitlines()[2] == "| reward | not measured | 0.25 |"
    assert hub.shown("/home/someone/data/pairs.jsonl") == "pairs.jsonl (local)"
    assert hub.shown("/home/someone/runs/my_rm/final/") == "my_rm/final (local)"  # the run's
    assert (hub.shown("gold"), hub.shown("org/set"), hub.shown(len)) == ("gold", "org/set", "len")
    assert hub.shown("pairs.jsonl") == "pairs.jsonl (local)"  # relative, as absolute


def test_an_adapter_of_the_embedded_model_goes_up_naming_its_hub_base(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("DISTALIGN_CACHE", str(tmp_path / "cache"))
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    local = {"base_model_name_or_path": str(tmp_path / "cache/models/smollm2-135m-instruct")}
    (final / "adapter_config.json").write_text(json.dumps(local))
    (final / "adapter_model.safetensors").write_bytes(b"w")
    up = hub.hub_adapter(final, tmp_path / "staging")
    sent = json.loads((up / "adapter_config.json").read_text())
    assert sent == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert (up / "adapter_model.safetensors").read_bytes() == b"w"
    assert json.loads((final / "adapter_config.json").read_text()) == local  # loads offline
    # a base of its own (a local model, or a hub id already): uploaded as it is
    for base in (str(tmp_path / "my_model"), "org/base"):
        (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        assert hub.hub_adapter(final, tmp_path / base.replace("/", "_")) == final


def test_an_api_call_leaves_offline_mode_as_it_found_it(no_network, monkeypatch):
    """A notebook: one call while the hub is unreachable does not keep the session offline
    for the calls after it; offline mode the user set stays."""
    import os

    from distalign import api

    before = datasets.config.HF_HUB_OFFLINE  # the test session's (HF_DATASETS_OFFLINE)
    with pytest.raises(Exception, match="cannot be reached"):
        api.evaluate_reward_model(model_name_or_path="someone/some-rm", dataset_name="gold")
    assert not constants.HF_HUB_OFFLINE
    assert datasets.config.HF_HUB_OFFLINE is before
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the user's own setting
    with pytest.raises(Exception, match="someone/some-rm"):
        api.evaluate_reward_model(model_name_or_path="someone/some-rm", dataset_name="gold")
    assert constants.HF_HUB_OFFLINE
