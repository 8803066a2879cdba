"""One smoke test per command through the real CLI, and the argument styles every command
takes (YAML + key=value, or TRL-style --config/--key value)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distalign.cli import app
from distalign.config import ConfigError, load_config
from distalign.rl.config import RLTrainConfig
from distalign.rm.config import RMTrainConfig
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


def test_inspect_summarises_a_metadata_file_beside_the_data(tmp_path):
    from tests.rm.test_train import make_pairs

    write_jsonl(tmp_path / "train.jsonl", make_pairs(5, seed=0))
    meta = {"name": "bench", "seed": 3, "judge": {"weights": ["nested-value"]},
            "splits": {"train": {"pairs": 5, "bayes_accuracy": 0.75}}}  # fmt: skip
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    result, out = invoke("data", "inspect", str(tmp_path), "dataset_split=train")
    assert result.exit_code == 0, out
    assert "name: bench" in out and "seed: 3" in out
    assert "0.7500" in out  # the splits' table
    assert "also: judge (in" in out and "metadata.json" in out
    assert "nested-value" not in out  # nested values are named, not printed


def reward_none(prompts, completions, **kwargs):
    """TRL's "not mine to score" for every reply."""
    return [None] * len(completions)


def test_rl_train_says_a_reward_no_source_gave(tiny_model_dir, tmp_path):
    """A reward function that scores no held-out reply (TRL: None) leaves the table a dash."""
    result, out = invoke(
        "rl", "train", f"model_name_or_path={tiny_model_dir}", "dataset_name=gold",
        "reward=tests.test_cli:reward_none", "max_steps=1", "num_generations=2",
        "per_device_train_batch_size=2", "max_completion_length=2", "max_eval_samples=2",
        "use_peft=false", "report_to=none", "eval_steps=0", "save_steps=0",
        f"output_dir={tmp_path / 'rl'}",
    )  # fmt: skip
    assert result.exit_code == 0, out
    assert "—" in out and "aligned" in out


def test_generate_writes_replies_and_config(tiny_model_dir, tmp_path):
    out_file = tmp_path / "replies.jsonl"
    result, out = invoke(
        "generate",
        f"model_name_or_path={tiny_model_dir}",
        "prompts=[Hello,Bye]",
        "num_generations=2",
        "max_completion_length=5",
        f"output_file={out_file}",
    )
    assert result.exit_code == 0, out
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 4 and rows[2]["prompt"] == "Bye"  # as given: text
    assert all(r["tokens"] <= 5 for r in rows)
    assert (tmp_path / "replies.config.yaml").is_file()
    # a prompt source's config, revision and malformed rows, as the other commands take them
    from tests.conftest import write_jsonl

    rows = [{"prompt": "Hi"}, {"prompt": 3}, {"prompt": "Bye"}]
    broken = write_jsonl(tmp_path / "prompts.jsonl", rows)
    result, out = invoke("generate", f"model_name_or_path={tiny_model_dir}",
                         f"dataset_name={broken}", "skip_bad_rows=true", "dataset_split=train[:2]",
                         "max_completion_length=3", f"output_file={out_file}")  # fmt: skip
    assert result.exit_code == 0, out
    assert [json.loads(line)["prompt"] for line in out_file.read_text().splitlines()] == ["Hi"]
    result, _ = invoke("generate", f"dataset_name={broken}", "dataset_config=main")
    assert "a config name or revision applies to hub datasets only" in str(result.exception)


