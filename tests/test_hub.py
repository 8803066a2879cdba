"""Without a network, hub ids fail at once with the reason, and cached ones still load."""

from __future__ import annotations

import socket
import time

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
