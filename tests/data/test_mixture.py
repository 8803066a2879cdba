"""TRL's data set mixture (``datasets:``, ``test_split_size``): its keys, the rows each entry
gives (a folder's data_dir, a builder's data_files, columns, fractions), the held-out split, and
rm train / rl train reading it from a config."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle

import datasets
import pytest
import yaml

from distalign.config import ConfigError, config_dict, load_config
from distalign.data.files import DataSourceError, MissingSplitError
from distalign.data.load import LoadReport, iter_source_rows, load_preferences
from distalign.data.mixture import Mixture, MixturePart, parse_parts
from distalign.rl.config import RLTrainConfig
from distalign.rm.config import RMTrainConfig
from tests.conftest import write_jsonl


def pairs(tag: str, n: int, **extra) -> list[dict]:
    return [
        {"prompt": f"{tag} q{i}", "chosen": f"{tag} good {i}", "rejected": f"{tag} bad {i}"} | extra
        for i in range(n)
    ]


@pytest.fixture()
def sources(tmp_path, monkeypatch):
    """A downloaded hub repository with two subsets (HH's layout) and a loose file, read
    from ``tmp_path`` as the working folder."""
    monkeypatch.chdir(tmp_path)
    for sub in ("helpful-base", "harmless-base"):
        (tmp_path / "repo" / sub).mkdir(parents=True)
    write_jsonl(tmp_path / "repo" / "helpful-base" / "train.jsonl", pairs("helpful", 6))
    write_jsonl(tmp_path / "repo" / "helpful-base" / "test.jsonl", pairs("helpful-test", 2))
    write_jsonl(tmp_path / "repo" / "harmless-base" / "train.jsonl", pairs("harmless", 4))
    write_jsonl(tmp_path / "loose.jsonl", pairs("loose", 10, source="web"))
    return tmp_path


def texts(mixture: Mixture, split: str = "train") -> list[str]:
    return [row["prompt"] for _, row in iter_source_rows(mixture, split)]


def test_each_entry_reads_its_source_and_the_sources_follow_each_other(sources):
    mixture = Mixture(parse_parts([
        {"path": "repo", "data_dir": "helpful-base"},
        {"path": "repo", "data_dir": "helpful-base", "split": "test"},
        {"path": "json", "data_files": "loose.jsonl"},  # datasets' builder, as TRL passes it
        {"path": "loose.jsonl", "split": "train[:2]"},  # a source as dataset_name takes it
    ]))  # fmt: skip
    got = texts(mixture)
    assert got == [
        *(f"helpful q{i}" for i in range(6)),
        *(f"helpful-test q{i}" for i in range(2)),
        *(f"loose q{i}" for i in range(10)),
        "loose q0",
        "loose q1",
    ]
    # each row is named by its own file and row, whatever part it came from
    where = [w for w, _ in iter_source_rows(mixture, "train")]
    assert "helpful-base/train.jsonl" in where[0] and "loose.jsonl" in where[8]
    # no test split without test_split_size (a training run then evaluates on its training data)
    with pytest.raises(MissingSplitError, match=r"no split 'test' \(a mixture has \['train'\]"):
        texts(mixture, "test")


def test_data_files_as_datasets_reads_them(sources):
    (sources / "shards").mkdir()
    for i in range(3):
        write_jsonl(sources / "shards" / f"part{i}.jsonl", pairs(f"s{i}", 1))
    write_jsonl(sources / "shards" / "held.jsonl", pairs("held", 1))

    def read(**part):
        return texts(Mixture(parse_parts([part])))

    assert read(path="json", data_files="shards/part*.jsonl") == ["s0 q0", "s1 q0", "s2 q0"]
    assert read(path="json", data_files=["shards/part2.jsonl", str(sources / "loose.jsonl")])[
        :2
    ] == ["s2 q0", "loose q0"]  # a list, an absolute path among them
    by_split = {"train": "shards/part0.jsonl", "test": "shards/held.jsonl"}
    assert read(path="json", data_files=by_split, split="test") == ["held q0"]
    assert read(path="json", data_dir="shards", data_files="part1.jsonl") == ["s1 q0"]
    # a folder's data_files are under the folder, as load_dataset(folder, data_files=...) reads
    assert read(path="shards", data_files="part0.jsonl") == ["s0 q0"]
    with pytest.raises(MissingSplitError, match=r"no split 'validation' in data_files"):
        read(path="json", data_files=by_split, split="validation")
    with pytest.raises(DataSourceError, match=r"no file matches \['nothing\*.jsonl'\]"):
        read(path="json", data_files="nothing*.jsonl")
    with pytest.raises(DataSourceError, match="data_dir 'absent' is not a folder"):
        read(path="repo", data_dir="absent")
    with pytest.raises(DataSourceError, match="a file; data_dir and data_files name files"):
        read(path="loose.jsonl", data_dir="x")


def test_data_files_give_the_files_load_dataset_takes_in_its_order(sources):
    """Hidden files and folders, ``__pycache__`` and README.md are passed over, files of
    several folders come in datasets' order, and a file named twice is read twice."""
    for name in ("x/a", "x/z/d", "x-y/b", "x.y/c", "x0", ".hid/e", "__pycache__/f", ".g"):
        (sources / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(sources / "tree" / f"{name}.jsonl", pairs(name, 1))
    (sources / "tree" / "README.md").write_text("# a card\n")
    for files in ("tree/**/*.jsonl", "tree/**", ["tree/x0.jsonl", "tree/x0.jsonl"],
                  ["tree/*.jsonl", "tree/x0.jsonl"]):  # fmt: skip
        ours = texts(Mixture(parse_parts([{"path": "json", "data_files": files}])))
        theirs = datasets.load_dataset("json", data_files=files, split="train")["prompt"]
        assert ours == theirs, files
    assert len(theirs) == 2  # the file named twice


def test_a_builder_is_a_builder_and_its_other_files_are_read_by_datasets(sources):
    (sources / "json").mkdir()  # a folder named as the builder: load_dataset reads the builder
    write_jsonl(sources / "json" / "train.jsonl", pairs("folder", 1))
    assert texts(Mixture(parse_parts([{"path": "json", "data_files": "loose.jsonl"}])))[0] == (
        "loose q0"
    )
    (sources / "lines.txt").write_text("first prompt\nsecond prompt\n")
    rows = list(
        iter_source_rows(Mixture(parse_parts([{"path": "text", "data_files": "lines.txt"}])))
    )
    assert [row for _, row in rows] == [{"text": "first prompt"}, {"text": "second prompt"}]


def test_a_long_mixture_is_named_in_a_few_words(sources):
    """Its name is where a source's is, a path checked for existence among others."""
    from pathlib import Path

    files = [f"shard-{i:05d}-of-00012-with-a-long-name.jsonl" for i in range(12)]
    parts = parse_parts([{"path": "json", "data_files": files}] * 4)
    mixture = Mixture(parts)
    assert mixture == "datasets: json (12 files)[train] + 3 more"
    assert not Path(mixture).exists()  # no "file name too long"
    two = Mixture(parse_parts([{"path": "json", "data_files": ["a.jsonl", "b.jsonl"]}]))
    assert two == "datasets: json (a.jsonl, b.jsonl)[train]"


def test_a_mixture_is_named_by_its_sources_on_a_card_and_in_file_names(sources):
    from distalign.eval.rm import eval_file_name
    from distalign.hub import shown

    mixture = Mixture(parse_parts([{"path": "Anthropic/hh-rlhf", "data_dir": "helpful-base"},
                                   {"path": "json", "data_files": "/home/me/a.jsonl"},
                                   {"path": "repo", "data_dir": "harmless-base"}]))  # fmt: skip
    assert shown(mixture) == (
        "Anthropic/hh-rlhf (helpful-base) + json files (local) + harmless-base (local)"
    )
    assert eval_file_name(mixture, "test") == "eval_datasets_test.json"


def test_columns_and_fractions_as_trl_takes_them(sources):
    kept = list(iter_source_rows(Mixture(parse_parts([
        {"path": "loose.jsonl", "columns": ["prompt", "chosen", "rejected"]}]))))  # fmt: skip
    assert set(kept[0][1]) == {"prompt", "chosen", "rejected"}  # `source` left out
    with pytest.raises(DataSourceError, match=r"datasets\[0\] loose.jsonl\[train\]: no column "
                       r"\['score'\]"):  # fmt: skip
        list(iter_source_rows(Mixture(parse_parts([{"path": "loose.jsonl", "columns": "score"}]))))

    # TRL's fraction: shares of the largest mixture that repeats no source. 10 and 4 rows at
    # 1:1 -> at most 8 rows, 4 of each; at 3:1 -> min(10 / 0.75, 4 / 0.25) = 13.3 -> 10 and 3
    def counts(a: float, b: float) -> list[int]:
        mixture = Mixture(parse_parts([
            {"path": "loose.jsonl", "fraction": a},
            {"path": "repo", "data_dir": "harmless-base", "fraction": b},
        ]))  # fmt: skip
        got = texts(mixture)
        return [sum(t.startswith("loose") for t in got), sum(t.startswith("harmless") for t in got)]

    assert counts(1, 1) == [4, 4]
    assert counts(0.75, 0.25) == [10, 3]
    assert counts(1, 0) == [10, 0]


def test_test_split_size_holds_out_rows_as_datasets_splits_them(sources):
    parts = parse_parts([{"path": "loose.jsonl"}, {"path": "repo", "data_dir": "harmless-base"}])
    whole = texts(Mixture(parts))
    for size in (0.25, 3, 3.0):  # a share, or a count (a config reads numbers as floats)
        mixture = Mixture(parts, test_split_size=size, seed=7)
        train, test = texts(mixture), texts(mixture, "test")
        expected = datasets.Dataset.from_dict({"t": whole}).train_test_split(
            test_size=int(size) if size >= 1 else size, seed=7
        )
        assert (train, test) == (expected["train"]["t"], expected["test"]["t"])
        assert len(test) in (3, 4) and sorted(train + test) == sorted(whole)
    other = Mixture(parts, test_split_size=0.25, seed=8)
    assert texts(other, "test") != texts(Mixture(parts, test_split_size=0.25, seed=7), "test")
    # slices of the mixture's splits, as of any source's
    assert texts(Mixture(parts), "train[:3]") == whole[:3]
    with pytest.raises(DataSourceError, match=r"test_split_size 20 of 14 rows"):
        texts(Mixture(parts, test_split_size=20), "test")


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ([{"pth": "a"}], r"datasets\[0\]: Key 'pth' not in a data set's keys .* mean 'path'"),
        ([{"name": "x"}], r"datasets\[0\]: path: a hub id, a local file or folder"),
        ([{"path": "json"}], r"path 'json' is datasets' builder of json files: give data_files"),
        ([{"path": "a", "columns": [1]}], r"columns: a list of column names"),
        ([{"path": "a", "fraction": 1}, {"path": "b"}], r"fraction is set for some data sets"),
        ([{"path": "a", "fraction": 0}], r"the fractions add up to 0"),
        ([{"path": "a", "fraction": -1}], r"fraction: a share >= 0"),
        ([{"path": "a", "data_files": 3}], r"data_files: a path or pattern"),
        ([], r"no data set in the list"),
        ("a", r"datasets: a list of data sets"),
        ([["a"]], r"datasets\[0\]: a mapping with path"),
    ],
)
def test_a_wrong_entry_is_said_with_its_place(given, said):
    with pytest.raises(ConfigError, match=said):
        parse_parts(given)


