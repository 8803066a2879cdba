"""The comparison end to end on tiny models, under the gold judge and under a named judge on a
prompt-only file; the report it writes: verdict, figures, escaping, the judge it names, and a
rebuild from saved numbers (old config keys included)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from distalign.cli import app
from distalign.config import ConfigError
from distalign.eval.config import CompareConfig
from distalign.eval.policy import (
    check_judge_held_out,
    gold_win_probability,
    kl_to_sft,
    run_compare,
    sampling_of,
)
from distalign.metrics import bootstrap_interval, bootstrap_p_value, win_rate
from distalign.models.generate import SamplingConfig
from distalign.report import html, plots
from distalign.report.html import rebuild_report, write_report
from distalign.report.runs import rl_panels, rl_run_names
from distalign.report.tables import (
    _gold_groups,
    compare_config,
    headline_columns,
    headline_rows,
    rm_eval_table,
    verdicts,
)


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


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])  # greedy (0) has none
def test_kl_to_sft_is_the_sampled_minus_the_sft_logprobs(tiny_model_dir, temperature):
    """KL per reply = Σ_t (the sampler's log π − a teacher-forced log π_SFT), brute-forced
    reply by reply with both models teacher-forced; k replies per prompt read like one reply
    per repeated prompt; a policy against itself reads 0."""
    from types import SimpleNamespace

    from distalign.models.generate import Samples, sample_token_ids
    from distalign.rl.logprobs import reply_logprobs

    sft = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts, k = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], 2
    pad = SimpleNamespace(pad_token_id=0)
    config = SamplingConfig(max_completion_length=5, temperature=temperature, seed=1)
    replies, logps, done = sample_token_ids(policy, prompts, k, config, [0], 0)
    grouped = Samples(prompts, replies, logps, done, [""] * 8, k)
    grouped = kl_to_sft(policy, sft, pad, grouped, temperature)
    single_prompts = [p for p in prompts for _ in range(k)]
    single = Samples(single_prompts, replies, logps, done, [""] * 8, 1)
    t = temperature or 1.0  # greedy replies: KL of the untempered policies
    brute = []
    with torch.no_grad():
        for p, r in zip(single_prompts, replies, strict=True):
            lp = reply_logprobs(policy, [p], [[r]], 0, t, prefix_sharing=False)[0][0]
            ref = reply_logprobs(sft, [p], [[r]], 0, t, prefix_sharing=False)[0][0]
            brute.append((lp - ref).sum().item())
    assert np.abs(brute).min() > 1e-3
    np.testing.assert_allclose(grouped, brute, atol=1e-4)
    np.testing.assert_allclose(kl_to_sft(policy, sft, pad, single, temperature), brute, atol=1e-4)
    replies, logps, done = sample_token_ids(sft, prompts, k, config, [0], 0)
    itself = Samples(prompts, replies, logps, done, [""] * 8, k)
    np.testing.assert_allclose(kl_to_sft(sft, sft, pad, itself, temperature), 0, atol=1e-4)
    # in bfloat16 both run the teacher-forced pass: SFT against itself reads exactly 0
    half = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    assert (kl_to_sft(half, half, pad, itself, temperature) == 0).all()
    bad = Samples(prompts, replies, [lp[:-1] for lp in logps], done, [""] * 8, k)
    with pytest.raises(ValueError, match="do not match"):
        kl_to_sft(sft, sft, pad, bad, temperature)


def test_sampled_logprobs_are_read_only_in_full_float32(tiny_model_dir):
    from distalign.eval.policy import reads_sampled_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert reads_sampled_logprobs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not reads_sampled_logprobs(model)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32-class matmuls where the device has them
    try:
        assert not reads_sampled_logprobs(model)
    finally:
        torch.set_float32_matmul_precision(before)
    model.lm_head.to(torch.bfloat16)  # one weight in lower precision
    assert not reads_sampled_logprobs(model)


def test_compare_rejects_no_prompts():
    with pytest.raises(ValueError, match="max_eval_samples"):
        CompareConfig(max_eval_samples=0)
    with pytest.raises(ValueError, match="sampling_batch_size"):  # SamplingConfig's own checks
        CompareConfig(sampling_batch_size=0)


def test_greedy_decoding_of_several_replies_a_prompt_is_said(caplog):
    with caplog.at_level(logging.WARNING):
        CompareConfig(temperature=0, num_generations=3)
    assert "the 3 replies to a prompt come out alike" in caplog.text


def test_compare_config_has_flat_sampling_keys_with_its_own_defaults():
    cfg = CompareConfig(temperature=0.7, seed=3)
    sampling = sampling_of(cfg)
    assert type(sampling) is SamplingConfig
    assert (sampling.max_completion_length, sampling.sampling_batch_size) == (64, 16)
    assert (sampling.temperature, sampling.seed, sampling.top_p, sampling.top_k) == (0.7, 3, 1, 0)


def _row(win: float, lo: float, hi: float, gold: float, kl: float = 1.0) -> dict:
    return {
        "gold_mean": gold,
        "gold_concise": gold - 0.1,
        "gold_win_rate": win,
        "gold_win_rate_ci95": [lo, hi],
        "kl_to_sft": kl,
        "length_tokens": 12.0,
        "eos_rate": 0.5,
        "distinct_1": 0.5,
        "distinct_2": 0.9,
        "rm_scalar_mean": gold / 10,
        "rm_scalar_win_rate": win,
        "rm_scalar_win_rate_ci95": [lo, hi],
    }


def _summary(samples=(), config=None) -> dict:
    return {
        "config": config or {"num_generations": 1, "temperature": 1.0, "seed": 0},
        "prompts": 40,
        "policies": {
            "sft": _row(0.5, 0.5, 0.5, 2.0, 0.0),
            "good": _row(0.7, 0.6, 0.8, 2.5),
            "tied": _row(0.52, 0.4, 0.64, 2.1),
            "bad": _row(0.3, 0.2, 0.45, 1.5),
        },
        "std_vs_disagreement_spearman": {"scalar": None},
        "overoptimisation": {},
        "samples": list(samples),
    }


def test_verdict_says_whether_the_gold_interval_is_above_contains_or_below_half():
    by_name = {v["name"]: v for v in verdicts(_summary())}
    assert "sft" not in by_name  # SFT is the reference, not a contender
    assert [by_name[n]["outcome"] for n in ("good", "tied", "bad")] == [
        "better",
        "unclear",
        "worse",
    ]
    uncorrected = " (uncorrected for several policies: saved before p-values were)"
    assert by_name["good"]["where"] == "above 0.5" + uncorrected
    assert by_name["tied"]["where"] == "contains 0.5"
    assert by_name["good"]["gain"] == "+0.500" and by_name["bad"]["gain"] == "-0.500"


def test_report_opens_with_the_verdict_and_names_its_columns(tmp_path):
    gold = {n: np.linspace(0, 1, 6) for n in ("sft", "good", "tied", "bad")}
    html = write_report(_summary(), gold, tmp_path).read_text()
    verdict = html.index("did each policy beat SFT")
    assert verdict < html.index("<table") and verdict < html.index("data:image/png")
    assert "beats SFT" in html and "worse than SFT" in html and "no clear difference" in html
    for label in ("gold win rate vs SFT", "KL to SFT (nats)", "reply length (tokens)"):
        assert label in html
    assert "kl_to_sft</th>" not in html and "length_tokens</th>" not in html  # no raw keys
    assert html.count("data:image/png;base64") == 2  # win rates; gold reward of every reply


@pytest.mark.parametrize(
    ("decoding", "said"),
    [
        ({"temperature": 1.0}, "averaged over the policy's own replies."),
        ({"temperature": 0.7}, "of both models at temperature 0.7"),
        ({"temperature": 1.0, "top_p": 0.9}, "reads the KL only approximately"),
        ({"temperature": 0.0}, "No KL to SFT: greedy replies"),
    ],
)
def test_the_kl_note_says_what_the_decoding_makes_of_it(tmp_path, decoding, said):
    summary = _summary(config={"num_generations": 1, "seed": 0, **decoding})
    if decoding["temperature"] == 0:  # as measure_policy leaves it for greedy replies
        for row in summary["policies"].values():
            row["kl_to_sft"] = None
    html = write_report(summary, None, tmp_path).read_text()
    assert said in html
    assert ("nats from SFT" in html) == (decoding["temperature"] != 0)  # the verdicts' KL


def test_report_escapes_model_text(tmp_path):
    evil = "<script>alert(1)</script> </table> {{ x }}"
    sample = {"prompt": evil, **{n: {"reply": evil, "gold": 1.0} for n in ("sft", "good")}}
    html = write_report(_summary([sample]), None, tmp_path).read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/table&gt;" in html
    assert html.count("</table>") == html.count("<table")  # the reply closed no table
    assert html.count("{{ x }}") == 3  # literal, not rendered: the prompt and two replies


def test_rebuild_reads_an_old_comparison_and_maps_old_config_keys(tmp_path):
    old = {
        "prompts": "gold",
        "split": "test",
        "count": 2,
        "samples_per_prompt": 2,
        "sampling": {"max_new_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                     "batch_size": 16, "seed": 0},
    }  # fmt: skip
    config = compare_config(old)
    assert (config["num_generations"], config["max_eval_samples"]) == (2, 2)
    assert (config["max_completion_length"], config["sampling_batch_size"]) == (16, 16)
    assert config["dataset_name"] == "gold" and "sampling" not in config
    summary = _summary(config=old)
    summary["overoptimisation"] = {"rl": [{"step": 0, "kl": 0.0, "gold_mean": 2.0}]}
    (tmp_path / "compare.json").write_text(json.dumps(summary))
    with open(tmp_path / "replies.jsonl", "w") as f:
        for name in summary["policies"]:
            for g in (1.0, 2.0, 3.0, 4.0):
                f.write(json.dumps({"policy": name, "gold_mean": g}) + "\n")
    html = rebuild_report(tmp_path).read_text()
    assert "2 replies to each" in html and "at most 16 tokens" in html
    assert html.count("data:image/png;base64") == 2
    assert "step 0 only" in html  # a one-point curve is a number, not a plot
    assert headline_rows(summary)[1][:2] == ["good", "0.700 [0.600, 0.800]"]


def test_rebuild_names_a_broken_or_short_replies_file(tmp_path, caplog):
    from distalign.data.files import DataSourceError

    summary = _summary()
    (tmp_path / "compare.json").write_text(json.dumps(summary))
    replies = tmp_path / "replies.jsonl"
    replies.write_text('{"policy": "sft", "gold_mean": 1.0}\n{"policy": "sft", "gold_m')
    with pytest.raises(DataSourceError, match=r"replies\.jsonl:2: broken JSON"):
        rebuild_report(tmp_path)
    replies.write_text('{"policy": "sft", "gold_mean": 1.0}\n{"policy": "sft"}\n')
    with pytest.raises(DataSourceError, match=r"replies\.jsonl:2: a reply row without 'gold_mean'"):
        rebuild_report(tmp_path)
    replies.write_text('{"policy": "sft", "gold_mean": 1.0}\n')
    with caplog.at_level("WARNING"):
        rebuild_report(tmp_path)
    assert "holds 1 of sft, 0 of good" in caplog.text  # a policy with no rows is said too
    assert "replies where the comparison made" in caplog.text
    for broken, said in (('{"policies": {', "not JSON"), ("[]", "no 'policies' object"),
                         ('{"config": {}}', "no 'policies' object")):  # fmt: skip
        (tmp_path / "compare.json").write_text(broken)
        with pytest.raises(ConfigError, match=f"compare.json: {said}"):
            rebuild_report(tmp_path)


def test_runs_trained_on_different_rewards_get_their_own_reward_panel(tmp_path):
    scalar = str(tmp_path / "rm_scalar/final")
    trained_on = {"a": scalar, "b": str(tmp_path / "rm_ordinal/final"), "c": "x:fn",
                  "d": [scalar, "rewards.mine.brevity"], "e": "rewards.mine.brevity"}  # fmt: skip
    for name, reward in trained_on.items():
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"reward": reward}))
        rows = [{"step": s, "train/reward": float(s), "train/kl": 0.1 * s} for s in (1, 2)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = {str(tmp_path / n): n for n in trained_on}
    panels = rl_panels(names, {"scalar": scalar})
    rewards = {p.title: list(p.series) for p in panels if p.title.startswith("training reward")}
    assert rewards == {
        "training reward: RM scalar": ["a"],
        "training reward: RM rm_ordinal": ["b"],
        "training reward: fn": ["c"],
        "training reward: RM scalar + brevity": ["d"],  # a sum of sources, TRL's module.function
        "training reward: brevity": ["e"],
    }
    # a policy given as its folder alone is named by its run, as eval compare names it
    config = {"policies": [str(tmp_path / "a" / "final"), f"mine={tmp_path / 'b' / 'final'}",
                           str(tmp_path / "c"),
                           f"early={tmp_path / 'd' / 'checkpoints' / 'step_1'}"]}  # fmt: skip
    assert rl_run_names(config) == {
        str(tmp_path / "a"): "a",
        str(tmp_path / "b"): "mine",
        str(tmp_path / "c"): "c",
        str(tmp_path / "d"): "early",  # a step checkpoint's curves are its run's
    }
    drawn, single = plots.single_point_panels(panels)
    assert "gold reward on held-out prompts" not in [p.title for p in drawn + single]  # no data


def test_a_reward_models_loss_panel_shows_its_held_out_loss_beside_the_training_loss(tmp_path):
    from distalign.report.runs import rm_panels

    run = tmp_path / "rm_scalar"
    run.mkdir()
    rows = [{"step": 1, "train/loss": 0.7, "train/accuracy": 0.5},
            {"step": 2, "train/loss": 0.6, "eval/loss": 0.65, "eval/accuracy": 0.6}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loss = next(p for p in rm_panels([str(run)]) if p.title == "loss: rm_scalar")
    assert loss.series == {"training": [(1, 0.7), (2, 0.6)], "held-out": [(2, 0.65)]}


def test_single_point_panels_are_not_drawn():
    one = plots.Panel("held-out accuracy", "accuracy", {"a": [(3, 0.6)], "b": [(3, 0.7)]})
    two = plots.Panel("loss", "nats", {"a": [(1, 0.9), (2, 0.8)]})
    assert plots.single_point_panels([one, two]) == ([two], [one])
    assert plots.training_curves([one]) is None
    assert plots.overoptimisation({"rl": [{"step": 0, "kl": 0.0, "gold_mean": 1.0}]}, []) is None
    np.testing.assert_allclose(plots.moving_average(np.array([0, 3, 0, 3.0]), 3), [1.5, 1, 2, 1.5])


def test_report_imports_nothing_from_eval():
    import subprocess
    import sys

    code = (
        "import sys, distalign.report.html; "
        "sys.exit(any(m.startswith('distalign.eval') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _perturbed(tiny_model_dir: Path, scale: float, folder: Path) -> Path:
    """An "aligned" policy: the tiny model with its weights moved, saved with its tokenizer."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    model.save_pretrained(folder)
    for f in [*tiny_model_dir.glob("tokenizer*"), *tiny_model_dir.glob("chat_template*")]:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_compare_end_to_end_on_tiny_models(tiny_model_dir, tmp_path, monkeypatch):
    from tests.conftest import train_tiny_reward_models

    finals = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar", "ordinal"))

    def perturbed(scale: float, folder):
        _perturbed(tiny_model_dir, scale, folder)

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
        max_eval_samples=6,
        num_generations=2,
        bootstrap=200,
        max_completion_length=6,
        temperature=1.0,
        output_dir=str(tmp_path / "cmp"),
    )
    import distalign.eval.policy as policy_module

    sampled = []
    real_sample_policy = policy_module.sample_policy

    def counting_sample_policy(name_or_dir, *args, **kwargs):
        sampled.append(Path(name_or_dir).name)
        return real_sample_policy(name_or_dir, *args, **kwargs)

    monkeypatch.setattr(policy_module, "sample_policy", counting_sample_policy)
    summary = run_compare(cfg)
    # SFT, the policy and the half-way checkpoint; the last checkpoint is the policy, reused
    assert sorted(sampled) == sorted([tiny_model_dir.name, "policy", "step_00002"])
    # by the run as given; step 0 is SFT, step 4 the compared policy
    curve = summary["overoptimisation"][str(tmp_path / "rl")]
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
    assert (pol["gold_win_rate_p"] < 0.05) == (lo > 0.5 or hi < 0.5)
    assert {"gold_concise", "gold_thorough", "rm_scalar_mean", "rm_ordinal_win_rate"} <= pol.keys()
    assert summary["std_vs_disagreement_spearman"]["scalar"] is None
    assert -1 <= summary["std_vs_disagreement_spearman"]["ordinal"] <= 1
    measures = summary["std_vs_disagreement"]
    assert measures["scalar"] is None
    # the raw measure is the old one; the centred one and the partials sit beside it
    assert measures["ordinal"]["spearman_raw"] == pytest.approx(
        summary["std_vs_disagreement_spearman"]["ordinal"]
    )
    assert {"spearman_centred", "partial_centred_given_length"} <= measures["ordinal"].keys()
    # the points behind the measure, for the scatter: every compared reply once
    from distalign.disagreement import spearman

    points = summary["std_vs_disagreement_points"]
    assert list(points) == ["ordinal"]  # no spread, no points, for the scalar RM
    assert len(points["ordinal"]["predicted"]) == 2 * summary["replies_per_policy"]  # SFT + one
    assert points["ordinal"]["policy"].count("sft") == summary["replies_per_policy"]
    assert spearman(points["ordinal"]["predicted"], points["ordinal"]["centred"]) == pytest.approx(
        measures["ordinal"]["spearman_centred"]
    )
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["policies"]["perturbed"]["gold_win_rate"] == pol["gold_win_rate"]
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 4  # win rates, gold reward, spread, curves
    assert "centred spread" in html and "Predicted spread against the annotators" in html
    assert '"std_vs_disagreement_points"' not in html  # drawn, not dumped into the numbers
    # `distalign report` writes the same page again from the saved numbers alone
    (tmp_path / "cmp" / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    again = (tmp_path / "cmp" / "report.html").read_text()
    assert again.count("data:image/png;base64") == html.count("data:image/png;base64")
    assert f"{pol['gold_win_rate']:.3f}" in again


# --- a named judge on prompts that are not the benchmark's ----------------------------------


def reply_chars(completions, bonus, completion_ids, **kwargs):
    """A judge for the tests (``tests.eval.test_compare:reply_chars``), a TRL reward function:
    a reply's length in characters plus its prompt's ``bonus`` column, so the data set's
    columns must reach it; it gets the replies' token ids, as in TRL."""
    assert len(completion_ids) == len(completions) and all(map(len, completion_ids))
    assert all(isinstance(i, int) for ids in completion_ids for i in ids)
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [len(r) + b for r, b in zip(texts, bonus, strict=True)]


JUDGE = "tests.eval.test_compare:reply_chars"


def test_the_gold_judge_is_refused_on_other_prompts():
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"judge: .*not 'prompts.jsonl'.*not used in training"):
        CompareConfig(dataset_name="prompts.jsonl")
    with pytest.raises(ValueError, match=r"judge: .*not a Dataset"):
        CompareConfig(dataset_name=Dataset.from_list([{"prompt": "hi"}]))
    CompareConfig(dataset_name="gold")  # the benchmark's prompts: the gold judge by default
    assert CompareConfig(dataset_name="prompts.jsonl", judge=reply_chars).judge is reply_chars
    assert CompareConfig(judge="[a:f, b:g]").judge_specs() == ["a:f", "b:g"]
    with pytest.raises(ValueError, match="judge: an empty source"):
        CompareConfig(judge="")


