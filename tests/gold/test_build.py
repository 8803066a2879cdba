"""Benchmark construction end to end on a tiny model, and the shipped dataset's promises."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest

from distalign.config import ConfigError
from distalign.data import load_preferences
from distalign.data.load import bayes_ceiling
from distalign.gold.build import (
    GOLD_DIR,
    BenchConfig,
    bayes_accuracy,
    disagreement_share,
    load_prompts,
    run_bench_make,
)
from distalign.gold.judge import preference_probabilities
from distalign.models.generate import SamplingConfig


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_bayes_accuracy_and_disagreement_by_hand():
    assert bayes_accuracy(np.array([0.9, 0.2, 0.5])) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert disagreement_share([{"a": 0.7, "b": 0.6}, {"a": 0.7, "b": 0.4}]) == 0.5
    # a group at exactly ½ sides with neither, as disagreement.contested reads it
    assert disagreement_share([{"a": 0.5, "b": 0.7}]) == 0.0


def test_bayes_ceiling_of_the_loaded_rows(tmp_path):
    """The ceiling comes from the ``p_chosen`` column load_preferences keeps, over exactly the
    rows loaded (a limit or a selection changes it)."""
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": p} for p in (0.9, 0.2, 0.6)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_preferences(str(path))
    assert ds["p_chosen"] == pytest.approx([0.9, 0.2, 0.6])
    assert bayes_ceiling(ds) == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert bayes_ceiling(ds.select([0, 1])) == pytest.approx((0.9 + 0.8) / 2)
    assert bayes_ceiling(ds.select([2])) == pytest.approx(0.6)
    assert bayes_ceiling(load_preferences(str(path), limit=2)) == pytest.approx((0.9 + 0.8) / 2)
    assert bayes_ceiling(ds.select([])) is None  # no rows: no ceiling
    plain = tmp_path / "plain.jsonl"  # no judge probabilities: no ceiling
    plain.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert bayes_ceiling(load_preferences(str(plain))) is None
    mixed = tmp_path / "mixed.jsonl"  # only some rows know theirs: no ceiling either
    mixed.write_text(path.read_text() + plain.read_text())
    assert bayes_ceiling(load_preferences(str(mixed))) is None
    test = load_preferences("gold", "test")
    assert bayes_ceiling(test) == pytest.approx(
        json.loads((GOLD_DIR / "metadata.json").read_text())["splits"]["test"]["bayes_accuracy"]
    )


def test_prompt_split_is_stratified_and_seeded():
    rows = load_prompts(GOLD_DIR.parent / "prompts.jsonl", 0.25, seed=0)
    assert len(rows) >= 300
    kinds = {r["kind"] for r in rows}
    assert len(kinds) >= 6
    for kind in kinds:
        in_kind = [r for r in rows if r["kind"] == kind]
        assert sum(r["split"] == "test" for r in in_kind) == round(0.25 * len(in_kind))
    again = load_prompts(GOLD_DIR.parent / "prompts.jsonl", 0.25, seed=0)
    assert [r["split"] for r in rows] == [r["split"] for r in again]


def test_make_small_benchmark_and_resume(tiny_model_dir, tmp_path):
    settings = [
        SamplingConfig(temperature=1.0, max_completion_length=6),
        SamplingConfig(temperature=1.0, max_completion_length=10),
        SamplingConfig(temperature=0.7, top_p=0.9, max_completion_length=8),
    ]
    cfg = BenchConfig(
        model_name_or_path=str(tiny_model_dir),
        settings=settings,
        limit_prompts=3,
        sampling_batch_size=2,
        work_dir=str(tmp_path / "work"),
        output_dir=str(tmp_path / "out"),
    )
    meta = run_bench_make(cfg)
    out = tmp_path / "out"
    assert meta["prompts"] == {"train": 3, "test": 3}
    assert meta["replies"] == 18
    train = load_preferences(str(out), split="train")  # read as it is, no conversion
    test = load_preferences(str(out), split="test")
    assert len(train) == meta["splits"]["train"]["pairs"] > 0
    assert len(test) == meta["splits"]["test"]["pairs"] > 0
    rows = _read(out / "train.jsonl.gz")
    assert {r["prompt_id"] for r in rows}.isdisjoint(
        {r["prompt_id"] for r in _read(out / "test.jsonl.gz")}
    )
    for r in rows:
        assert set(r["chosen_gold"]) == {"concise", "thorough", "mean", "std"}
        assert 0 < r["p_chosen"] < 1

    # resume: drop the last chunk of the partial file; the rerun redraws exactly those replies
    partial = tmp_path / "work" / "replies.partial.jsonl"
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-1]) + "\n{broken")
    meta2 = run_bench_make(cfg)
    assert meta2["all"] == meta["all"]
    assert _read(out / "train.jsonl.gz") == rows
    # other sampling settings into the same work_dir: its replies are not taken as theirs
    longer = [SamplingConfig(temperature=1.0, max_completion_length=12), *settings[1:]]
    with pytest.raises(ConfigError, match=r"holds replies sampled with other settings"):
        run_bench_make(dataclasses.replace(cfg, settings=longer, output_dir=str(tmp_path / "o2")))
    with pytest.raises(ConfigError, match=r"other model_name_or_path, seed"):
        run_bench_make(dataclasses.replace(cfg, seed=1, model_name_or_path="x"))


# --- the shipped dataset -------------------------------------------------------------------


def test_shipped_ceiling_and_disagreement_in_range():
    meta = json.loads((GOLD_DIR / "metadata.json").read_text())
    for split in ("train", "test", "all"):
        m = meta["splits"].get(split, meta["all"])
        assert 0.70 <= m["bayes_accuracy"] <= 0.90, split
        assert m["disagreement_share"] >= 0.25, split
    assert meta["prompts"]["train"] + meta["prompts"]["test"] >= 300


def test_shipped_ceiling_recomputes_from_pair_probabilities():
    meta = json.loads((GOLD_DIR / "metadata.json").read_text())
    for split in ("train", "test"):
        rows = _read(GOLD_DIR / f"{split}.jsonl.gz")
        assert len(rows) == meta["splits"][split]["pairs"]
        p = np.array([r["p_chosen"] for r in rows])
        assert bayes_accuracy(p) == pytest.approx(
            meta["splits"][split]["bayes_accuracy"], abs=1e-12
        )
        share = disagreement_share([r["p_chosen_by_group"] for r in rows])
        assert share == pytest.approx(meta["splits"][split]["disagreement_share"], abs=1e-12)


def test_picking_the_gold_better_reply_wins_under_the_judge():
    """A 'policy' that returns the better gold-scored of two replies beats the other one."""
    replies = {r["reply_id"]: r for r in _read(GOLD_DIR / "replies.jsonl.gz")}
    rows = _read(GOLD_DIR / "test.jsonl.gz")
    attrs = lambda rid: [replies[rid]["attributes"][a] for a in replies[rid]["attributes"]]  # noqa: E731
    best, other = [], []
    for r in rows:
        c, j = r["chosen_reply_id"], r["rejected_reply_id"]
        hi, lo = (c, j) if replies[c]["gold"]["mean"] >= replies[j]["gold"]["mean"] else (j, c)
        best.append(attrs(hi))
        other.append(attrs(lo))
    p_win, _ = preference_probabilities(np.array(best), np.array(other))
    assert p_win.mean() > 0.5
    assert (p_win > 0.5).mean() > 0.9


def test_shipped_data_loads_by_alias():
    ds = load_preferences("gold", split="test")
    assert len(ds) > 100 and ds[0]["prompt"][0]["role"] == "user"