def test_trl_dataset_config_objects_and_a_bare_source_are_parts():
    trl = pytest.importorskip("trl.scripts.utils")
    parts = parse_parts([trl.DatasetConfig(path="org/a", data_dir="sub"), "org/b"])
    assert parts == [MixturePart(path="org/a", data_dir="sub"), MixturePart(path="org/b")]


def test_a_hub_entry_passes_its_options_to_load_dataset(monkeypatch):
    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(pairs(path, 2))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("distalign.data.load.offline_if_unreachable", lambda: None)
    mixture = Mixture(parse_parts([
        {"path": "Anthropic/hh-rlhf", "data_dir": "helpful-base"},
        {"path": "org/set", "name": "main", "split": "test"},
        {"path": "json", "data_files": "https://example.org/pairs.jsonl"},
    ]))  # fmt: skip
    assert len(texts(mixture)) == 6
    assert calls == [
        ("Anthropic/hh-rlhf", {"split": "train", "data_dir": "helpful-base"}),
        ("org/set", {"split": "test", "name": "main"}),
        ("json", {"split": "train", "data_files": "https://example.org/pairs.jsonl"}),
    ]
    assert mixture.hub_ids() == ["Anthropic/hh-rlhf", "org/set"]
    from distalign.hub import model_card

    card = model_card(
        repo_id="me/rm", base_model=None, datasets=[mixture], tags=[],
        pipeline_tag="text-classification", library="transformers", body="x",
    )  # fmt: skip
    assert yaml.safe_load(card.split("---")[1])["datasets"] == ["Anthropic/hh-rlhf", "org/set"]