def test_a_judge_the_hub_cannot_give_is_named_as_the_judge_without_a_network(monkeypatch):
    import distalign.hub as hub
    from distalign.config import ConfigError
    from distalign.eval.policy import load_judge

    monkeypatch.setattr(hub, "offline_if_unreachable", lambda: "huggingface.co does not resolve")
    cfg = CompareConfig(dataset_name="prompts.jsonl", judge="org/no-such-judge")
    with pytest.raises(ConfigError) as e:
        load_judge(cfg)
    said = str(e.value)
    assert said.startswith("judge: reward 'org/no-such-judge' is not a folder")
    assert "cannot be reached to download it (huggingface.co does not resolve)" in said
    assert "HF_HUB_OFFLINE" not in said


def test_the_command_line_takes_a_judge_and_prompt_source():
    from distalign.cli import parse_command
    from distalign.config import ConfigError

    args = ["dataset_name=prompts.jsonl", f"judge={JUDGE}", "dataset_config=main"]
    cfg = parse_command("eval compare", [*args, "dataset_revision=v1"])
    assert (cfg.judge, cfg.dataset_config, cfg.dataset_revision) == (JUDGE, "main", "v1")
    with pytest.raises(ConfigError, match="judge"):
        parse_command("eval compare", ["dataset_name=prompts.jsonl"])


