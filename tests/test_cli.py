"""One smoke test per command, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from distalign.cli import app
from tests.conftest import write_jsonl

EXAMPLES = Path(__file__).parents[1] / "examples"
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result, result.output


def test_inspect_hh_gz():
    result, out = invoke("data", "inspect", str(EXAMPLES / "hh_sample.jsonl.gz"))
    assert result.exit_code == 0, out
    assert "format: hh" in out and "pairs: 3" in out
    assert "<|im_start|>assistant" in out


def test_inspect_conversational_jsonl():
    result, out = invoke("data", "inspect", str(EXAMPLES / "conversational.jsonl"))
    assert result.exit_code == 0, out
    assert "format: explicit" in out and "pairs: 3" in out and "with ratings: 1" in out


def test_inspect_names_the_broken_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    shutil.copy(EXAMPLES / "conversational.jsonl", path)
    with path.open("a") as f:
        f.write('{"prompt": "q", "chosen": \n')
    result = runner.invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code != 0
    assert "broken.jsonl:4: broken JSON line" in str(result.exception)
    result, out = invoke("data", "inspect", str(path), "--skip-bad-rows")
    assert result.exit_code == 0, out
    assert "pairs: 3" in out and "skipped malformed rows: 1" in out


def test_generate_writes_replies_and_config(tiny_model_dir, tmp_path):
    out_file = tmp_path / "replies.jsonl"
    result, out = invoke(
        "generate",
        f"model={tiny_model_dir}",
        "prompts=[Hello,Bye]",
        "k=2",
        "sampling.max_new_tokens=5",
        f"output={out_file}",
    )
    assert result.exit_code == 0, out
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 4 and rows[2]["prompt"][-1]["content"] == "Bye"
    assert all(r["tokens"] <= 5 for r in rows)
    assert (tmp_path / "replies.config.yaml").is_file()


def test_rm_train_eval_score(tiny_model_dir, tmp_path):
    from tests.rm.test_train import make_pairs

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(24, seed=0))
    write_jsonl(data / "test.jsonl", make_pairs(8, seed=1))
    run_dir = tmp_path / "rm"
    result, out = invoke(
        "rm", "train", f"model={tiny_model_dir}", f"data={data}", "max_steps=2", "batch_size=4",
        "max_length=64", "max_prompt_length=32", "tracker=none", f"output_dir={run_dir}",
    )  # fmt: skip
    assert result.exit_code == 0, out
    assert "accuracy" in out
    result, out = invoke("rm", "eval", "--model", str(run_dir / "final"), "--data", str(data))
    assert result.exit_code == 0, out
    assert "ece" in out and (run_dir / "final" / "eval_pairs_test.json").is_file()
    replies = write_jsonl(
        tmp_path / "replies.jsonl",
        [
            {"prompt": "apple?", "reply": "stone thanks"},
            {"prompt": [{"role": "user", "content": "x"}], "reply": "y"},
        ],
    )
    result, out = invoke("rm", "score", "--model", str(run_dir / "final"), "--input", str(replies))
    assert result.exit_code == 0, out
    rows = [
        json.loads(line) for line in (tmp_path / "replies.scored.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and all(isinstance(r["reward"], float) for r in rows)


def test_eval_compare_arguments_reach_the_config(monkeypatch):
    import distalign.eval.policy as policy

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        row = {"gold_win_rate": 0.5, "gold_win_rate_ci95": (0.4, 0.6), "gold_mean": 1.0}
        return {
            "prompts": 1,
            "policies": {"sft": {**row, "kl_to_sft": 0.0, "length_tokens": 3.0}},
            "report": "r.html",
        }

    monkeypatch.setattr(policy, "run_compare", fake_run)
    result, out = invoke(
        "eval", "compare", "--policy", "a=dir1", "--policy", "b=dir2", "--reward", "s=rm",
        "--run", "r1", "--rm-run", "m1", "count=40", "sampling.max_new_tokens=48",
    )  # fmt: skip
    assert result.exit_code == 0, out
    cfg = seen["cfg"]
    assert cfg.policies == ["a=dir1", "b=dir2"] and cfg.rewards == ["s=rm"] and cfg.runs == ["r1"]
    assert (cfg.count, cfg.sampling.max_new_tokens) == (40, 48)
    assert "0.500 [0.400, 0.600]" in out and "r.html" in out
