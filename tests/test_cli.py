"""One smoke test per command, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from distalign.cli import app

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