def test_a_judge_the_policies_were_trained_on_is_refused(tmp_path):
    run = tmp_path / "rl"
    run.mkdir()
    (run / "config.yaml").write_text(f"reward: [{JUDGE}]\n")
    cfg = CompareConfig(
        dataset_name="prompts.jsonl", judge=JUDGE, runs=[str(run)], output_dir=str(tmp_path / "c")
    )
    with pytest.raises(ValueError, match=r"is the reward .*rl was trained on"):
        run_compare(cfg)  # before any model is loaded


def test_a_judge_is_its_reward_runs_folder_final_or_checkpoint(tmp_path):
    # trained with reward=<run>; judged by <run>/final, a checkpoint, or another spelling
    rm = tmp_path / "rm1"
    for sub in ("final", "checkpoint-10"):
        (rm / sub).mkdir(parents=True)
        (rm / sub / "config.json").write_text("{}")
    (rm / "metrics.jsonl").write_text("")  # a run's folder
    run = tmp_path / "rl"
    run.mkdir()
    (run / "config.yaml").write_text(f"reward: {rm}\n")
    (rm / "checkpoints" / "best").mkdir(parents=True)  # rm train's best evaluation
    for judge in (rm / "final", rm / "checkpoint-10", rm / "checkpoints" / "best",
                  f"{tmp_path}/./rm1/"):  # fmt: skip
        cfg = CompareConfig(dataset_name="prompts.jsonl", judge=str(judge), runs=[str(run)])
        with pytest.raises(ValueError, match=r"is the reward .*rl was trained on"):
            check_judge_held_out(cfg)
    (tmp_path / "rm2" / "final").mkdir(parents=True)  # another reward model is held out
    other = str(tmp_path / "rm2" / "final")
    check_judge_held_out(CompareConfig(dataset_name="prompts.jsonl", judge=other, runs=[str(run)]))
    # folders merely named model/ and final/ side by side, not a run: two reward models
    for sub in ("model", "final"):
        (tmp_path / "zoo" / sub).mkdir(parents=True)
    (run / "config.yaml").write_text(f"reward: {tmp_path / 'zoo' / 'final'}\n")
    judge = str(tmp_path / "zoo" / "model")
    check_judge_held_out(CompareConfig(dataset_name="prompts.jsonl", judge=judge, runs=[str(run)]))


