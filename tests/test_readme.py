"""The README's Python example runs as written (on the tiny model instead of SmolLM2)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### In Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    code = readme_python_example()
    default = 'MODEL = "smollm2-135m-instruct"'
    assert default in code  # the example names the embedded default; the test swaps it
    code = code.replace(default, f"MODEL = {str(tiny_model_dir)!r}")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "reward before/after" in out
    assert (tmp_path / "runs/api_rm/final/config.json").is_file()
    assert (tmp_path / "runs/api_rl/final/adapter_config.json").is_file()