def test_a_training_config_reads_the_mixture_in_place_of_dataset_name(sources, caplog):
    path = sources / "trl.yaml"
    path.write_text(
        "datasets:\n  - path: repo\n    data_dir: helpful-base\n  - path: json\n"
        "    data_files: loose.jsonl\n    columns: [prompt, chosen, rejected]\n"
        "test_split_size: 0.25\nseed: 3\n"
    )
    for cls, more in ((RMTrainConfig, []), (RLTrainConfig, ["reward=my_rm"])):
        cfg = load_config(cls, path, more)
        assert isinstance(cfg.dataset_name, Mixture)
        assert cfg.dataset_name == ("datasets: repo (helpful-base)[train] + json (loose.jsonl)"
                                    "[train]")  # fmt: skip
        assert cfg.dataset_name.seed == 3 and cfg.dataset_name.test_split_size == 0.25
    # the pairs: 16 rows, 4 held out
    train = load_preferences(cfg.dataset_name, "train")
    test = load_preferences(cfg.dataset_name, "test")
    assert (len(train), len(test)) == (12, 4)
    # a saved config holds the description beside the mixture that makes it again
    saved = yaml.safe_load(yaml.safe_dump(config_dict(cfg)))
    assert saved["dataset_name"] == str(cfg.dataset_name) and saved["datasets"][0]["path"] == "repo"
    keys = ("dataset_name", "datasets", "seed", "test_split_size", "reward")
    again = RLTrainConfig(**{k: v for k, v in saved.items() if k in keys})
    assert again.dataset_name == cfg.dataset_name
    assert copy.deepcopy(cfg).dataset_name.parts == cfg.dataset_name.parts
    (sources / "saved.yaml").write_text(yaml.safe_dump({k: saved[k] for k in keys}))
    with caplog.at_level(logging.WARNING):  # the saved config again: its name is the mixture's
        assert load_config(RLTrainConfig, sources / "saved.yaml") == again
    assert "both datasets and dataset_name" not in caplog.text
    # a config made again from this one makes its mixture again, or refuses a stale one
    assert dataclasses.replace(again, seed=4).dataset_name.seed == 4
    with pytest.raises(ConfigError, match=r"dataset_name is the mixture of an earlier datasets"):
        dataclasses.replace(again, datasets=None)
    assert pickle.loads(pickle.dumps(cfg.dataset_name)).seed == 3
    # TRL's scripts read datasets over dataset_name: said, as they say it
    with caplog.at_level(logging.WARNING):
        cfg = load_config(RMTrainConfig, path, ["dataset_name=loose.jsonl", "dataset_config=x"])
    assert isinstance(cfg.dataset_name, Mixture)
    assert "both datasets and dataset_name (loose.jsonl) are given" in caplog.text
    assert "dataset_config='x' does nothing beside datasets" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # as in TRL, test_split_size splits a mixture only
        cfg = load_config(RMTrainConfig, None, ["test_split_size=0.1"])
    assert cfg.dataset_name == "gold" and "acts on a `datasets` mixture only" in caplog.text
    # on the command line, in YAML's flow style
    cfg = load_config(RMTrainConfig, None, ["datasets=[{path: loose.jsonl}]"])
    assert cfg.dataset_name == "datasets: loose.jsonl[train]"
    with pytest.raises(ConfigError, match=r"Did you mean 'data_files'"):
        load_config(RMTrainConfig, None, ["datasets=[{path: json, data_file: a.jsonl}]"])