def test_a_judge_function_is_its_training_reward_however_spelled(tmp_path):
    """``module:function`` and TRL's ``module.function`` name one function."""
    run = tmp_path / "rl"
    run.mkdir()
    for trained, judge in (("judges:length", "judges.length"), ("a.b.length", "a.b:length")):
        (run / "config.yaml").write_text(f"reward: {trained}\n")
        cfg = CompareConfig(dataset_name="prompts.jsonl", judge=judge, runs=[str(run)])
        with pytest.raises(ValueError, match=r"is the reward .*rl was trained on"):
            check_judge_held_out(cfg)
    check_judge_held_out(CompareConfig(dataset_name="prompts.jsonl", judge="judges.width",
                                       runs=[str(run)]))  # fmt: skip


def test_compare_warns_when_its_prompts_are_a_runs_training_prompts(tmp_path, caplog):
    from distalign.eval.policy import trained_on_these_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    run = tmp_path / "rl"
    run.mkdir()
    (run / "config.yaml").write_text(f"dataset_name: {prompts}\nreward: judges:length\n")
    cfg = CompareConfig(dataset_name=str(prompts), judge="other:fn", runs=[str(run)])
    with caplog.at_level("WARNING"):
        assert trained_on_these_prompts(cfg) == [str(run)]  # compare.json keeps them
    assert "are those" in caplog.text and "not held out" in caplog.text
    caplog.clear()
    (run / "config.yaml").write_text("dataset_name: gold\nreward: judges:length\n")
    with caplog.at_level("WARNING"):
        assert trained_on_these_prompts(CompareConfig(dataset_name="gold", runs=[str(run)])) == []
    assert caplog.text == ""  # gold: trained on train, compared on test
    # a run trained on a mixture (TRL's datasets) took rows of each of its sources
    for entry in (f"path: {prompts}", f"path: json\n    data_files: {prompts}"):
        (run / "config.yaml").write_text(f"dataset_name: 'datasets: x'\ndatasets:\n  - path: "
                                         f"gold\n  - {entry}\nreward: judges:length\n")  # fmt: skip
        assert trained_on_these_prompts(cfg) == [str(run)]


def _judge_summary() -> dict:
    summary = _summary()
    for row in summary["policies"].values():
        for key in [k for k in row if k.startswith("gold_")]:
            value = row.pop(key)
            if key in ("gold_mean", "gold_win_rate", "gold_win_rate_ci95"):
                row["judge" + key[4:]] = value
        row["judge_name"] = "helpful_rm"
    summary.pop("std_vs_disagreement_spearman")
    return summary


def _without_images(html: str) -> str:
    import re

    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


def test_report_under_a_named_judge_names_it_and_never_claims_gold(tmp_path):
    summary = _judge_summary()
    sample = {"prompt": "p", **{n: {"reply": "r", "judge": 3.0} for n in summary["policies"]}}
    summary["samples"] = [sample]
    rewards = {n: np.linspace(0, 1, 6) for n in summary["policies"]}
    html = _without_images(write_report(summary, rewards, tmp_path).read_text())
    assert "did each policy beat SFT under the judge helpful_rm?" in html
    assert "judge win rate <b>0.700</b>" in html and "judge reward <b>+0.500</b>" in html
    assert "judge helpful_rm (held out)" in html and "judge reward 3.000" in html
    # the one mention of gold says there is none
    assert html.lower().count("gold") == 1 and "there is no gold judge on these prompts" in html
    by_name = {v["name"]: v for v in verdicts(summary)}
    assert [by_name[n]["outcome"] for n in ("good", "tied", "bad")] == [
        "better",
        "unclear",
        "worse",
    ]
    assert headline_rows(summary)[1] == ["good", "0.700 [0.600, 0.800]", "2.500", "1.00", "12"]
    assert headline_rows(summary)[0][:2] == ["sft", "reference"]  # no interval of its own
    assert headline_columns(summary)[1:3] == [
        "win rate under judge helpful_rm [95% CI]",
        "judge helpful_rm reward",
    ]
    assert headline_columns(_summary())[1] == "gold win rate [95% CI]"


