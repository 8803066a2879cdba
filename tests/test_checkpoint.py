"""Checkpoints: atomic swap, RNG round trip, resume never silently starts over."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from distalign.checkpoint import resolve_resume, rng_state, set_rng_state


def test_rng_round_trip():
    state = json.loads(json.dumps(rng_state()))  # through JSON, as stored
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_resume(tmp_path / "last")
    old = tmp_path / "last.old"  # a crash between the two renames of a save
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    assert resolve_resume(tmp_path / "last") == old
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "trainer_state.json").write_text("{}")
    assert resolve_resume(tmp_path / "last") == tmp_path / "last"