def test_rm_train_eval_score(tiny_model_dir, tmp_path):
    from tests.rm.test_train import make_pairs

    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_pairs(24, seed=0))
    write_jsonl(data / "test.jsonl", make_pairs(8, seed=1))
    run_dir = tmp_path / "rm"
    result, out = invoke(
        "rm", "train", f"model_name_or_path={tiny_model_dir}", f"dataset_name={data}",
        "max_steps=2", "per_device_train_batch_size=4", "max_length=64", "max_prompt_length=32",
        "report_to=none", f"output_dir={run_dir}",
    )  # fmt: skip
    assert result.exit_code == 0, out
    assert "accuracy" in out
    result, out = invoke(
        "rm", "eval", f"model_name_or_path={run_dir / 'final'}", f"dataset_name={data}"
    )
    assert result.exit_code == 0, out
    assert "ece" in out and (run_dir / "final" / "eval_pairs_test.json").is_file()
    result, out = invoke(  # data that is not there: an error, and no output_dir made for it
        "rm", "eval", f"model_name_or_path={run_dir / 'final'}", f"dataset_name={data}/typo.jsonl",
        f"output_dir={tmp_path / 'evals'}",
    )  # fmt: skip
    assert "typo.jsonl: no such file" in str(result.exception)
    assert not (tmp_path / "evals").exists()
    result, out = invoke(  # as TRL's evaluate writes to output_dir, the model's folder untouched
        "rm", "eval", f"model_name_or_path={run_dir / 'final'}", f"dataset_name={data}",
        f"output_dir={tmp_path / 'evals'}", "max_eval_samples=4",
    )  # fmt: skip
    assert result.exit_code == 0, out
    assert (tmp_path / "evals" / "rm_eval_pairs_test_first4.json").is_file()  # the run's name
    assert not (run_dir / "final" / "eval_pairs_test_first4.json").exists()
    replies = write_jsonl(
        tmp_path / "replies.jsonl",
        [
            {"prompt": "apple?", "reply": "stone thanks"},
            {"prompt": [{"role": "user", "content": "x"}], "reply": "y"},
        ],
    )
    result, out = invoke(
        "rm", "score", "--model_name_or_path", str(run_dir / "final"), "--input-file", str(replies)
    )
    assert result.exit_code == 0, out
    rows = [
        json.loads(line) for line in (tmp_path / "replies.scored.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and all(isinstance(r["reward"], float) for r in rows)
    result, out = invoke(  # the input file as the one word that is not key=value, as
        "rm", "score", str(replies), f"model_name_or_path={run_dir / 'final'}",  # gold judge
        f"output_file={tmp_path / 'again.jsonl'}",
    )  # fmt: skip
    assert result.exit_code == 0, out
    assert (tmp_path / "again.jsonl").read_text().count("\n") == 2
    rows = [{"prompt": "x", "reply": None}, {"prompt": "apple?", "reply": "pear"}]
    broken = write_jsonl(tmp_path / "broken.jsonl", rows)
    result, out = invoke("rm", "score", str(broken), f"model_name_or_path={run_dir / 'final'}")
    assert result.exit_code == 1 and "broken.jsonl:1: field 'reply': null" in str(result.exception)
    result, out = invoke("rm", "score", str(broken), f"model_name_or_path={run_dir / 'final'}",
                         "skip_bad_rows=true")  # fmt: skip
    assert result.exit_code == 0, out
    assert "scored 1 rows" in out


def test_eval_compare_arguments_reach_the_config(monkeypatch):
    import distalign.eval.policy as policy

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        row = {"gold_win_rate": 0.5, "gold_win_rate_ci95": (0.4, 0.6), "gold_mean": 1.0}
        return {
            "prompts": 1,
            "policies": {
                "sft": {**row, "kl_to_sft": 0.0, "length_tokens": 3.0},
                "a": {**row, "kl_to_sft": 0.5, "length_tokens": 4.0},
            },
            "report": "r.html",
        }

    monkeypatch.setattr(policy, "run_compare", fake_run)
    result, out = invoke(
        "eval", "compare", "--policy", "a=dir1", "--policy", "b=dir2", "--reward", "s=rm",
        "--run", "r1", "--rm-run", "m1", "max_eval_samples=40", "--max_completion_length", "48",
    )  # fmt: skip
    assert result.exit_code == 0, out
    cfg = seen["cfg"]
    assert cfg.policies == ["a=dir1", "b=dir2"] and cfg.rewards == ["s=rm"] and cfg.runs == ["r1"]
    assert cfg.rm_runs == ["m1"]
    assert (cfg.max_eval_samples, cfg.max_completion_length) == (40, 48)
    assert "0.500 [0.400, 0.600]" in out and "r.html" in out and "reference" in out  # SFT's
    assert "1 prompt: too few to judge a policy by" in out  # as the report's verdicts say


def test_inspect_split_of_a_folder(tmp_path):
    from tests.rm.test_train import make_pairs

    write_jsonl(tmp_path / "train.jsonl", make_pairs(5, seed=0))
    write_jsonl(tmp_path / "test.jsonl", make_pairs(2, seed=1))
    result, out = invoke("data", "inspect", str(tmp_path), "dataset_split=train")
    assert result.exit_code == 0, out
    assert "pairs: 5" in out
    result, out = invoke("data", "inspect", str(tmp_path), "--dataset_split", "test")
    assert result.exit_code == 0, out
    assert "pairs: 2" in out
    result, out = invoke("data", "inspect", f"dataset_name={tmp_path}", "--split", "test")
    assert result.exit_code == 0, out
    assert "pairs: 2" in out


@pytest.fixture()
def rm_train_configs(monkeypatch):
    """The configs ``distalign rm train`` hands to the training loop (which does not run)."""
    import distalign.rm.train as rm_train

    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        return {"accuracy": 0.5}

    monkeypatch.setattr(rm_train, "run", fake_run)
    return seen


def test_rm_train_trl_flags_and_key_value_give_one_config(rm_train_configs, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("max_steps: 3\nreport_to: none\noutput_dir: runs/x\n")
    for args in (
        ["--config", str(path), "--learning_rate", "2e-5"],
        [str(path), "learning_rate=2e-5"],
        [str(path), "--learning_rate=2e-5"],
    ):
        result, out = invoke("rm", "train", *args)
        assert result.exit_code == 0, out
        assert "accuracy" in out and str(Path("runs/x") / "final") in out
    expected = load_config(RMTrainConfig, path, ["learning_rate=2e-5"])
    assert rm_train_configs == [expected] * 3
    assert (expected.learning_rate, expected.max_steps) == (2e-5, 3)


def test_rm_train_flag_spellings_reach_the_config(rm_train_configs, monkeypatch):
    import distalign.tracking as tracking

    monkeypatch.setattr(tracking, "_installed", lambda name: True)  # as if wandb were there
    result, out = invoke(
        "rm", "train", "--max-length", "64", "--max_prompt_length=32", "--use_peft",
        "--report_to", "wandb,tensorboard",
    )  # fmt: skip
    assert result.exit_code == 0, out
    (cfg,) = rm_train_configs
    assert (cfg.max_length, cfg.max_prompt_length, cfg.use_peft) == (64, 32, True)
    assert cfg.report_to == ["wandb", "tensorboard"]
    result, out = invoke("rm", "train", "report_to=none", "resume_from_checkpoint=true")
    assert result.exit_code == 0, out
    assert (rm_train_configs[1].report_to, rm_train_configs[1].resume_from_checkpoint) == (
        ["none"],
        "last",
    )


HELP_LINE = re.compile(r"^  (\w+(?:\.\w+)*) \((.+), default: (.*)\)$")


@pytest.mark.parametrize("words", [["-h"], ["rm", "-h"], ["rm", "train", "-h"], ["eval", "-h"]])
def test_h_is_help_at_every_level(words):
    """TRL's scripts (argparse) take -h; so does every level of distalign's command line."""
    result, out = invoke(*words)
    assert result.exit_code == 0, out
    assert "Usage: " in out and "No such option" not in out


@pytest.mark.parametrize(("command", "cls"), [("rm", RMTrainConfig), ("rl", RLTrainConfig)])
def test_train_help_lists_every_key_with_its_default(command, cls):
    result, out = invoke(command, "train", "--help")
    assert result.exit_code == 0, out
    assert out.startswith(f"Usage: distalign {command} train")
    lines = out.splitlines()
    shown = {}
    for i, line in enumerate(lines):
        if m := HELP_LINE.match(line):
            doc = lines[i + 1] if i + 1 < len(lines) else ""
            shown[m.group(1)] = (m.group(3), doc.strip())
    assert {"learning_rate", "per_device_train_batch_size"} <= shown.keys()
    fields = dataclasses.fields(cls)
    assert {f.name for f in fields} == shown.keys()
    for f in fields:
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        text, doc = shown[f.name]
        assert yaml.safe_load(text) == default, (f.name, text)
        assert doc and not HELP_LINE.match("  " + doc), f"{f.name} has no description"
    assert invoke(command, "train", "-h")[1] == out


def test_help_names_what_each_key_takes():
    """A key typed ``Any`` (it takes a path, a hub id or a Python object) shows what it takes,
    not ``Any``."""
    from distalign.cli import COMMANDS
    from distalign.config import config_fields

    for name, (cls, *_) in COMMANDS.items():
        for key, type_name, _, _ in config_fields(cls):
            assert type_name != "Any", f"{name}: {key}"


def test_version():
    result, out = invoke("--version")
    assert result.exit_code == 0, out
    assert out.strip() == f"distalign {importlib.metadata.version('distalign')}"


@pytest.mark.parametrize(
    ("args", "new"),
    [
        (["rm", "train", "lr=1"], "`lr` is now `learning_rate`"),
        (["rm", "train", "--batch-size", "4"], "per_device_train_batch_size"),
        (["rl", "train", "k=2"], "`k` is now `num_generations`"),
        (["rl", "train", "sampling.max_new_tokens=5"], "max_completion_length"),
        (["rm", "eval", "model=x"], "model_name_or_path"),
    ],
)
def test_old_keys_are_refused_naming_the_new_one(args, new, rm_train_configs):
    result, _ = invoke(*args)
    assert isinstance(result.exception, ConfigError), result.output
    assert new in str(result.exception)
    assert rm_train_configs == []


def test_old_yaml_key_is_refused_by_the_command(tmp_path, rm_train_configs, monkeypatch, capsys):
    """Through ``main``: a message naming the file and the new key, exit status 2."""
    from distalign import cli

    path = tmp_path / "old.yaml"
    path.write_text("batch_size: 8\n")
    monkeypatch.setattr(sys, "argv", ["distalign", "rm", "train", str(path)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "old.yaml" in out and "`batch_size` is now `per_device_train_batch_size" in out
    assert rm_train_configs == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hh_edge_cases.jsonl", ["format: hh", "rows read: 5", "pairs: 4",
                                 "(dropped): 1", "empty replies (kept): 1"]),
        ("windows_bom_crlf.jsonl", ["format: explicit", "rows read: 3", "pairs: 3"]),
        ("sharegpt_pairs.json", ["format: sharegpt", "pairs: 4", "<|im_start|>system"]),
        ("messages_pairs.jsonl", ["format: sharegpt", "pairs: 2"]),
        ("ultrafeedback_binarized.jsonl", ["format: explicit", "pairs: 3", "with ratings: 3"]),
        ("prompts.jsonl", ["format: prompt-only", "rows read: 6", "prompts: 6"]),
        ("standard_pairs.jsonl", ["format: explicit", "pairs: 3", "The capital of France is"]),
        ("implicit_pairs.jsonl", ["format: implicit", "pairs: 3", "clear day?<|im_end|>"]),
        ("alpaca_pairs.jsonl", ["format: alpaca", "pairs: 3", "Translate to French. Good morning"]),
        ("sharegpt_prompts.jsonl", ["format: prompt-only", "prompts: 4", "first prompt"]),
        ("tool_calls_pairs.jsonl", ["format: explicit", "pairs: 3", "<|im_start|>tool",
                                    "writes nothing for the rows' tool calls"]),
    ],
)  # fmt: skip
def test_inspect_example_files(name, expected):
    result, out = invoke("data", "inspect", str(EXAMPLES / name))
    assert result.exit_code == 0, out
    for text in expected:
        assert text in " ".join(out.split()), (text, out)  # lines wrapped at any width
    assert "skipped malformed rows: 0" in out
    if "prompt-only" in out:
        assert "pairs:" not in out


def test_windows_example_keeps_its_bom_and_crlf():
    """A checkout that rewrites line ends would make the example above test nothing."""
    data = (EXAMPLES / "windows_bom_crlf.jsonl").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\r\n") == 3


def test_inspect_empty_file_is_one_line(tmp_path, monkeypatch, capsys):
    """Through ``main``: the file named on one line, exit status 2, no traceback."""
    from distalign import cli

    (tmp_path / "empty.jsonl").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # a short path, so that the console does not wrap the line
    monkeypatch.setattr(sys, "argv", ["distalign", "data", "inspect", "empty.jsonl"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "error: empty.jsonl: no rows (empty file)\n"
    assert "Traceback" not in captured.err
    monkeypatch.setenv("RANK", "1")  # under a launcher each process says its own, by rank
    with pytest.raises(SystemExit):
        cli.say_error(ValueError("empty.jsonl: no rows (empty file)"))
    assert capsys.readouterr().out == "error: [rank 1] empty.jsonl: no rows (empty file)\n"


def test_a_tracker_that_is_not_installed_is_a_one_line_error(monkeypatch, capsys):
    import distalign.tracking as tracking
    from distalign.cli import main

    monkeypatch.setattr(tracking, "_installed", lambda name: name == "tensorboard")
    monkeypatch.setattr("sys.argv", ["distalign", "rm", "train", "report_to=wandb"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().out
    assert "pip install 'distalign[trackers]'" in err and "Traceback" not in err


def test_push_to_hub_without_a_network_is_a_one_line_error_naming_the_folder(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import distalign.hub as hub
    from distalign.cli import main

    monkeypatch.setattr(hub, "offline_if_unreachable", lambda: "huggingface.co does not resolve")
    monkeypatch.chdir(tmp_path)  # a short path, so that the console does not wrap the line
    argv = ["distalign", "rm", "train", f"model_name_or_path={tiny_model_dir}", "output_dir=out/rm",
            "push_to_hub=true"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().out
    assert "Traceback" not in err and "`hf upload rm out/rm/final`" in err


def test_rm_score_writes_beside_its_input_keeping_the_whole_name():
    from pathlib import Path

    from distalign.rm.score import _scored_name

    assert _scored_name(Path("a/my.data.jsonl")) == Path("a/my.data.scored.jsonl")
    assert _scored_name(Path("x.jsonl.gz")) == Path("x.scored.jsonl")


def test_held_out_titles_name_a_split_only_where_the_source_has_splits(tmp_path):
    from types import SimpleNamespace

    from distalign.cli import _held_out_title

    one = tmp_path / "pairs.jsonl"
    one.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (tmp_path / "split").mkdir()
    for name in ("train", "test"):
        (tmp_path / "split" / f"{name}.jsonl").write_text(one.read_text())

    def cfg(data, held_out=None):
        return SimpleNamespace(dataset_name=str(data), eval_dataset_name=held_out,
                               dataset_train_split="train", dataset_test_split="test")  # fmt: skip

    assert _held_out_title(cfg(one), "held-out") == f"held-out: the training data itself ({one})"
    assert _held_out_title(cfg(tmp_path / "split"), "held-out") == (
        f"held-out ({tmp_path / 'split'}, test)"
    )
    assert _held_out_title(cfg(tmp_path / "split", str(one)), "held-out") == f"held-out ({one})"


def test_a_one_process_command_launched_on_several_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["rm", "eval", "model_name_or_path=runs/rm/final"])
    assert result.exit_code != 0
    assert "rm eval runs in one process, and 2 were launched" in str(result.exception)
    from distalign.cli import MULTI_PROCESS, one_process

    for command in MULTI_PROCESS:
        one_process(command)  # accelerate spreads the training commands


def test_only_the_first_process_logs_notes_and_shared_warnings(monkeypatch):
    import logging

    from distalign.cli import replica_logs
    from distalign.distributed import EVERY_PROCESS

    monkeypatch.setenv("RANK", "0")
    assert replica_logs() is None  # the first process says everything
    monkeypatch.setenv("RANK", "1")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    root, handler = logging.getLogger(), Keep()
    root.addHandler(handler)
    try:
        replica = replica_logs()
        data, own = logging.getLogger("distalign.data.load"), logging.getLogger("distalign.rl")
        data.info("64 training pairs")
        data.warning("8 of 64 pairs are longer than max_length")  # the same on every process
        own.warning("log_extra('x'): 3 values for 4 completions", extra=EVERY_PROCESS)
        own.error("a reward function failed")
        assert seen == ["[rank 1] log_extra('x'): 3 values for 4 completions",
                        "[rank 1] a reward function failed"]  # fmt: skip
    finally:
        root.removeHandler(handler)
        for h in root.handlers:
            h.removeFilter(replica)
        logging.getLogger("distalign").setLevel(logging.NOTSET)