def test_compare_on_a_prompt_only_file_under_a_named_judge(tiny_model_dir, tmp_path):
    """eval compare on prompts that are not the benchmark's: the judge's mean, win rate and
    interval are those worked out from the saved replies; no gold field anywhere; the curve
    and the report use the judge; `distalign report` rebuilds the page."""
    from tests.conftest import train_tiny_reward_models, write_jsonl

    rm = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar",))["scalar"]
    rows = [{"prompt": f"Name {i} colours.", "bonus": 10 * i} for i in range(5)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [*rows, {"prompt": 3}])  # one broken
    policy = _perturbed(tiny_model_dir, 0.02, tmp_path / "rl" / "final")
    _perturbed(tiny_model_dir, 0.01, tmp_path / "rl" / "checkpoints" / "step_00001")
    (tmp_path / "rl" / "config.yaml").write_text(f"reward: {rm}\n")  # trained on the RM
    k, n_boot = 2, 300
    cfg = CompareConfig(
        sft=str(tiny_model_dir),
        policies=[f"rl={policy}"],
        rewards=[f"scalar={rm}"],
        runs=[str(tmp_path / "rl")],
        dataset_name=str(prompts),
        judge=JUDGE,
        num_generations=k,
        bootstrap=n_boot,
        max_completion_length=6,
        output_dir=str(tmp_path / "cmp"),
        skip_bad_rows=True,
    )
    summary = run_compare(cfg)
    assert summary["prompts"] == 5  # the broken row skipped, as the other commands skip
    replies = [json.loads(line) for line in (tmp_path / "cmp" / "replies.jsonl").open()]
    assert not any(k.startswith("gold") for r in replies for k in r)
    chars = {}  # policy -> (prompts, k) the judge's reward worked out again
    for name in ("sft", "rl"):
        mine = [r for r in replies if r["policy"] == name]
        assert [r["judge_reward"] for r in mine] == [
            len(r["reply"]) + 10 * (i // k) for i, r in enumerate(mine)
        ]
        chars[name] = np.array([r["judge_reward"] for r in mine]).reshape(-1, k)
    wins = win_rate(chars["rl"], chars["sft"])
    assert not np.allclose(wins, 0.5)  # the policy's replies differ from SFT's: not all ties
    row, sft = summary["policies"]["rl"], summary["policies"]["sft"]
    assert row["judge_name"] == "reply_chars"
    assert row["judge_mean"] == pytest.approx(chars["rl"].mean())
    assert row["judge_win_rate"] == pytest.approx(wins.mean())
    assert row["judge_win_rate_ci95"] == pytest.approx(bootstrap_interval(wins, n_boot))
    assert row["judge_win_rate_p"] == bootstrap_p_value(wins, 0.5, n_boot)
    assert (sft["judge_win_rate"], sft["judge_win_rate_ci95"]) == (0.5, (0.5, 0.5))
    assert sft["judge_win_rate_p"] == 1.0  # SFT against itself
    assert "rm_scalar_win_rate" in row and "kl_to_sft" in row
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["config"]["judge"] == JUDGE
    assert "std_vs_disagreement_spearman" not in saved  # no annotators off the benchmark
    assert not any(k.startswith("gold") for r in saved["policies"].values() for k in r)
    curve = saved["overoptimisation"][str(tmp_path / "rl")]
    assert [p["step"] for p in curve] == [0, 1]
    assert curve[0]["judge_mean"] == pytest.approx(sft["judge_mean"])
    assert not any("gold_mean" in p for p in curve)
    html = _without_images((tmp_path / "cmp" / "report.html").read_text())
    assert "under the judge reply_chars" in html and "under the gold judge" not in html
    assert f"judge win rate <b>{row['judge_win_rate']:.3f}</b>" in html
    result = CliRunner().invoke(app, ["report", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    again = (tmp_path / "cmp" / "report.html").read_text()
    assert "under the judge reply_chars" in again and again.count("data:image/png") >= 3


def test_compare_under_a_reward_model_judge(tiny_model_dir, tmp_path):
    """A reward-model folder as the judge: its reward per reply is what the same model scores
    on its own; a .txt prompt file."""
    from distalign.rl.rewards import load_reward_source
    from tests.conftest import train_tiny_reward_models

    rm = train_tiny_reward_models(tiny_model_dir, tmp_path, ("scalar",))["scalar"]
    (tmp_path / "prompts.txt").write_text("Say hello.\nName a fruit.\nCount to three.\n")
    cfg = CompareConfig(
        sft=str(tiny_model_dir),
        dataset_name=str(tmp_path / "prompts.txt"),
        judge=str(rm),
        max_completion_length=6,
        bootstrap=50,
        output_dir=str(tmp_path / "cmp"),
        device="cpu",  # float32 on any machine, as the rescoring below (a GPU would take bf16)
    )
    summary = run_compare(cfg)
    replies = [json.loads(line) for line in (tmp_path / "cmp" / "replies.jsonl").open()]
    prompts = [r["prompt"] for r in replies]
    again = load_reward_source(str(rm))(prompts, [r["reply"] for r in replies]).rewards
    np.testing.assert_allclose([r["judge_reward"] for r in replies], again.numpy(), rtol=1e-5)
    assert summary["policies"]["sft"]["judge_name"] == "rm_scalar"
    assert summary["policies"]["sft"]["judge_mean"] == pytest.approx(float(again.mean()))


def test_the_spread_measures_are_explained_and_tabled_once(tmp_path):
    """With two reward models (one scalar), the spread paragraph and its table appear once."""
    summary = _summary()
    summary["std_vs_disagreement_spearman"] = {"scalar": None, "ordinal": 0.14}
    measures = {"spearman_raw": 0.14, "spearman_centred": -0.3, "partial_raw_given_length": 0.06,
                "partial_centred_given_length": -0.1, "raw_vs_length": 0.2,
                "centred_vs_length": -0.5}  # fmt: skip
    summary["std_vs_disagreement"] = {"scalar": None, "ordinal": measures}
    html = write_report(summary, None, tmp_path).read_text()
    assert html.count("fixes each annotator") == 1
    assert html.count("ρ with centred spread") == 1
    # the headline is the centred measure (the raw one grows with length); the table has both
    assert "— (scalar: no spread)" in html and "<b>ordinal</b> -0.300" in html
    summary.pop("std_vs_disagreement")  # a comparison saved before the centred measure
    html = write_report(summary, None, tmp_path).read_text()
    assert "<b>ordinal</b> 0.140" in html and "raw std of the gold reward" in html
    # a distributional RM whose centred ρ is undefined keeps its section and its other measures
    summary["std_vs_disagreement"] = {"ordinal": measures | {"spearman_centred": None}}
    html = write_report(summary, None, tmp_path).read_text()
    assert "— (undefined: no variation to rank)" in html and "ρ with raw std" in html
    summary["std_vs_disagreement"] = {"scalar": None}  # scalar reward models alone
    summary["std_vs_disagreement_spearman"] = {"scalar": None}
    html = write_report(summary, None, tmp_path).read_text()
    assert "predicted spread track" not in html and "no spread" not in html


def test_policies_and_reward_models_may_be_named_by_their_folders():
    cfg = CompareConfig(
        policies=["runs/rl_a/final", "aligned=runs/x", "runs/lr=1e-5/final", "other/rl_a/final"],
        rewards=["runs/rm_scalar/final", "sft/final"],
    )
    assert cfg.policy_dirs() == {
        "rl_a": "runs/rl_a/final", "aligned": "runs/x", "lr=1e-5": "runs/lr=1e-5/final",
        "rl_a_2": "other/rl_a/final",
    }  # fmt: skip
    assert cfg.reward_dirs() == {"rm_scalar": "runs/rm_scalar/final", "sft": "sft/final"}
    assert CompareConfig(policies=["runs/sft/final"]).policy_dirs() == {"sft_2": "runs/sft/final"}


def test_the_sft_policy_defaults_to_the_model_the_policies_were_trained_from(tmp_path):
    from distalign.config import ConfigError
    from distalign.eval.policy import sft_of

    run = tmp_path / "rl"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("model_name_or_path: my/base\nreward: x:y\n")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "my/base"}')
    cfg = CompareConfig(dataset_name="p.jsonl", judge=JUDGE, policies=[str(run), str(adapter)])
    assert sft_of(cfg) == "my/base"  # a run (its final/) and an adapter agree
    assert sft_of(CompareConfig(dataset_name="p.jsonl", judge=JUDGE, sft="other")) == "other"
    assert sft_of(CompareConfig(dataset_name="p.jsonl", judge=JUDGE)) == "smollm2-135m-instruct"
    # a run's step checkpoint; the embedded model's alias and its cache folder (PEFT's record)
    (run / "checkpoints" / "step_00010").mkdir(parents=True)
    step = str(run / "checkpoints" / "step_00010")
    assert sft_of(CompareConfig(dataset_name="p.jsonl", judge=JUDGE, policies=[step])) == "my/base"
    (run / "config.yaml").write_text("model_name_or_path: smollm2-135m-instruct\n")
    cache = "/somewhere/.cache/distalign/models/smollm2-135m-instruct"
    (adapter / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{cache}"}}')
    assert sft_of(cfg) in ("smollm2-135m-instruct", cache)
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "their/base"}')
    with pytest.raises(ConfigError, match=r"trained from different models.*give sft=MODEL"):
        sft_of(cfg)
    # runs alone (the over-optimisation curve): their base, not the default model
    (run / "config.yaml").write_text("model_name_or_path: my/base\nreward: x:y\n")
    assert sft_of(CompareConfig(dataset_name="p.jsonl", judge=JUDGE, runs=[str(run)])) == "my/base"


def test_a_missing_policy_folder_stops_compare_before_any_sampling(
    tiny_model_dir, tmp_path, monkeypatch
):
    from distalign.eval import policy as policy_module
    from distalign.models.load import ModelNotFoundError

    def never(*args, **kwargs):
        raise AssertionError("sampled before checking the policies")

    monkeypatch.setattr(policy_module, "measure_policy", never)
    typo = str(tmp_path / "typo")
    cfg = CompareConfig(dataset_name="gold", max_eval_samples=2, sft=str(tiny_model_dir),
                        policies=[typo], output_dir=str(tmp_path / "c"))  # fmt: skip
    with pytest.raises(ModelNotFoundError, match=f"policy typo: model folder '{typo}' does not"):
        run_compare(cfg)
    # a reward model given as the policy, runs of the wrong kind or not there
    rm = tmp_path / "rm_run"
    shutil.copytree(tiny_model_dir, rm / "final")
    config = json.loads((rm / "final" / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (rm / "final" / "config.json").write_text(json.dumps(config))
    (rm / "config.yaml").write_text("head: scalar\n")
    rl = tmp_path / "rl_run"
    rl.mkdir()
    (rl / "config.yaml").write_text("num_generations: 4\nreward: null\n")
    for bad, said in [
        ({"policies": [str(rm / "final")]}, "policy rm_run .* a classifier"),
        ({"runs": [typo]}, f"runs: {typo} does not exist: give the output_dir of an RL run"),
        ({"runs": [str(rm)]}, "runs: .* is a reward-model run, not an RL run: give it as rm_runs"),
        ({"rm_runs": [str(rl)]}, "rm_runs: .* is an RL run, not a reward-model run: give it as "
                                 "runs \\(--run\\)"),
    ]:  # fmt: skip
        with pytest.raises((ConfigError, ModelNotFoundError), match=said):
            run_compare(dataclasses.replace(cfg, **{"policies": [], **bad}))
    assert not (tmp_path / "c").exists()  # made only once the inputs hold
    with pytest.raises(ConfigError, match=r"greedy replies .* do not estimate"):
        run_compare(dataclasses.replace(cfg, policies=[], runs=[str(rl)], temperature=0.0))
    (tmp_path / "c").write_text("")
    with pytest.raises(ConfigError, match=r"output_dir .* is a file"):
        run_compare(cfg := dataclasses.replace(cfg, policies=[str(tiny_model_dir)]))


def test_reward_model_runs_of_one_name_keep_a_row_each_with_their_intervals(tmp_path):
    runs = []
    for seed, accuracy in ((1, 0.61), (2, 0.66)):  # runs/seed1/rm and runs/seed2/rm
        run = tmp_path / f"seed{seed}" / "rm"
        run.mkdir(parents=True)
        evaluation = {"accuracy": accuracy, "contested_auroc": 0.7, "data": "pairs",
                      "contested_auroc_ci95": [0.6, 0.8],
                      "plot_grid": "/elsewhere/eval_pairs_test_pairs.png"}  # fmt: skip
        (run / "final").mkdir()
        (run / "final" / "eval_pairs_test.json").write_text(json.dumps(evaluation))
        (run / "final" / "eval_pairs_test_pairs.png").write_bytes(b"png")
        runs.append(str(run))
    table = rm_eval_table({"rm_runs": runs})
    assert table["labels"] == ["pairwise accuracy (observed: one draw of the labels)",
                               "AUROC flagging contested pairs", "data"]  # fmt: skip
    assert table["rows"] == [["rm", "0.610", "0.700 [0.600, 0.800]", "pairs"],
                             ["rm_2", "0.660", "0.700 [0.600, 0.800]", "pairs"]]  # fmt: skip
    assert table["intervals"]
    from distalign.report.runs import rm_evaluation_images

    titles = [title for title, _ in rm_evaluation_images(runs)]
    assert titles == ["rm: eval pairs test pairs", "rm_2: eval pairs test pairs"]


def test_a_step_checkpoint_policy_is_held_to_its_runs_reward(tmp_path):
    run = tmp_path / "rl"
    (run / "checkpoints" / "step_00004").mkdir(parents=True)
    (run / "config.yaml").write_text(f"reward: [{JUDGE}]\n")
    step = str(run / "checkpoints" / "step_00004")
    cfg = CompareConfig(dataset_name="prompts.jsonl", judge=JUDGE, policies=[step])
    with pytest.raises(ValueError, match=r"is the reward .*rl was trained on"):
        check_judge_held_out(cfg)


def test_a_verdict_needs_enough_prompts():
    few = {**_summary(), "prompts": 1}
    by_name = {v["name"]: v for v in verdicts(few)}
    assert {v["outcome"] for v in by_name.values()} == {"unclear"}
    assert by_name["good"]["badge"] == "too few prompts"
    assert by_name["good"]["where"] == "over 1 prompts, too few to judge by"


def test_one_prompt_s_missing_intervals_show_as_dashes(tmp_path):
    """Over one prompt no interval is drawn: compare.json holds null, the page a dash."""
    one = _summary()
    one["prompts"] = 1
    for row in one["policies"].values():
        row["gold_win_rate_ci95"] = [None, None]
        row["gold_mean_gain_ci95"] = [None, None]
    by_name = {v["name"]: v for v in verdicts(one)}
    assert by_name["good"]["interval"] == "—" and by_name["good"]["gain_interval"] == "[—]"
    html = write_report(one, {}, tmp_path).read_text()
    assert "nan" not in _without_images(html).lower()


def test_a_policy_name_is_not_the_baselines_nor_given_twice():
    from distalign.config import ConfigError

    with pytest.raises(ConfigError, match="the name 'sft' is the baseline's"):
        CompareConfig(policies=["sft=runs/a", "runs/b"]).policy_dirs()
    with pytest.raises(ConfigError, match="the name 'a' names 'runs/x' already"):
        CompareConfig(policies=["a=runs/x", "a=runs/y"]).policy_dirs()
    with pytest.raises(ValueError, match="bootstrap must be ≥ 1"):
        CompareConfig(bootstrap=0)


def test_runs_sharing_a_folder_name_keep_a_curve_each(tmp_path, monkeypatch):
    from distalign.report import html

    runs = []
    for seed in ("s1", "s2"):
        run = tmp_path / seed / "rl"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/reward": 1.0}) + "\n")
        runs.append(str(run))
    config = {"runs": runs, "policies": []}
    assert rl_run_names(config) == {runs[0]: "rl", runs[1]: "rl_2"}
    point = [{"step": 0, "kl": 0.0, "gold_mean": 1.0}, {"step": 1, "kl": 1.0, "gold_mean": 2.0}]
    summary = {**_summary(config=config), "overoptimisation": {r: point for r in runs}}
    drawn = {}
    monkeypatch.setattr(html.plots, "overoptimisation",
                        lambda curves, *a: drawn.update(curves))  # fmt: skip
    html.figures(summary, config, None)
    assert list(drawn) == ["rl", "rl_2"]


def test_runs_trained_on_the_gold_reward_are_said_under_the_gold_judge(tmp_path, caplog):
    from distalign.eval.policy import load_judge, trained_on_gold
    from distalign.report.html import figures

    run = tmp_path / "rl_gold"
    run.mkdir()
    (run / "config.yaml").write_text("reward: distalign.gold.judge:gold_reward\n")
    other = tmp_path / "rl_rm"
    other.mkdir()
    (other / "config.yaml").write_text(f"reward: {JUDGE}\n")
    default = tmp_path / "rl_default"  # rl train without a reward: the gold judge's
    default.mkdir()
    (default / "config.yaml").write_text("reward: null\nseed: 0\n")
    cfg = CompareConfig(runs=[str(run), str(other), str(default)])
    assert trained_on_gold(cfg) == [str(run), str(default)]
    with caplog.at_level("WARNING"):
        assert load_judge(cfg) == (None, None)
    assert "rl_gold was trained on the gold judge's reward" in caplog.text
    summary = {**_summary(), "trained_on_judge": [str(run)]}
    notes = next(f["notes"] for f in figures(summary, {}, None) if f["title"].startswith("Win"))
    assert notes == [
        f"{run} was trained on the gold judge's reward: its gold figures grade its own training "
        "objective (an oracle run), not a held-out evaluation"
    ]


def test_labels_are_drawn_as_written_not_as_math():
    png = plots.win_rate_intervals(
        {"gold": {"$\\foo{$": (0.6, 0.5, 0.7), "$x$": (0.4, 0.3, 0.5)}},
        {"$\\foo{$": "#000000", "$x$": "#111111"},
    )
    assert png and png.startswith(b"\x89PNG")


def test_a_saved_comparison_with_names_now_refused_still_rebuilds(tmp_path):
    config = {"policies": ["sft=runs/sft_again", "good=runs/a/final", "good=runs/b/final"]}
    assert rl_run_names(config) == {}  # read leniently: nothing there to draw, no error
    summary = {**_summary(config=config)}
    (tmp_path / "compare.json").write_text(json.dumps(summary))
    rebuild_report(tmp_path)
    assert (tmp_path / "report.html").is_file()


def test_a_judge_must_score_every_reply(caplog):
    from distalign.eval.policy import judge_replies
    from distalign.rl.rewards import RewardFunctionError, load_reward_source

    def picky(prompts, replies):
        return [None if r == "?" else 1.0 for r in replies]

    judge = load_reward_source(picky)
    chat = [{"role": "user", "content": "q"}]
    assert judge_replies(judge, [chat] * 2, ["a", "b"], "cpu")["judge"].tolist() == [1.0, 1.0]
    with pytest.raises(RewardFunctionError, match=r"no value for reply 1 .*'\?'"):
        judge_replies(judge, [chat] * 2, ["a", "?"], "cpu")
    assert "advantage 0" not in caplog.text  # training's warning: a judge's is the error


def test_an_oracle_policy_is_named_on_its_verdict_and_in_the_table(tmp_path):
    config = {"num_generations": 1, "policies": ["good=runs/rl_gold/final", "runs/rl_rm/final"]}
    summary = {**_summary(config=config), "trained_on_judge": ["runs/rl_gold"]}
    by_name = {v["name"]: v for v in verdicts(summary)}
    assert by_name["good"]["oracle"] and not by_name["bad"]["oracle"]
    html = write_report(summary, None, tmp_path).read_text()
    assert html.count("Oracle run: trained on the gold judge") == 1
    assert "good (oracle)" in html and "Oracle runs:" in html
    assert "good (run runs/rl_gold) was trained on the gold judge" in html
    assert "Measured once only" not in html  # that heading is for one-point panels


def test_sft_reads_as_the_reference_and_a_missing_interval_as_none(tmp_path):
    summary = _summary()
    summary["policies"]["tied"].pop("gold_win_rate_ci95")
    tied = next(v for v in verdicts(summary) if v["name"] == "tied")
    assert (tied["badge"], tied["interval"], tied["where"]) == ("no interval", "—", "none saved")
    sample = {"prompt": "Hi", "sft": {"reply": "", "gold": 1.0}, "good": {"reply": "Yo", "gold": 2}}
    html = write_report({**summary, "samples": [sample]}, None, tmp_path).read_text()
    assert "contains 0.5" not in html.split("tied</b>")[1].split("</div>")[0]
    assert "reference" in html and "0.500<br>" not in html  # SFT against itself: no figure
    assert "(empty reply)" in html and 'dir="auto"' in html and 'name="viewport"' in html


def test_a_rebuild_from_elsewhere_finds_the_runs_or_says_which_are_missing(tmp_path, monkeypatch):
    """eval compare saves run folders relative to where it ran; the page rebuilt from another
    working directory draws them all the same, and names any it cannot find."""
    root = tmp_path / "project"
    run = root / "runs" / "rl_a"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")  # a model folder
    rows = [{"step": s, "train/reward": s / 2, "train/kl": s / 4, "eval/gold_mean": 2 + s / 8}
            for s in (1, 2, 3)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"num_generations": 1, "runs": ["runs/rl_a", "runs/gone"],
              "policies": ["good=runs/rl_a/final"]}  # fmt: skip
    curve = [{"step": 0, "kl": 0.0, "gold_mean": 2.0}, {"step": 3, "kl": 1.0, "gold_mean": 2.4}]
    summary = {**_summary(config=config), "overoptimisation": {"runs/rl_a": curve}}
    compare = root / "runs" / "compare"
    compare.mkdir()
    (compare / "compare.json").write_text(json.dumps(summary))
    drawn = {}
    real = html.plots.overoptimisation
    monkeypatch.setattr(html.plots, "overoptimisation",
                        lambda curves, *a: drawn.update(curves) or real(curves, *a))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # not the folder eval compare ran in
    page = rebuild_report(compare).read_text()
    assert list(drawn) == ["good"]  # the curve by its policy's name (and colour)
    assert "REINFORCE training" in page
    assert "not found here" in page and "runs/gone" in page


def test_under_a_named_judge_the_runs_gold_panel_is_the_benchmarks(tmp_path):
    run = tmp_path / "rl"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "eval/gold_mean": 1.0}) + "\n")
    titles = [p.title for p in rl_panels({str(run): "rl"}, {}, gold_judge=False)]
    assert titles[0] == "the benchmark's gold reward on the run's own held-out prompts"


def test_reward_model_curves_take_colours_no_policy_has():
    taken = {"#1f77b4", "#ff7f0e"}
    used = []
    real = plots.plt.Axes.plot

    def spy(ax, *args, color=None, **kwargs):
        used.append(color)
        return real(ax, *args, color=color, **kwargs)

    series = {"rm_a": [(1, 1.0), (2, 0.5)], "rm_b": [(1, 2.0), (2, 1.0)]}
    panel = plots.Panel("loss", "nats", series)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plots.plt.Axes, "plot", spy)
        plots.training_curves([panel], avoid=taken)
    assert used and not taken & set(used)