def test_rm_train_on_a_mixture_holds_out_its_test_split(sources, tiny_model_dir):
    from distalign.rm.train import run

    cfg = load_config(RMTrainConfig, None, [
        f"model_name_or_path={tiny_model_dir}", "datasets=[{path: loose.jsonl}, {path: repo, "
        "data_dir: helpful-base}]", "test_split_size=4", "max_steps=1",
        "per_device_train_batch_size=4", "max_length=48", "report_to=none",
        f"output_dir={sources / 'rm'}",
    ])  # fmt: skip
    result = run(cfg)
    assert result["pairs"] == 4
    saved = yaml.safe_load((sources / "rm" / "config.yaml").read_text())
    assert saved["dataset_name"].startswith("datasets: loose.jsonl[train] + repo")


def test_a_source_name_with_brackets_is_printed_as_written():
    """A mixture's name, like a file's, holds square brackets that rich would take for markup."""
    from distalign.printing import console, print_metrics

    with console.capture() as captured:
        print_metrics("held-out (datasets: a.jsonl[train] + [bold]x.jsonl[test], test)", {"n": 1})
    assert "a.jsonl[train]+[bold]x.jsonl[test]" in "".join(captured.get().split())


def test_data_inspect_reads_a_training_configs_mixture(sources):
    from typer.testing import CliRunner

    from distalign.cli import app

    (sources / "trl.yaml").write_text(
        "datasets:\n  - path: loose.jsonl\n  - path: repo\n    data_dir: harmless-base\n"
        "test_split_size: 4\nlearning_rate: 1.0e-5\nmax_length: 64\n"
    )
    for split, pairs_read in (("train", 10), ("test", 4)):
        result = CliRunner().invoke(app, ["data", "inspect", "--config", "trl.yaml",
                                          "--dataset_split", split])  # fmt: skip
        assert result.exit_code == 0, str(result.exception)
        assert "datasets: loose.jsonl[train] + repo (harmless-base)[train]" in result.output
        assert f"pairs: {pairs_read}" in result.output


