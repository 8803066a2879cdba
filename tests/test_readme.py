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
    assert "accuracy on the training pairs" in out and "reward before/after" in out
    assert (tmp_path / "runs/api_rm/final/config.json").is_file()
    assert (tmp_path / "runs/api_rl/final/adapter_config.json").is_file()


def readme_commands() -> list[str]:
    """Every `distalign …` command line in the README's shell blocks (continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            line = line.removeprefix("accelerate launch -m distalign.cli ")
            if line.startswith("distalign "):
                commands.append(line.removeprefix("distalign "))
            elif line.startswith(("rm ", "rl ")):  # after `accelerate launch -m distalign.cli`
                commands.append(line)
    return commands


def test_every_readme_command_parses(monkeypatch):
    """Each README command names a real command and keys its config accepts (not run: the
    check is that no key or value in the docs is stale)."""
    import shlex

    from distalign.cli import COMMANDS, parse_command

    monkeypatch.chdir(ROOT)  # config paths in the README are relative to the repository
    commands = readme_commands()
    assert len(commands) > 20
    parsed = 0
    for line in commands:
        words = shlex.split(line)
        if words[0] in ("--version", "--help") or "--help" in words:
            continue
        name = " ".join(words[:2]) if " ".join(words[:2]) in COMMANDS else words[0]
        assert name in COMMANDS, f"README: unknown command {line!r}"
        args = words[len(name.split()) :]
        cfg = parse_command(name, args)
        assert cfg is not None, line
        parsed += 1
    assert parsed > 20


def test_commands_in_the_results_docs_parse(monkeypatch):
    """The commands that made the published results still run with today's keys."""
    import shlex

    from distalign.cli import COMMANDS, parse_command

    monkeypatch.chdir(ROOT)
    text = (ROOT / "docs" / "results" / "README.md").read_text(encoding="utf-8")
    lines = [
        line.strip().removeprefix("distalign ")
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("distalign ")
    ]
    assert lines
    for line in lines:
        words = shlex.split(line.split("  #")[0])
        name = " ".join(words[:2])
        assert name in COMMANDS, line
        parse_command(name, words[2:])