def test_the_report_reads_damaged_run_folders_and_the_default_reward(tmp_path, caplog):
    """A run with rl train's default reward (null: the gold judge's) is labelled so; a damaged
    config.yaml or a torn last log line (a killed writer) costs its label or its line, not the
    page."""
    rows = [{"step": s, "train/reward": float(s)} for s in (1, 2)]
    log = "".join(json.dumps(r) + "\n" for r in rows)
    for name, config in {"gold": "reward: null\n", "bad": "reward: [unclosed\n"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config)
        (tmp_path / name / "metrics.jsonl").write_text(log + '{"step": 3, "train/rew')
    names = {str(tmp_path / n): n for n in ("gold", "bad")}
    with caplog.at_level("WARNING"):
        panels = rl_panels(names, {})
    rewards = {p.title: list(p.series) for p in panels if p.title.startswith("training reward")}
    assert rewards == {
        "training reward: gold_reward": ["gold"],
        "training reward: run bad": ["bad"],
    }
    assert all(len(pts) == 2 for p in panels for pts in p.series.values())
    assert "1 line(s) that are not JSON objects skipped" in caplog.text


def test_reward_gains_over_sft_carry_their_interval(tmp_path):
    """The verdict and each annotator group's column give the gain over SFT with its paired
    interval, so a worse-off group's gain can be read against noise; files without one read
    as before."""
    from distalign.report.tables import measures_table

    summary = _summary()
    good = summary["policies"]["good"]
    good |= {"gold_mean_gain_ci95": [0.3, 0.7], "gold_concise_gain_ci95": [-0.1, 0.9]}
    by_name = {v["name"]: v for v in verdicts(summary)}
    assert by_name["good"]["gain_interval"] == "[+0.300, +0.700]"
    assert by_name["bad"]["gain_interval"] == ""  # saved before the intervals
    rows = {r[0]: r for r in measures_table(summary)["rows"]}
    assert rows["good"][3] == ("2.400", "+0.500 [-0.100, +0.900]")  # concise: 2.5 − 0.1
    assert rows["sft"][3] == "1.900" and rows["bad"][3] == "1.400"
    html = write_report(summary, None, tmp_path).read_text()
    assert "+0.500</b> [+0.300, +0.700]" in html


