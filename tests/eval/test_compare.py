"""The comparison end to end on tiny models; the bootstrap; escaping in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from distalign.eval.policy import CompareConfig, bootstrap_interval, distinct_n, run_compare
from distalign.models.generate import SamplingConfig
from distalign.report.html import write_report


def test_bootstrap_interval_covers_a_known_win_rate():
    """Synthetic scores with a true win rate of 0.6: the 95% interval covers it ~95% of the time."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        wins = (rng.random(150) < 0.6).astype(float)
        lo, hi = bootstrap_interval(wins, n=500, seed=trial)
        covered += lo <= 0.6 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_distinct_n():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 1) == 0.0


def test_report_escapes_model_text(tmp_path):
    evil = "<script>alert('x')</script>"
    summary = {
        "prompts": 1,
        "config": {"sampling": {"temperature": 1.0}},
        "policies": {
            "sft": {
                "gold_win_rate": 0.5,
                "gold_win_rate_ci95": (0.4, 0.6),
                "gold_mean": 1.0,
                "kl_to_sft": 0.0,
                "length_tokens": 5.0,
                "eos_rate": 1.0,
                "distinct_2": 1.0,
            },
        },
        "samples": [{"prompt": evil, "sft": {"reply": evil, "gold": 1.0}}],
    }
    cfg = CompareConfig(output_dir=str(tmp_path))
    path = write_report(summary, cfg, {"sft": {"gold_mean": np.array([1.0])}}, tmp_path)
    html = path.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_compare_end_to_end_on_tiny_models(tiny_model_dir, tmp_path):
    from tests.conftest import train_tiny_reward_models

    finals = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar", "ordinal"))
    torch.manual_seed(1)  # an "aligned" policy: the tiny model with perturbed weights
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    policy.save_pretrained(tmp_path / "policy")
    (tmp_path / "policy" / "tokenizer.json").write_bytes(
        (tiny_model_dir / "tokenizer.json").read_bytes()
    )
    for f in tiny_model_dir.glob("tokenizer*"):
        (tmp_path / "policy" / f.name).write_bytes(f.read_bytes())
    for f in tiny_model_dir.glob("chat_template*"):
        (tmp_path / "policy" / f.name).write_bytes(f.read_bytes())
    cfg = CompareConfig(
        sft=str(tiny_model_dir),
        policies=[f"perturbed={tmp_path / 'policy'}"],
        rewards=[
            f"scalar={finals['scalar']}",
            f"ordinal={finals['ordinal']}",
        ],
        rm_runs=[str(tmp_path / "rm_scalar")],
        runs=[str(tmp_path / "rl")],
        count=6,
        bootstrap=200,
        sampling=SamplingConfig(max_new_tokens=6, temperature=1.0),
        output_dir=str(tmp_path / "cmp"),
    )
    import shutil

    shutil.copytree(tmp_path / "policy", tmp_path / "rl" / "checkpoints" / "step_00003")
    summary = run_compare(cfg)
    curve = summary["overoptimisation"]["rl"]  # step 0 is SFT, step 3 the perturbed policy
    assert [p["step"] for p in curve] == [0, 3]
    assert curve[0]["gold_mean"] == pytest.approx(summary["policies"]["sft"]["gold_mean"])
    assert curve[1]["gold_mean"] == pytest.approx(summary["policies"]["perturbed"]["gold_mean"])
    sft, pol = summary["policies"]["sft"], summary["policies"]["perturbed"]
    assert sft["gold_win_rate"] == pytest.approx(0.5)  # against itself
    assert sft["kl_to_sft"] == 0.0
    lo, hi = pol["gold_win_rate_ci95"]
    assert lo <= pol["gold_win_rate"] <= hi
    assert {"gold_concise", "gold_thorough", "rm_scalar_mean", "rm_ordinal_win_rate"} <= pol.keys()
    assert summary["std_vs_disagreement_spearman"]["scalar"] is None
    assert -1 <= summary["std_vs_disagreement_spearman"]["ordinal"] <= 1
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["policies"]["perturbed"]["gold_win_rate"] == pol["gold_win_rate"]
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2