def test_a_look_at_the_first_rows_does_not_read_the_sources_again(sources, monkeypatch):
    import distalign.data.mixture as mixture_module

    reads = []
    part_rows = mixture_module.part_rows
    monkeypatch.setattr(mixture_module, "part_rows", lambda p: reads.append(p) or part_rows(p))
    mixture = Mixture(parse_parts([{"path": "loose.jsonl"}]), test_split_size=2)
    next(iter_source_rows(mixture, "train"))  # data inspect's look at the format
    assert len(texts(mixture)) == 8 and len(texts(mixture, "test")) == 2
    assert len(reads) == 1


def test_prompts_of_a_mixture_of_a_prompt_set_and_pairs_in_any_order(sources):
    """rl train on a prompt set mixed with pairs (TRL concatenates them, the missing columns
    null): each row read by its kind, whichever comes first after the held-out draw."""
    from distalign.data.prompts import load_prompts

    write_jsonl(sources / "asks.jsonl", [{"prompt": f"ask {i}"} for i in range(6)])
    for order in (["asks.jsonl", "loose.jsonl"], ["loose.jsonl", "asks.jsonl"]):
        parts = parse_parts([{"path": path} for path in order])
        assert {p[0]["content"] for p in load_prompts(Mixture(parts))} == {
            *(f"ask {i}" for i in range(6)), *(f"loose q{i}" for i in range(10))}  # fmt: skip
        for seed in range(4):
            mixture = Mixture(parts, test_split_size=4, seed=seed)
            seen = [p[0]["content"] for split in ("train", "test")
                    for p in load_prompts(mixture, split)]  # fmt: skip
            assert len(seen) == 16 and len(set(seen)) == 16
    # in the rows' order, the pairs' columns kept for reward functions, the counts said
    from distalign.data.load import LoadReport

    report = LoadReport(source="x")
    got = load_prompts(Mixture(parse_parts([{"path": "loose.jsonl", "split": "train[:2]"},
                                            {"path": "asks.jsonl", "split": "train[:2]"}])),
                       report=report)  # fmt: skip
    assert [p[0]["content"] for p in got] == ["loose q0", "loose q1", "ask 0", "ask 1"]
    assert got[0].columns["chosen"] == "loose good 0" and got[2].columns == {}
    assert (report.format, report.rows, report.kept) == ("explicit + prompt-only", 4, 4)