def test_gain_interval_pairs_each_prompts_mean_with_sfts():
    from distalign.eval.policy import gain_interval

    cfg = CompareConfig(bootstrap=200)
    policy = np.array([1.0, 3.0, 2.0, 2.0])  # two prompts, k=2: means 2, 2
    sft = np.array([0.0, 0.0, 1.0, 1.0])  # means 0, 1: gains 2 and 1
    lo, hi = gain_interval(policy, sft, 2, cfg)
    assert 1.0 <= lo <= hi <= 2.0


def test_a_rebuild_leaves_hub_ids_alone_and_a_hub_policy_has_no_run(tmp_path, monkeypatch):
    from distalign.checkpoint import run_folder
    from distalign.report.html import relocated

    (tmp_path / "gpt2").mkdir()  # a folder that only shares the hub id's name
    compare = tmp_path / "cmp"
    compare.mkdir()
    summary = {"config": {"policies": ["gpt2", "org/model"], "runs": []}, "policies": {}}
    assert relocated(summary, compare)["config"]["policies"] == ["gpt2", "org/model"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("reward: null\n")  # the working folder's own run
    assert run_folder("org/model") is None and run_folder("gpt3") is None


def test_several_policies_beat_sft_only_after_holm_s_correction():
    """Three policies each tested at 95% against one SFT would together err more often than
    5%: a verdict holds only where the Holm-adjusted p-value is below 0.05, and says so. A
    missing p-value counts as 1; a comparison saved without any says it is uncorrected; an
    oracle run is not in the family."""
    summary = _summary()
    summary["config"]["bootstrap"] = 2000
    rows = summary["policies"]
    rows["good"]["gold_win_rate_p"] = 0.03  # above 0.5 alone; second smallest: 2 × 0.03
    rows["tied"]["gold_win_rate_p"] = 0.6
    rows["bad"]["gold_win_rate_p"] = 0.0  # no resample on the other side of 0.5

    def by_name():
        return {v["name"]: v for v in verdicts(summary)}

    good, bad = by_name()["good"], by_name()["bad"]
    assert (good["outcome"], good["badge"]) == ("unclear", "no clear difference")
    assert good["where"] == (
        "above 0.5, but not after Holm's correction over 3 policies (adjusted p = 0.060)"
    )
    assert bad["outcome"] == "worse"
    assert bad["where"] == "below 0.5; Holm-adjusted p < 0.0005 over 3 policies"
    rows["good"]["gold_win_rate_p"] = 0.01  # 0.02 adjusted: the claim stands
    assert by_name()["good"]["outcome"] == "better"
    del rows["tied"]["gold_win_rate_p"]  # counts as 1: the others are still corrected
    assert by_name()["good"]["where"].endswith("= 0.020 over 3 policies")
    for row in rows.values():
        row.pop("gold_win_rate_p", None)  # a comparison saved before p-values
    assert by_name()["good"]["where"] == (
        "above 0.5 (uncorrected for several policies: saved before p-values were)"
    )
    rows["good"]["gold_win_rate_p"] = 0.01  # not an annotator group's column
    assert _gold_groups(rows["good"]) == ["concise"]


def test_an_oracle_run_is_not_in_the_family_of_verdicts(monkeypatch):
    summary = _summary()
    for name, p in (("good", 0.02), ("tied", 0.6), ("bad", 0.03)):
        summary["policies"][name]["gold_win_rate_p"] = p
    good = {v["name"]: v for v in verdicts(summary)}["good"]
    assert good["outcome"] == "unclear"  # 3 × 0.02 = 0.06 over all three
    monkeypatch.setattr("distalign.report.tables.oracle_policies", lambda s: {"bad": "runs/o"})
    good = {v["name"]: v for v in verdicts(summary)}["good"]
    assert good["outcome"] == "better"  # the oracle aside: 2 × 0.02 = 0.04
    assert good["where"] == "above 0.5; Holm-adjusted p = 0.040 over 2 policies"
    assert good["family"] == 2


def test_the_page_speaks_of_holm_s_correction_only_where_it_ran(monkeypatch, tmp_path):
    """One policy beside an oracle run: a family of one, nothing corrected, and the page's
    note says nothing of a correction; with two policies it does."""
    summary = _summary()
    for name, p in (("good", 0.02), ("tied", 0.6), ("bad", 0.03)):
        summary["policies"][name]["gold_win_rate_p"] = p
    assert "Holm" in write_report(summary, None, tmp_path).read_text()
    del summary["policies"]["tied"]
    monkeypatch.setattr("distalign.report.tables.oracle_policies", lambda s: {"bad": "runs/o"})
    (good,) = [v for v in verdicts(summary) if v["name"] == "good"]
    assert good["where"] == "above 0.5" and good["family"] == 0
    assert "Holm" not in write_report(summary, None, tmp_path).read_text()
