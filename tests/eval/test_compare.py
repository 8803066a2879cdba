"""The comparison end to end on tiny models; the bootstrap; escaping in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from distalign.cli import app
from distalign.eval.policy import (
    CompareConfig,
    bootstrap_interval,
    distinct_n,
    gold_win_probability,
    kl_to_sft,
    run_compare,
    win_rate,
)
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


def test_win_rate_averages_every_pair_of_a_prompt():
    a = np.array([[1.0, 3.0], [0.0, 0.0]])
    b = np.array([[2.0, 1.0], [0.0, 1.0]])
    # prompt 0: 1>2 no, 1>1 tie, 3>2, 3>1 -> (0 + .5 + 1 + 1) / 4; prompt 1: (.5 + 0 + .5 + 0) / 4
    np.testing.assert_allclose(win_rate(a, b), [0.625, 0.25])
    np.testing.assert_allclose(win_rate(np.array([1.0, 0.0]), np.array([0.0, 0.0])), [1.0, 0.5])
    np.testing.assert_allclose(win_rate(a, a), [0.5, 0.5])  # a policy against itself


def test_gold_win_probability_is_the_mean_over_all_pairs():
    from distalign.gold.judge import preference_probabilities

    rng = np.random.default_rng(0)
    k, n = 3, 4
    x, y = rng.random((n * k, 6)), rng.random((n * k, 6))
    brute = [
        np.mean(
            [
                preference_probabilities(x[i * k + j][None], y[i * k + m][None])[0][0]
                for j in range(k)
                for m in range(k)
            ]
        )
        for i in range(n)
    ]
    np.testing.assert_allclose(gold_win_probability(x, y, k), brute)
    np.testing.assert_allclose(gold_win_probability(x, x, k), 0.5)


def test_kl_groups_the_replies_of_each_prompt(tiny_model_dir):
    """k replies per prompt give the same per-reply KL as one reply per (repeated) prompt."""
    from types import SimpleNamespace

    from distalign.models.generate import Samples

    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    replies = [[20, 21], [22], [23, 24, 25], [26, 27], [28], [29, 30], [31], [32, 33]]

    def samples(prompt_ids, k):
        return Samples(prompt_ids, replies, [], [False] * 8, [""] * 8, k)

    pad = SimpleNamespace(pad_token_id=0)
    grouped = kl_to_sft(policy, sft, pad, samples(prompts, 2), 1.0)
    single = kl_to_sft(policy, sft, pad, samples([p for p in prompts for _ in (0, 1)], 1), 1.0)
    assert np.abs(grouped).min() > 0
    np.testing.assert_allclose(grouped, single, atol=1e-5)
    np.testing.assert_allclose(kl_to_sft(sft, sft, pad, samples(prompts, 2), 1.0), 0, atol=1e-6)


def test_compare_rejects_no_prompts():
    with pytest.raises(ValueError, match="count"):
        CompareConfig(count=0)


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


def test_compare_end_to_end_on_tiny_models(tiny_model_dir, tmp_path, monkeypatch):
    from tests.conftest import train_tiny_reward_models

    finals = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar", "ordinal"))

    def perturbed(scale: float, folder):  # an "aligned" policy: the tiny model, weights moved
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        model.save_pretrained(folder)
        for f in [*tiny_model_dir.glob("tokenizer*"), *tiny_model_dir.glob("chat_template*")]:
            (folder / f.name).write_bytes(f.read_bytes())

    perturbed(0.01, tmp_path / "policy")
    # an RL run: a checkpoint half-way, and the last one equal to the compared policy
    perturbed(0.005, tmp_path / "rl" / "checkpoints" / "step_00002")
    perturbed(0.01, tmp_path / "rl" / "checkpoints" / "step_00004")
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
        samples_per_prompt=2,
        bootstrap=200,
        sampling=SamplingConfig(max_new_tokens=6, temperature=1.0),
        output_dir=str(tmp_path / "cmp"),
    )
    import distalign.eval.policy as policy_module

    sampled = []
    real_sample_policy = policy_module.sample_policy

    def counting_sample_policy(name_or_dir, *args):
        sampled.append(Path(name_or_dir).name)
        return real_sample_policy(name_or_dir, *args)

    monkeypatch.setattr(policy_module, "sample_policy", counting_sample_policy)
    summary = run_compare(cfg)
    # SFT, the policy and the half-way checkpoint; the last checkpoint is the policy, reused
    assert sorted(sampled) == sorted([tiny_model_dir.name, "policy", "step_00002"])
    curve = summary["overoptimisation"]["rl"]  # step 0 is SFT, step 4 the compared policy
    assert [p["step"] for p in curve] == [0, 2, 4]
    assert curve[0]["gold_mean"] == pytest.approx(summary["policies"]["sft"]["gold_mean"])
    assert curve[2]["gold_mean"] == pytest.approx(summary["policies"]["perturbed"]["gold_mean"])
    assert curve[2]["kl"] == pytest.approx(summary["policies"]["perturbed"]["kl_to_sft"])
    assert {"kl", "gold_mean", "rm_scalar", "rm_ordinal"} <= curve[1].keys()
    assert curve[1]["kl"] != curve[2]["kl"]  # measured, not reused
    sft, pol = summary["policies"]["sft"], summary["policies"]["perturbed"]
    assert sft["gold_win_rate"] == pytest.approx(0.5)  # against itself
    assert sft["kl_to_sft"] == 0.0
    assert sft["rm_scalar_win_rate"] == pytest.approx(0.5)
    assert summary["replies_per_policy"] == 12
    lo, hi = pol["gold_win_rate_ci95"]
    assert lo <= pol["gold_win_rate"] <= hi
    assert {"gold_concise", "gold_thorough", "rm_scalar_mean", "rm_ordinal_win_rate"} <= pol.keys()
    assert summary["std_vs_disagreement_spearman"]["scalar"] is None
    assert -1 <= summary["std_vs_disagreement_spearman"]["ordinal"] <= 1
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["policies"]["perturbed"]["gold_win_rate"] == pol["gold_win_rate"]
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2
    # `distalign report` writes the same page again from the saved numbers alone
    (tmp_path / "cmp" / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    again = (tmp_path / "cmp" / "report.html").read_text()
    assert again.count("data:image/png;base64") == html.count("data:image/png;base64")
    assert f"{pol['gold_win_rate']:.3f}" in again