def test_held_out_data_that_a_mixtures_source_trained_on_is_said(sources, caplog):
    from distalign.hub import measured_on

    write_jsonl(sources / "b.jsonl", pairs("b", 4))
    for entry in ("{path: b.jsonl}", "{path: json, data_files: [a.jsonl, b.jsonl]}",
                  "{path: json, data_files: {train: b.jsonl}}"):  # fmt: skip
        cfg = load_config(RMTrainConfig, None, [f"datasets=[{{path: loose.jsonl}}, {entry}]",
                                                "eval_dataset_name=b.jsonl"])  # fmt: skip
        assert measured_on(cfg).startswith("Measured on the training pairs"), entry
    cfg = load_config(RMTrainConfig, None, ["datasets=[{path: loose.jsonl}]",
                                            "eval_dataset_name=b.jsonl"])  # fmt: skip
    assert measured_on(cfg) == "Measured on held-out pairs (`b.jsonl (local)`)"
    cfg = load_config(RMTrainConfig, None, ["datasets=[{path: loose.jsonl}]", "test_split_size=2"])
    assert "held-out" in measured_on(cfg)  # its own test split


def test_a_folder_whose_name_has_brackets_is_no_pattern(sources):
    """A downloaded repository's card patterns, and data_files, under a folder named with
    glob characters: its name is read as written."""
    folder = sources / "set[1]"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "a.jsonl", pairs("card", 2))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: data/*.jsonl\n---\n"
    )
    assert len(load_preferences(str(folder), "train")) == 2
    part = {"path": str(folder), "data_files": "data/a.jsonl"}
    assert texts(Mixture(parse_parts([part]))) == ["card q0", "card q1"]


def test_a_builder_datasets_reads_says_a_missing_file_as_missing(sources):
    with pytest.raises(DataSourceError, match=r"no file matches \['gone.txt'\] \(data_files"):
        texts(Mixture(parse_parts([{"path": "text", "data_files": "gone.txt"}])))


def test_a_remote_builder_entry_is_not_called_local_and_local_entries_are_guarded(sources):
    from distalign.hub import shown
    from distalign.tracking import _inputs

    mixture = Mixture(parse_parts([{"path": "json", "data_files": "hf://datasets/o/x/a.jsonl"},
                                   {"path": "json", "data_files": ["loose.jsonl"]},
                                   {"path": "repo", "data_dir": "harmless-base"}]))  # fmt: skip
    assert shown(mixture).startswith("json files (hf://datasets/o/x/a.jsonl) + json files (local)")
    cfg = RMTrainConfig(datasets=[dataclasses.asdict(p) for p in mixture.parts])
    # the paths an overwritten output_dir's check sees: each local file and folder named
    assert {"loose.jsonl", "repo", "repo/harmless-base"} <= set(_inputs(cfg))


def test_each_source_of_a_mixture_is_read_in_its_own_format(sources):
    """An HH file beside prompt/chosen/rejected pairs: one data set is read in its first
    row's format, a mixture's rows each in theirs."""
    hh = [{"chosen": f"\n\nHuman: hh {i}?\n\nAssistant: yes", "rejected": f"\n\nHuman: hh {i}?"
                     "\n\nAssistant: no"} for i in range(3)]  # fmt: skip
    write_jsonl(sources / "hh.jsonl", hh)
    report = LoadReport(source="x")
    got = load_preferences(Mixture(parse_parts([{"path": "hh.jsonl"}, {"path": "loose.jsonl"}])),
                           report=report)  # fmt: skip
    assert [p[0]["content"] for p in got["prompt"]][2:4] == ["hh 2?", "loose q0"]
    assert got["chosen"][:1] + got["chosen"][3:4] == ["yes", "loose good 0"]
    assert report.format == "hh + explicit" and len(got) == 13


def test_each_source_says_its_format_once_and_a_broken_row_stays_broken(sources, caplog):
    """A row whose prompt is null in a source of prompt/chosen/rejected pairs is a broken
    pair, not an implicit pair whose prompt is the replies' shared start; a prompt-only
    row among pairs is read as a pair of that source (and said), as in one data set."""
    from distalign.data.formats import PreferenceFormatError
    from distalign.data.prompts import load_prompts

    rows = [{"prompt": "Q1", "chosen": "The answer is 4.", "rejected": "The answer is 5."},
            {"prompt": None, "chosen": "The answer is 4.", "rejected": "The answer is 5."},
            {"prompt": "Q3", "chosen": "yes", "rejected": "no"}]  # fmt: skip
    write_jsonl(sources / "nulls.jsonl", rows)
    for source in ("nulls.jsonl", Mixture(parse_parts([{"path": "nulls.jsonl"}]))):
        with pytest.raises(PreferenceFormatError, match=r"nulls.jsonl:2: field 'prompt'"):
            load_preferences(source)
        report = LoadReport(source="x")
        got = load_preferences(source, skip_bad_rows=True, report=report)
        assert [p[0]["content"] for p in got["prompt"]] == ["Q1", "Q3"]
        assert (report.format, sum(report.skipped.values())) == ("explicit", 1)
    # one data set's rows are all read as its first row's kind
    write_jsonl(sources / "lost.jsonl", [*rows[:1], {"prompt": "x"}])
    with pytest.raises(PreferenceFormatError, match=r"lost.jsonl:2"):
        load_prompts("lost.jsonl")
    write_jsonl(sources / "asks.jsonl", [{"prompt": "a"}, {"prompt": "b", "chosen": "y"},
                                         {"prompt": "c"}])  # fmt: skip
    assert [p[0]["content"] for p in load_prompts("asks.jsonl")] == ["a", "b", "c"]
    # a source of pairs whose every row is skipped beside a prompt set: no "unknown" format
    write_jsonl(sources / "bad.jsonl", [{"chosen": 3, "rejected": 4}])
    report = LoadReport(source="x")
    mixture = Mixture(parse_parts([{"path": "asks.jsonl"}, {"path": "bad.jsonl"}]))
    load_prompts(mixture, skip_bad_rows=True, report=report)
    assert report.format == "prompt-only"
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a mixture reads every row: streaming is said
        RMTrainConfig(datasets=[{"path": "asks.jsonl"}], dataset_streaming=True)
    assert "dataset_streaming does nothing beside datasets" in caplog.text
