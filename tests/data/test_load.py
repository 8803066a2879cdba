"""Loaders for every source type and format, and their errors on malformed input."""

from __future__ import annotations

import gzip
import json
import logging
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distalign.data import DataSourceError, LoadReport, PreferenceFormatError, load_preferences
from distalign.data.load import (
    evaluates_on_training_data,
    read_prompt_replies,
    warn_if_evaluating_on_training_data,
)
from tests.conftest import write_jsonl

EXPLICIT = [
    {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Quito."},
]
USER = {"role": "user", "content": "Name a fruit."}
CONVERSATIONAL = [  # TRL conversational: prompt and replies as messages
    {
        "prompt": [USER],
        "chosen": [{"role": "assistant", "content": "An apple."}],
        "rejected": [{"role": "assistant", "content": "A chair."}],
    }
]
HELPSTEER = [  # HelpSteer2-binarized: string prompt, replies repeat the user turn, ratings
    {
        "prompt": "Name a fruit.",
        "chosen": [USER, {"role": "assistant", "content": "A pear."}],
        "rejected": [USER, {"role": "assistant", "content": "Rocks."}],
        "chosen_rating": 3.5,
        "rejected_rating": 1.25,
    }
]
IMPLICIT = [
    {
        "chosen": [USER, {"role": "assistant", "content": "A plum."}],
        "rejected": [USER, {"role": "assistant", "content": "Gravel."}],
    }
]
HH = [
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: A fig.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: No.",
    }
]


def test_explicit_strings(tmp_path):
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", EXPLICIT)))
    assert len(ds) == 2
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("4.", "5.")
    assert ds[1]["source_row"] == 1
    assert ds[0]["chosen_score"] is None


def test_conversational_messages(tmp_path):
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", CONVERSATIONAL)))
    assert ds[0]["prompt"] == [USER]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("An apple.", "A chair.")


def test_helpsteer_shape_with_ratings(tmp_path):
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", HELPSTEER)), report=report)
    assert report.format == "explicit"
    assert ds[0]["prompt"] == [USER]
    assert ds[0]["chosen"] == "A pear."
    assert (ds[0]["chosen_score"], ds[0]["rejected_score"]) == (3.5, 1.25)


def test_implicit_prompt(tmp_path):
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", IMPLICIT)), report=report)
    assert report.format == "implicit"
    assert ds[0]["prompt"] == [USER]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("A plum.", "Gravel.")


def test_hh_multi_turn(tmp_path):
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", HH)), report=report)
    assert report.format == "hh"
    assert ds[0]["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a fruit."},
    ]
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("A fig.", "No.")


def test_forced_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", HH)
    with pytest.raises(PreferenceFormatError, match="prompt"):
        load_preferences(str(path), format="explicit")


def _write(path, rows):
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    if name.endswith(".parquet"):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        with opener(path, "wb") as f:
            f.write(buf.getvalue().to_pybytes())
        return
    with opener(path, "wt", encoding="utf-8") as f:
        if name.endswith((".jsonl", ".ndjson")):
            f.writelines(json.dumps(r) + "\n" for r in rows)
        elif name.endswith(".json"):
            json.dump(rows, f)
        elif name.endswith((".csv", ".tsv")):
            sep = "," if name.endswith(".csv") else "\t"
            f.write(sep.join(["prompt", "chosen", "rejected", "chosen_score", "rejected_score"]))
            for r in rows:
                f.write(sep.join(["\n" + f'"{r["prompt"]}"', f'"{r["chosen"]}"',
                                  f'"{r["rejected"]}"', "2.5", "0.5"]))  # fmt: skip
            f.write("\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", ".tsv", ".ndjson"])
@pytest.mark.parametrize("gz", ["", ".gz"])
def test_every_file_type(tmp_path, suffix, gz):
    path = tmp_path / f"pairs{suffix}{gz}"
    _write(path, EXPLICIT)
    ds = load_preferences(str(path))
    assert len(ds) == 2
    assert ds[1]["chosen"] == "Lima."
    if suffix in (".csv", ".tsv"):
        assert ds[0]["chosen_score"] == 2.5


def test_csv_cells_with_message_lists(tmp_path):
    path = tmp_path / "conv.csv"
    with open(path, "w", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["chosen", "rejected"])
        w.writerow([json.dumps(IMPLICIT[0]["chosen"]), json.dumps(IMPLICIT[0]["rejected"])])
    assert load_preferences(str(path))[0]["chosen"] == "A plum."
    # a reply that reads as a JSON list of numbers or strings is text
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"], ["List?", "[1, 2, 3]", '["a"]']])
    row = load_preferences(str(path))[0]
    assert (row["chosen"], row["rejected"]) == ("[1, 2, 3]", '["a"]')
    # pandas' to_csv of UltraFeedback writes the Python form of the message lists
    import pandas as pd

    pd.DataFrame([IMPLICIT[0]]).to_csv(path, index=False)
    assert "[{'role'" in path.read_text()
    assert load_preferences(str(path))[0]["chosen"] == "A plum."
    # and datasets' to_csv (numpy arrays, printed without commas between the messages), a
    # message that holds "} {" itself read as written
    row = {**IMPLICIT[0], "chosen": [USER, {"role": "assistant", "content": "A plum.} {x}"}]}
    datasets.Dataset.from_list([row]).to_csv(path, index=False)
    assert "'}\n {'" in path.read_text()
    assert load_preferences(str(path))[0]["chosen"] == "A plum.} {x}"
    # a numpy-printed message list that does not read back (cut short, or a message whose text
    # would take a comma) is an error naming the cell; Python code in a reply stays text
    cut = "[{'role': 'user', 'content': 'x'}\n {'role': 'assistant', 'content': 'y'} ...]"
    tricky = ("[{'role': 'user', 'content': \"a} {'role': 1\"}\n"
              " {'role': 'assistant', 'content': 'y'}]")  # fmt: skip
    code = "[{'role': r, 'content': c} for r, c in turns]"
    for cell in (cut, tricky):
        pd.DataFrame([{"chosen": cell, "rejected": "b"}]).to_csv(path, index=False)
        with pytest.raises(PreferenceFormatError, match=r"conv\.csv:\d+: field 'chosen': a list"):
            load_preferences(str(path))
    for cell in (code, "[{'role': 'user', 'content': 'x', [1]: 2}]", "[" * 3000 + "]" * 3000):
        pd.DataFrame([{"prompt": "p", "chosen": cell, "rejected": "b"}]).to_csv(path, index=False)
        assert load_preferences(str(path))[0]["chosen"] == cell
    # ShareGPT written so: the conversation a list, each reply one message, in Python's form
    # (pandas and datasets alike) or as JSON; an object that is no message stays text
    sharegpt = {"conversations": [{"from": "human", "value": "Fruit?"}],
                "chosen": {"from": "gpt", "value": "A plum."},
                "rejected": {"from": "gpt", "value": "No."}}  # fmt: skip
    for write in (pd.DataFrame([sharegpt]).to_csv,
                  datasets.Dataset.from_list([sharegpt]).to_csv):  # fmt: skip
        write(path, index=False)
        assert "{'from': 'gpt'" in path.read_text()
        row = load_preferences(str(path))[0]
        assert (row["prompt"], row["chosen"], row["rejected"]) == (
            [{"role": "user", "content": "Fruit?"}], "A plum.", "No.")  # fmt: skip
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"],
                                 ["Fruit?", json.dumps({"role": "assistant", "content": "A plum."}),
                                  '{"from": 1}']])  # fmt: skip
    row = load_preferences(str(path))[0]
    assert (row["chosen"], row["rejected"]) == ("A plum.", '{"from": 1}')
    # a reply whose text prints a user's message is that text
    printed = "{'role': 'user', 'content': 'hm'}"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"], ["Fruit?", "A plum.", printed]])
    assert load_preferences(str(path))[0]["rejected"] == printed
    # and a line number locates a CSV row, as in a JSONL file
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"], ["a", "b", "c"], ["a"]])
    with pytest.raises(PreferenceFormatError, match=r"conv\.csv:3: field 'chosen': null"):
        load_preferences(str(path))


def test_a_folder_written_by_save_to_disk_is_read_as_load_from_disk_gives_it(tmp_path):
    datasets.Dataset.from_list(EXPLICIT).save_to_disk(tmp_path / "one")
    splits = {"train": EXPLICIT, "test": EXPLICIT[:1]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    ).save_to_disk(tmp_path / "dict")
    assert len(load_preferences(str(tmp_path / "one"))) == len(EXPLICIT)
    # one Dataset has no splits: its "test" is its training rows, which is said
    assert evaluates_on_training_data(str(tmp_path / "one"), None, "train", "test")
    assert not evaluates_on_training_data(str(tmp_path / "dict"), None, "train", "test")
    assert len(load_preferences(str(tmp_path / "dict"))) == len(EXPLICIT)
    assert len(load_preferences(str(tmp_path / "dict"), split="test")) == 1
    with pytest.raises(DataSourceError, match=r"dict: no split 'validation' \(it has \['train', "
                       r"'test'\]\); name one of them as the split"):  # fmt: skip
        load_preferences(str(tmp_path / "dict"), split="validation")
    bad = [EXPLICIT[0], {**EXPLICIT[0], "chosen": None}]
    datasets.Dataset.from_list(bad).save_to_disk(tmp_path / "bad")
    with pytest.raises(PreferenceFormatError, match=r"bad row 1: field 'chosen': null"):
        load_preferences(str(tmp_path / "bad"))


def test_folder_read_by_split(tmp_path):
    _write(tmp_path / "train.jsonl.gz", EXPLICIT)
    _write(tmp_path / "test.jsonl", EXPLICIT[:1])
    assert len(load_preferences(str(tmp_path))) == 2
    assert len(load_preferences(str(tmp_path), split="test")) == 1
    with pytest.raises(DataSourceError, match="no file for split 'validation'"):
        load_preferences(str(tmp_path), split="validation")


def test_hub_id_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(HELPSTEER)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_preferences("esfrankel17/HelpSteer2_binarized", split="average_rating_split")
    assert calls == [("esfrankel17/HelpSteer2_binarized", "average_rating_split")]
    assert ds[0]["chosen_score"] == 3.5


# --- malformed input: the error names file, row and field --------------------------------


@pytest.mark.parametrize(
    ("row", "field", "expected"),
    [
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "q", "chosen": None, "rejected": "b"}, "chosen", "null: expected a reply"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "expected a string or"),
        (
            {"prompt": "q", "chosen": [{"role": "assistant", "content": None}], "rejected": "b"},
            "chosen[0].content",
            "expected a string",
        ),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "assistant", "content": "", "tool_calls": {}}],
                "rejected": "b",
            },
            "chosen[0].tool_calls",
            "expected a list of calls",
        ),
        (
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}]}],
                "chosen": "a",
                "rejected": "b",
            },
            "prompt[0].content",
            "content parts",
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
            "prompt[0].role",
            "expected one of",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
            "chosen",
            "assistant reply",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "high"},
            "margin",
            "number",
        ),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, row, field, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [EXPLICIT[0], row])
    with pytest.raises(PreferenceFormatError) as info:
        load_preferences(str(path))
    message = str(info.value)
    assert f"{path}:2" in message
    assert f"field {field!r}" in message
    assert expected in message


def test_broken_json_line_is_named(tmp_path):
    path = write_jsonl(
        tmp_path / "broken.jsonl", [EXPLICIT[0], '{"prompt": "q", "chosen": ', EXPLICIT[1]]
    )
    # the column is where the line stops short, not the next line's first
    with pytest.raises(PreferenceFormatError, match=r"broken\.jsonl:2: broken JSON line .* 27\)"):
        load_preferences(str(path))


def test_skip_bad_rows_counts_reasons(tmp_path):
    rows = [EXPLICIT[0], "{not json", {"prompt": None, "chosen": "a", "rejected": "b"}, EXPLICIT[1]]
    report = LoadReport(source="")
    ds = load_preferences(
        str(write_jsonl(tmp_path / "d.jsonl", rows)), skip_bad_rows=True, report=report
    )
    assert len(ds) == 2
    assert report.rows == 4 and report.kept == 2
    assert sum(report.skipped.values()) == 2
    assert "broken JSON line" in report.skipped
    assert any("d.jsonl:3" in e for e in report.examples)
    # rows broken alike count together, whatever value each got; the examples keep it
    alike = [{"prompt": "q", "chosen": i, "rejected": "b"} for i in range(4)]
    role = [{"prompt": "q", "chosen": [{"role": "bot", "content": "x"}], "rejected": "b"}]
    report = LoadReport(source="")
    load_preferences(str(write_jsonl(tmp_path / "e.jsonl", [*alike, *role, EXPLICIT[0]])),
                     skip_bad_rows=True, report=report)  # fmt: skip
    expected = "field 'chosen': expected a string or a non-empty list of messages"
    assert report.skipped[expected] == 4 and len(report.skipped) == 2
    assert any(k.startswith("field 'chosen[i].role': expected one of ('system'")
               for k in report.skipped)  # fmt: skip
    from distalign.data.load import _reason_key  # a hint in nested parentheses goes whole

    hint = ("columns ['q'] lack 'chosen' (stack-exchange-paired's shape: rename response_j (the "
            "preferred answer) to chosen)")  # fmt: skip
    assert _reason_key(hint) == "columns ['q'] lack 'chosen'"
    assert _reason_key("parts other than text (images) are not supported; got [1]") == (
        "parts other than text (images) are not supported")  # fmt: skip
    assert "got int 3" in report.examples[3]


def test_a_prompt_under_another_name_is_hinted_when_the_prompts_come_out_empty(tmp_path, caplog):
    rows = [{"system": "Be kind.", "question": "Why?", "chosen": "So.", "rejected": "No."}]
    with caplog.at_level(logging.WARNING):
        ds = load_preferences(str(write_jsonl(tmp_path / "orca.jsonl", rows)))
    assert ds[0]["prompt"] == [{"role": "user", "content": ""}]  # as TRL reads it: kept
    assert "the rows' `question` column is not read as the prompt (rename it to `prompt`?)" in (
        caplog.text)  # fmt: skip
    caplog.clear()  # Alpaca's input is read (with its instruction): nothing to hint
    alpaca = [{"instruction": "Sum up", "input": "Long text", "chosen": "A", "rejected": "B"},
              {"instruction": "", "input": "", "chosen": "C", "rejected": "D"}]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        load_preferences(str(write_jsonl(tmp_path / "alpaca.jsonl", alpaca)))
    assert "not read as the prompt" not in caplog.text


def test_identical_pairs_are_counted(tmp_path, caplog):
    rows = [*EXPLICIT, {"prompt": "q", "chosen": "same", "rejected": "same"}]
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)), report=report)
    assert len(ds) == 2 and report.identical == 1
    assert "identical chosen/rejected: 1" in caplog.text
    kept = load_preferences(str(tmp_path / "d.jsonl"), drop_identical=False)
    assert len(kept) == 3


def test_bad_gzip(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataSourceError, match="not a valid gzip"):
        load_preferences(str(path))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataSourceError, match="no such file"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataSourceError, match="unknown file type"):
        load_preferences(str(tmp_path / "x.txt"))


def test_hh_without_turn_markers(tmp_path):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "plain text"}]
    with pytest.raises(PreferenceFormatError, match="field 'rejected'"):
        load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_implicit_with_different_prompts(tmp_path):
    other = {"role": "user", "content": "Name a colour."}
    rows = [
        {
            "chosen": IMPLICIT[0]["chosen"],
            "rejected": [other, {"role": "assistant", "content": "Red"}],
        }
    ]
    with pytest.raises(PreferenceFormatError, match="share every turn"):
        load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)))


# --- files saved on Windows, empty sources, hub config and revision ----------------------


def _windows_bytes(name: str, encoding: str = "utf-8-sig") -> bytes:
    """EXPLICIT as a Windows editor saves it: byte-order mark and CRLF line ends."""
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in EXPLICIT)
    elif name.endswith(".json"):
        text = json.dumps(EXPLICIT, indent=2).replace("\n", "\r\n") + "\r\n"
    else:  # .csv, with a cell that spans two lines
        text = 'prompt,chosen,rejected\r\n"What is 2+2?","4.\r\nFour.","5."\r\n'
        text += '"Capital of Peru?","Lima.","Quito."\r\n'
    return text.encode(encoding)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
@pytest.mark.parametrize("gz", ["", ".gz"])
def test_bom_and_crlf(tmp_path, suffix, gz):
    path = tmp_path / f"windows{suffix}{gz}"
    data = _windows_bytes(suffix)
    path.write_bytes(gzip.compress(data) if gz else data)
    ds = load_preferences(str(path))
    assert len(ds) == 2
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert ds[0]["chosen"] == ("4.\nFour." if suffix == ".csv" else "4.")
    assert ds[1]["rejected"] == "Quito."


def test_utf16_as_powershell_writes_it(tmp_path):
    path = tmp_path / "ps.jsonl"
    path.write_bytes(_windows_bytes(".jsonl", "utf-16"))  # with its byte-order mark
    assert load_preferences(str(path))[1]["chosen"] == "Lima."


def test_json_lines_saved_as_json(tmp_path):
    path = write_jsonl(tmp_path / "pairs.json", EXPLICIT)
    assert len(load_preferences(str(path))) == 2


def test_not_utf8(tmp_path):
    texts = {
        "latin1.jsonl": '{"prompt": "Café?", "chosen": "oui", "rejected": "non"}\n',
        "latin1.csv": 'prompt,chosen,rejected\n"Café?","oui","non"\n',
    }
    for name, text in texts.items():
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(DataSourceError, match=f"{name}: not UTF-8 text"):
            load_preferences(str(path))


def _zero_row_parquet() -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), buf)
    return buf.getvalue().to_pybytes()


@pytest.mark.parametrize(
    ("name", "content", "note"),
    [
        ("empty.jsonl", b"", " (empty file)"),
        ("blank.jsonl", b"\r\n\r\n", ""),
        ("bom.jsonl", b"\xef\xbb\xbf", ""),
        ("empty.json", b"", " (empty file)"),
        ("list.json", b"[]", ""),
        ("data.json", b'{"data": []}', ""),
        ("empty.csv", b"", " (empty file)"),
        ("header.csv", b"prompt,chosen,rejected\r\n", ""),
        ("empty.parquet", b"", " (empty file)"),
        ("zero.parquet", _zero_row_parquet(), ""),
        ("empty.jsonl.gz", gzip.compress(b""), ""),
    ],
)
def test_source_without_rows_is_one_line_naming_the_file(tmp_path, name, content, note):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as info:
        load_preferences(str(path))
    assert str(info.value) == f"{path}: no rows{note}"


def test_empty_dataset_object():
    with pytest.raises(DataSourceError, match="dataset: no rows"):
        load_preferences(datasets.Dataset.from_list([]))


def test_every_row_skipped_gives_an_empty_dataset(tmp_path):
    report = LoadReport(source="")
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"prompt": "q", "chosen": "a"}])
    ds = load_preferences(str(path), skip_bad_rows=True, report=report)
    assert len(ds) == 0 and "chosen_score" in ds.column_names
    assert sum(report.skipped.values()) == 2


def test_hub_config_name_and_revision_reach_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(HELPSTEER)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_preferences("org/pairs", "test", name="helpful", revision="abc123")
    assert calls == [("org/pairs", {"name": "helpful", "split": "test", "revision": "abc123"})]
    assert ds[0]["chosen"] == "A pear."


def test_a_streamed_hub_set_is_read_no_further_than_its_rows_are_needed(monkeypatch, tmp_path):
    """TRL's dataset_streaming: load_dataset(streaming=True), and rm train's
    max_train_samples pairs read from the stream, not the whole set downloaded first."""
    from distalign.data.load import DataSourceError
    from distalign.rl.config import RLTrainConfig
    from distalign.rm.config import RMTrainConfig
    from distalign.rm.data import prepare_pairs

    read, calls = [], []

    def rows():
        for i in range(1000):
            read.append(i)
            yield {"prompt": f"q{i}", "chosen": "a good reply", "rejected": "bad"}

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("distalign.data.load.offline_if_unreachable", lambda: None)
    ds = load_preferences("org/big", "train", streaming=True, limit=3)
    assert len(ds) == 3 and len(read) < 50  # what the stream had buffered, not 1000
    assert calls == [("org/big", {"split": "train", "streaming": True})]
    cfg = RMTrainConfig(dataset_name="org/big", dataset_streaming=True, max_train_samples=5)
    from distalign.models.load import load_tokenizer

    hub = {"name": None, "revision": None, "streaming": True}
    pairs = prepare_pairs(cfg, load_tokenizer("smollm2-135m-instruct"), "org/big", "train", 5, hub)
    assert len(pairs) == 5 and calls[-1][1]["streaming"]
    assert RLTrainConfig(dataset_streaming=True, reward="m:f").dataset_streaming
    with pytest.raises(DataSourceError, match="a streamed data set is not sliced"):
        load_preferences("org/big", "train[:10]", streaming=True)
    load_preferences("org/big", "train+test", streaming=True, limit=2)  # datasets streams it
    assert calls[-1] == ("org/big", {"split": "train+test", "streaming": True})
    # a stream's own wording of a missing split: the run falls back to its training split
    from distalign.data.files import MissingSplitError

    def no_test(path, **kwargs):
        raise ValueError("Bad split: test. Available splits: ['train']")

    monkeypatch.setattr(datasets, "load_dataset", no_test)
    with pytest.raises(MissingSplitError, match=r"org/big: no split 'test' \(it has \['train'\]"):
        load_preferences("org/big", "test", streaming=True)

    def cut():  # the connection lost while the stream is read: one line, naming the place
        yield {"prompt": "q", "chosen": "a", "rejected": "b"}
        raise ConnectionError("Connection reset by peer")

    stream = datasets.IterableDataset.from_generator(cut)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: stream)
    with pytest.raises(DataSourceError, match=r"org/big\[train\]: reading stopped after row 0 "
                       r"\(Connection reset by peer\)"):  # fmt: skip
        load_preferences("org/big", "train", streaming=True)


def test_hub_errors_are_one_line(monkeypatch):
    def fake_load_dataset(path, **kwargs):
        raise ValueError("BuilderConfig 'nope' not found.\nAvailable: ['default']")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataSourceError) as info:
        load_preferences("org/pairs", name="nope")
    assert (
        str(info.value) == "org/pairs: cannot load from the hub (BuilderConfig 'nope' not found.)"
    )
    # offline, a relative path mistyped reads as a hub id: where it was looked for is said
    monkeypatch.setattr("distalign.data.load.offline_if_unreachable", lambda: "no network")
    with pytest.raises(DataSourceError, match=r"no network \(nor is it a local path from /"):
        load_preferences("data/hh-rlhf/helpful-base")  # two slashes: no hub id
    with pytest.raises(DataSourceError, match=r"no network$"):
        load_preferences("org/pairs")  # a hub id, as it looks


def test_a_hub_split_that_is_not_there_is_said_as_such(monkeypatch):
    """Loaded (from the hub or its cache), without the split: not "cannot load from the hub"."""

    def fake_load_dataset(path, **kwargs):
        raise ValueError("Unknown split \"test\". Should be one of ['train'].")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataSourceError) as info:
        load_preferences("org/pairs", split="test")
    assert str(info.value).startswith(
        "org/pairs: no split 'test' (it has ['train']); name one of them as the split"
    )


def test_a_split_the_gold_benchmark_has_not_names_its_splits():
    with pytest.raises(DataSourceError, match=r"^gold: no split 'validation'; the benchmark has "
                                              r"train and test$"):  # fmt: skip
        load_preferences("gold", split="validation")


def test_hub_split_without_rows(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: datasets.Dataset.from_list([]))
    with pytest.raises(DataSourceError, match=r"org/pairs\[train\]: no rows"):
        load_preferences("org/pairs")


def test_config_name_or_revision_of_a_local_source(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", EXPLICIT)
    for options in ({"name": "x"}, {"revision": "main"}):
        with pytest.raises(DataSourceError, match="hub datasets only"):
            load_preferences(str(path), **options)


def test_held_out_is_the_training_data_only_for_a_source_without_splits(tmp_path):
    file = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert evaluates_on_training_data(str(file))
    assert evaluates_on_training_data(str(file), str(file))
    assert evaluates_on_training_data(ds, ds)
    assert not evaluates_on_training_data(str(file), str(other))
    assert not evaluates_on_training_data(ds, datasets.Dataset.from_list(ds.to_list()))
    assert not evaluates_on_training_data("gold")  # splits of its own
    assert not evaluates_on_training_data(str(tmp_path))  # a folder: train.* and test.* files
    assert not evaluates_on_training_data("someone/hub-pairs")
    assert not evaluates_on_training_data("someone/hub-pairs", None, "train", "test")
    assert evaluates_on_training_data("someone/hub-pairs", None, "train", "train")
    assert evaluates_on_training_data(str(file), str(tmp_path / "." / "pairs.jsonl"))


def test_a_split_named_for_one_file_is_said_to_read_the_whole_file(tmp_path, caplog):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    file = write_jsonl(tmp_path / "pairs.jsonl", rows)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    for source in (str(file), str(saved)):
        with caplog.at_level(logging.WARNING, logger="distalign.data.load"):
            caplog.clear()
            assert len(load_preferences(source, "test_prefs")) == 1  # read whole, as before
            load_preferences(source, "test_prefs")  # said once per source and split
            load_preferences(source, "train")  # the defaults are no choice to speak of
            load_preferences(source, "test")
        said = [r.getMessage() for r in caplog.records]
        assert said == [f"{source} is one set of rows without splits: read whole for split "
                        "'test_prefs'"]  # fmt: skip


def test_split_specs_slice_local_sources_as_datasets_slices_the_hubs(tmp_path):
    """train[:90%] / train[90%:] (as configs/rm_scalar_helpsteer2.yaml names a hub data set's
    splits) read a local file, a downloaded folder, a saved or in-memory data set alike, with
    datasets' rounding; the two parts are held out from each other."""
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)]
    file = write_jsonl(tmp_path / "pairs.jsonl", rows)
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    in_memory = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    def prompts(source, split):
        return [p[0]["content"] for p in load_preferences(source, split)["prompt"]]

    for source in (str(file), str(folder), str(saved), in_memory):
        assert prompts(source, "train[:90%]") == [f"p{i}" for i in range(9)]
        assert prompts(source, "train[90%:]") == ["p9"]
        assert prompts(source, "train[-3:]+train[:1]") == ["p7", "p8", "p9", "p0"]
    with pytest.raises(DataSourceError, match=r"split 'train\[::2\]' is not datasets' split"):
        load_preferences(str(file), "train[::2]")
    with pytest.raises(DataSourceError, match=r"split 'train\[:0\]' holds no rows"):
        load_preferences(str(file), "train[:0]")
    with pytest.raises(DataSourceError, match="no file for split 'test'"):
        load_preferences(str(folder), "test[:50%]")
    with pytest.raises(DataSourceError, match=r"split 'train\+test' joins \['test', 'train'\]"):
        load_preferences(str(file), "train+test")  # one file under two names: twice the rows
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    with pytest.raises(DataSourceError, match="a streamed data set is not sliced"):
        load_preferences(stream, "train[:2]")
    # held out from each other, or not: ranges of one kind compare exactly; mixed kinds, or
    # counted from the end, depend on sizes not known before reading: taken as shared
    assert not evaluates_on_training_data(str(file), None, "train[:90%]", "train[90%:]")
    assert not evaluates_on_training_data(str(file), None, "train[:9]", "train[9:]")
    assert evaluates_on_training_data(str(file), None, "train[:60%]", "train[50%:]")
    assert evaluates_on_training_data(str(file), None, "train[:9]", "train[80%:]")
    assert evaluates_on_training_data(str(file), None, "train[-2:]", "train[:8]")
    assert not evaluates_on_training_data(str(folder), None, "train[:90%]", "held-out")
    assert evaluates_on_training_data(str(file), None, "train", "test[:10%]")  # one set
    assert not evaluates_on_training_data("org/d", None, "a[:90%]", "a[90%:]")
    assert evaluates_on_training_data("org/d", None, "train", "train[:10%]")
    assert not evaluates_on_training_data("org/d", None, "train[:10%]", "test")


def test_split_specs_of_the_gold_benchmark_keep_its_truth():
    from distalign.data.prompts import load_prompts
    from distalign.gold.truth import pair_replies

    assert len(load_prompts("gold", "train[:50%]")) == len(load_prompts("gold", "train")) // 2
    with pytest.raises(DataSourceError, match="gold: no split 'validation'"):
        load_prompts("gold", "validation")  # it gave no prompts, without a word
    part = load_preferences("gold", "test[10%:20%]")
    whole = load_preferences("gold", "test")
    tenth = len(whole) // 10
    assert part["chosen"] == whole["chosen"][tenth : 2 * tenth]
    truth = pair_replies("gold", "test[10%:20%]", part["source_row"])
    full = pair_replies("gold", "test", list(range(tenth, 2 * tenth)))
    assert truth is not None and np.array_equal(truth.chosen, full.chosen)
    assert np.array_equal(truth.annotator_rewards, full.annotator_rewards)


def test_prompt_reply_files_take_text_or_conversational_completions(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    rows = [
        {"prompt": "Hi", "reply": "Hello."},
        {"prompt": user, "completion": [{"role": "assistant", "content": "Hey."}]},  # TRL
        {"prompt": user, "response": [*user, {"role": "assistant", "content": "Yo."}]},
        {"messages": [*user, {"role": "assistant", "content": "Hiya."}]},  # TRL's LM rows
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi!"}]},
        {"system": "Be brief.",  # ShareGPT's system column: its first turn, as rm train reads
         "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes."}]},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "replies.jsonl", rows)
    _, prompts, replies = read_prompt_replies(str(path))
    system = [{"role": "system", "content": "Be brief."}]
    assert prompts == [user] * 5 + [system + user]
    assert replies == ["Hello.", "Hey.", "Yo.", "Hiya.", "Hi!", "Yes."]
    sft = [*user, {"role": "assistant", "content": "Hello there."}]  # H4's SFT rows
    h4 = write_jsonl(tmp_path / "h4.jsonl", [{"prompt": "Hi", "messages": sft, "prompt_id": "1"}])
    assert read_prompt_replies(str(h4))[1:] == ([user], ["Hello there."])
    pair = {
        "prompt": "Hi",
        "chosen": sft,
        "rejected": [*user, {"role": "assistant", "content": "No."}],
        "messages": sft,
    }  # H4's pairs: messages is the chosen one
    with pytest.raises(PreferenceFormatError, match=r"a preference pair .*rm eval"):
        read_prompt_replies(str(write_jsonl(tmp_path / "prefs.jsonl", [pair])))
    with pytest.raises(PreferenceFormatError, match="expected an object, got str"):
        read_prompt_replies(str(write_jsonl(tmp_path / "text.jsonl", ['"a reply alone"'])))
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"messages": []}])
    with pytest.raises(PreferenceFormatError, match="field 'messages': expected a string or"):
        read_prompt_replies(str(empty))  # said as the conversation's fault
    for messages, why in (
        ([{"role": "assistant", "content": "Alone."}], "no turns before the reply"),
        ([*user, *user], "expected the last message to be an assistant reply"),
    ):
        lone = write_jsonl(tmp_path / "lone.jsonl", [{"messages": messages}])
        with pytest.raises(PreferenceFormatError, match=why):
            read_prompt_replies(str(lone))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi", "answer": "Hello."}])
    with pytest.raises(PreferenceFormatError, match="missing") as info:
        read_prompt_replies(str(bad))
    assert info.value.field == "reply" and f"{bad}:1" in str(info.value)
    other = [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "x"}]
    mismatch = write_jsonl(tmp_path / "mismatch.jsonl", [{"prompt": "Hi", "completion": other}])
    with pytest.raises(PreferenceFormatError, match="repeat the prompt"):
        read_prompt_replies(str(mismatch))
    # a completion of several turns is scored whole, as TRL renders prompt + completion
    turns = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
             {"role": "tool", "content": "1"},
             {"role": "assistant", "content": "One."}]  # fmt: skip
    several = write_jsonl(tmp_path / "several.jsonl", [{"prompt": user, "completion": turns}])
    assert read_prompt_replies(str(several))[2] == [turns]


def test_prompt_reply_rows_that_are_malformed_can_be_skipped_and_are_counted(tmp_path, caplog):
    rows = [{"prompt": "Hi", "reply": "Hello."}, {"prompt": "Hi", "reply": None},
            {"prompt": "Hey"}, {"prompt": "Yo", "response": "Yo."}]  # fmt: skip
    path = write_jsonl(tmp_path / "replies.jsonl", rows)
    with pytest.raises(PreferenceFormatError, match="null: expected the reply") as info:
        read_prompt_replies(str(path))
    assert f"{path}:2" in str(info.value) and info.value.field == "reply"
    report = LoadReport(source=str(path))
    with caplog.at_level(logging.WARNING, logger="distalign.data.load"):
        kept, _, replies = read_prompt_replies(str(path), report, skip_bad_rows=True)
    assert replies == ["Hello.", "Yo."] and kept == [rows[0], rows[3]]
    assert (report.rows, report.kept, sum(report.skipped.values())) == (4, 2, 2)
    assert f"{path}: 2 of 4 rows skipped as malformed: 1 × field 'reply': null: expected the " \
        "reply; 1 × field 'reply': missing: give one of reply, response, completion or a " \
        "conversation" in caplog.text  # fmt: skip
    nothing = write_jsonl(tmp_path / "nothing.jsonl", rows[1:3])
    with pytest.raises(DataSourceError, match="every row was skipped as malformed"):
        read_prompt_replies(str(nothing), skip_bad_rows=True)


def test_the_training_data_as_held_out_is_said(tmp_path, caplog):
    file = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])

    def cfg(name, split="test"):
        return SimpleNamespace(
            dataset_name=name,
            eval_dataset_name=None,
            dataset_train_split="train",
            dataset_test_split=split,
        )

    with caplog.at_level(logging.WARNING):
        warn_if_evaluating_on_training_data(cfg("gold"))
        assert not caplog.text
        warn_if_evaluating_on_training_data(cfg(str(file)))
    assert f"measured on the training data ({file})" in caplog.text
    assert "slice the file: dataset_train_split=train[:90%] dataset_test_split=train[90%:]" in (
        caplog.text)  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_if_evaluating_on_training_data(cfg("gold", split="train"))
    assert "measured on the training data (gold)" in caplog.text


def test_a_dataset_dict_from_load_dataset_gives_its_split():
    rows = [{"prompt": "a?", "chosen": "yes", "rejected": "no"}]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 2),
                                 "test": datasets.Dataset.from_list(rows)})  # fmt: skip
    assert len(load_preferences(both, "train")) == 2
    with pytest.raises(DataSourceError, match="no split 'valid'"):
        load_preferences(both, "valid")
    # its splits are train and test: no warning that held-out figures are training data
    assert not evaluates_on_training_data(both, None, "train", "test")
    assert evaluates_on_training_data(both, None, "train", "train")


def test_a_streamed_dataset_reads_as_it_comes():
    from distalign.data.prompts import load_prompts

    rows = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(4)]
    streamed = datasets.Dataset.from_list(rows).to_iterable_dataset()
    assert len(load_preferences(streamed)) == 4
    assert len(load_preferences(streamed, limit=2)) == 2
    both = datasets.IterableDatasetDict({"train": streamed})
    assert len(load_preferences(both, "train")) == 4
    assert len(load_prompts(streamed)) == 4


def test_a_downloaded_hub_repository_folder_reads_its_split_shards(tmp_path):
    """The layout `snapshot_download` or a git clone of a data set repository gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    rows = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(5)]
    for name, part in (("train-00000-of-00002", rows[:3]), ("train-00001-of-00002", rows[3:]),
                       ("test-00000-of-00001", rows[:1])):  # fmt: skip
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "data" / f"{name}.parquet")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    train = load_preferences(str(tmp_path), "train")
    assert [p[0]["content"] for p in train["prompt"]] == [f"q{i}?" for i in range(5)]
    assert len(load_preferences(str(tmp_path), "test")) == 1
    with pytest.raises(DataSourceError, match="no file for split 'valid'"):
        load_preferences(str(tmp_path), "valid")


def test_a_local_copy_of_a_hub_repository_with_configs_reads_as_load_dataset_does(tmp_path):
    """A folder whose card lists configs (a downloaded hub repository): dataset_config picks
    one, as TRL's load_dataset(dataset_name, name=dataset_config) does; its files are read by
    distalign's readers (located rows, skip_bad_rows, the file as it is now)."""
    for config, rows in (("a", EXPLICIT[:1]), ("b", EXPLICIT)):
        (tmp_path / config).mkdir()
        write_jsonl(tmp_path / config / "train.jsonl", rows)
    write_jsonl(tmp_path / "b" / "test.jsonl", EXPLICIT[:1])
    card = ("---\nconfigs:\n- config_name: a\n  data_files: a/train.jsonl\n"
            "- config_name: b\n  data_files:\n  - split: train\n    path: b/train*.jsonl\n"
            "  - split: test\n    path: [b/test.jsonl]\n---\n# pairs\n")  # fmt: skip
    (tmp_path / "README.md").write_text(card)
    assert len(load_preferences(str(tmp_path), name="b")) == len(EXPLICIT)
    assert len(load_preferences(str(tmp_path), split="test", name="b")) == 1
    assert len(load_preferences(str(tmp_path), name="a")) == 1
    with pytest.raises(DataSourceError, match=r"its card lists configs \['a', 'b'\]: give data"):
        load_preferences(str(tmp_path))
    with pytest.raises(DataSourceError, match=r"no split 'test' in config 'a' \(it has \['tra"):
        load_preferences(str(tmp_path), split="test", name="a")
    with pytest.raises(DataSourceError, match=r"no config 'c' in its card \(it lists \['a', 'b'"):
        load_preferences(str(tmp_path), name="c")
    # without a card, "default" is the folder read by its file names, as datasets reads it
    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "train.jsonl", EXPLICIT)
    assert len(load_preferences(str(plain), name="default")) == len(EXPLICIT)
    rows = datasets.Dataset.from_list(EXPLICIT)  # and a data set's own, in memory or saved
    rows.save_to_disk(str(tmp_path / "saved"))
    for source in (rows, str(tmp_path / "saved")):
        assert len(load_preferences(source, name="default")) == len(EXPLICIT)
    with pytest.raises(DataSourceError, match="no config 'c': the folder has no data set card"):
        load_preferences(str(plain), name="c")
    # the file as it is now, and a broken row skipped and located, as for any local file
    write_jsonl(tmp_path / "a" / "train.jsonl", [*EXPLICIT[1:2], "{broken"])
    report = LoadReport(source="a")
    ds = load_preferences(str(tmp_path), name="a", skip_bad_rows=True, report=report)
    assert len(ds) == 1 and report.rows == 2  # Capital of Peru?, not the first file's row
    assert "Peru" in str(ds[0]["prompt"])
    assert "a/train.jsonl:2: broken JSON line" in report.summary()
    # a config named "default" is the default, as in datasets; a trailing ** is every file below
    (tmp_path / "README.md").write_text(card.replace("config_name: b", "config_name: default")
                                        .replace("b/train*.jsonl", "b/**"))  # fmt: skip
    assert len(load_preferences(str(tmp_path))) == len(EXPLICIT) + 1  # b/test.jsonl too
    # one config (push_to_hub's card): the default, read without dataset_config
    (tmp_path / "README.md").write_text(card.split("- config_name: b")[0] + "---\n")
    assert len(load_preferences(str(tmp_path), skip_bad_rows=True)) == 1


def test_a_card_names_files_of_its_own_folder_only(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    write_jsonl(secret / "train.jsonl", EXPLICIT)
    cards = {
        "up": "---\nconfigs:\n- config_name: default\n  data_files: ../secret/*.jsonl\n---\n",
        "dir": f"---\nconfigs:\n- config_name: default\n  data_dir: {secret}\n---\n",
        "updir": "---\nconfigs:\n- config_name: default\n  data_dir: ../secret\n---\n",
    }
    for name, card in cards.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(card)
        with pytest.raises(DataSourceError, match="is not inside it"):
            load_preferences(str(tmp_path / name))
    # a link inside the folder to a file elsewhere (a hub cache's snapshot) is read
    (tmp_path / "snap" / "data").mkdir(parents=True)
    (tmp_path / "snap" / "data" / "train.jsonl").symlink_to(secret / "train.jsonl")
    (tmp_path / "snap" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: data/*.jsonl\n---\n"
    )
    assert len(load_preferences(str(tmp_path / "snap"))) == len(EXPLICIT)


def test_a_later_rows_prompt_in_a_file_read_as_implicit_is_an_error(tmp_path):
    """The first row picks the format; a later row's prompt is never dropped silently."""
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"prompt": "Why is grass green?", "chosen": " Chlorophyll.", "rejected": " Paint."},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(PreferenceFormatError, match=r"mixed\.jsonl:2: field 'prompt'.*implicit"):
        load_preferences(str(path))


def test_an_empty_prompt_and_replies_apart_in_whitespace_only_are_kept(tmp_path):
    """As TRL trains them: an explicit empty prompt (counted), and two replies whose tokens
    differ in whitespace alone."""
    rows = [
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "Leaves fall", "rejected": "Leaves fall\n\n"},
    ]
    report = LoadReport(source="")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)), report=report)
    assert len(ds) == 2 and report.identical == 0 and report.empty_prompts == 1


def test_an_empty_csv_cell_in_a_number_column_is_a_missing_value(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected,margin\nq,a,b,1.5\nr,c,d,\n", encoding="utf-8")
    ds = load_preferences(str(path))
    assert ds["margin"] == [1.5, None]


def test_what_the_template_does_not_get_is_counted_and_said(tmp_path, caplog):
    """Pairs render their tools and each reply message whole (its reasoning too), as TRL's
    RewardTrainer does; prompts for rl train render neither tools nor template arguments of
    their rows (TRL's GRPO takes them from its config): counted and said."""
    from distalign.data.prompts import load_prompts

    reasoning = [{"role": "assistant", "content": "a", "reasoning_content": "because"}]
    rows = [{**EXPLICIT[0], "tools": "[{}]"}, {**EXPLICIT[1], "chosen": reasoning}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = LoadReport(source="d.jsonl")
    with caplog.at_level("WARNING"):
        ds = load_preferences(str(path), report=report)
    assert not report.ignored and "not given to the chat template" not in caplog.text
    assert json.loads(ds["chosen_turns"][1]) == reasoning and ds["chosen"][1] == "a"
    assert ds["template_kwargs"] == ['{"tools": [{}]}', None]
    report = LoadReport(source="p.jsonl")
    load_prompts(
        str(
            write_jsonl(
                tmp_path / "p.jsonl",
                [{"prompt": "q", "tools": [{"type": "function"}]}, {"prompt": "r"}],
            )
        ),
        report=report,
    )
    assert report.ignored == {"tools": 1}
    report = LoadReport(source="d.jsonl")
    load_prompts(str(path), report=report)
    assert report.ignored["tools"] == 1


def test_tool_calls_in_the_prompt_reach_rl_prompts(tmp_path):
    from distalign.data.prompts import load_prompts

    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
    }
    turns = [{"role": "user", "content": "q"}, call,
             {"role": "tool", "content": "1", "tool_call_id": "c"}]  # fmt: skip
    for rows in ([{"prompt": turns}], [{"prompt": turns, "chosen": "a", "rejected": "b"}]):
        (prompt,) = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", rows)))
        assert prompt[1] == {**call, "content": ""} and prompt[2]["tool_call_id"] == "c"


def test_a_reply_of_several_messages_is_its_turns_after_the_prompt(tmp_path):
    """A reply that calls a tool, reads its result and answers is its three turns, after the
    prompt or after a repeat of it, as TRL's RewardTrainer renders prompt + reply; its text is
    the answer. A user turn among them is no reply."""
    from distalign.data.formats import normalise_row, row_reply

    turns = [{"role": "assistant", "content": "checking"},
             {"role": "tool", "content": "22C"},
             {"role": "assistant", "content": "22C"}]  # fmt: skip
    prompt = [{"role": "user", "content": "Weather?"}]
    dunno = [{"role": "assistant", "content": "dunno"}]
    for chosen in (turns, prompt + turns):
        row = normalise_row({"prompt": prompt, "chosen": chosen, "rejected": dunno},
                            "explicit", "d.jsonl:1", 0)  # fmt: skip
        assert (row["prompt"], row["chosen"], row["rejected"]) == (prompt, "22C", "dunno")
        assert row_reply(row, "chosen") == turns and row_reply(row, "rejected") == "dunno"
    # whole conversations (TRL's implicit prompt): the turns after those the two share
    row = normalise_row({"chosen": prompt + turns, "rejected": prompt + dunno}, "implicit", "w", 0)
    assert row["prompt"] == prompt and row_reply(row, "chosen") == turns
    # ShareGPT, as LLaMA-Factory writes a reply's tool call and its result
    sharegpt = {"conversations": [{"from": "human", "value": "Weather?"}],
                "chosen": [{"from": "function_call", "value": "checking"},
                           {"from": "observation", "value": "22C"},
                           {"from": "gpt", "value": "22C"}],
                "rejected": {"from": "gpt", "value": "dunno"}}  # fmt: skip
    assert row_reply(normalise_row(sharegpt, "sharegpt", "s", 0), "chosen") == turns
    with pytest.raises(PreferenceFormatError, match=r"chosen\[1\].*got role 'user'"):
        normalise_row({"prompt": prompt, "chosen": [turns[0], *prompt, turns[2]],
                       "rejected": dunno}, "explicit", "d.jsonl:1", 0)  # fmt: skip
    rows = [{"prompt": prompt, "chosen": turns, "rejected": dunno},
            {"prompt": prompt, "chosen": turns, "rejected": turns}]  # fmt: skip
    report = LoadReport(source="d.jsonl")
    ds = load_preferences(str(write_jsonl(tmp_path / "d.jsonl", rows)), report=report)
    assert len(ds) == 1 and report.identical == 1  # the same turns: no preference


def test_rated_single_responses_say_how_to_make_pairs(tmp_path):
    rows = [{"prompt": "q", "response": "a", "helpfulness": 3}]
    with pytest.raises(PreferenceFormatError, match="pair each prompt's responses"):
        load_preferences(str(write_jsonl(tmp_path / "hs2.jsonl", rows)))


def test_a_forced_format_reads_rows_that_also_have_a_prompt_column(tmp_path):
    turn = "\n\nHuman: Hi\n\nAssistant:"
    rows = [{"prompt": turn, "chosen": turn + " Hello.", "rejected": turn + " Go away."}]
    ds = load_preferences(str(write_jsonl(tmp_path / "hh.jsonl", rows)), format="hh")
    assert ds["chosen"] == ["Hello."] and ds["prompt"][0][-1]["content"] == "Hi"


def test_a_dataset_dict_reads_train_without_a_split_and_names_its_split_in_errors():
    good = {"prompt": "a?", "chosen": "yes", "rejected": "no"}
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list([good] * 2),
                                 "test": datasets.Dataset.from_list([good, good])})  # fmt: skip
    assert len(load_preferences(both)) == 2  # as a file source's default split
    bad = datasets.DatasetDict({"test": datasets.Dataset.from_list(
        [good, {"prompt": "b?", "chosen": "yes", "rejected": None}])})  # fmt: skip
    with pytest.raises(PreferenceFormatError, match=r"dataset\[test\] row 1: field 'rejected'"):
        load_preferences(bad, "test")


def test_a_csv_cell_of_json_objects_that_are_not_messages_stays_text(tmp_path):
    import csv

    path = tmp_path / "json.csv"
    reply = '[{"id": 1, "name": "Alice"}]'
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"],
                                 ["Return the users as JSON.", reply, '[{"id": 1}]']])  # fmt: skip
    row = load_preferences(str(path))[0]
    assert (row["chosen"], row["rejected"]) == (reply, '[{"id": 1}]')


def test_a_jsonl_file_holding_one_json_array_reads_as_datasets_reads_it(tmp_path):
    for text in (json.dumps(EXPLICIT), json.dumps(EXPLICIT, indent=2)):
        path = tmp_path / "array.jsonl"
        path.write_text("\ufeff" + text)
        assert [r["chosen"] for r in load_preferences(str(path))] == ["4.", "Lima."]


def test_a_string_prompt_that_is_the_first_of_several_user_turns_gives_way_to_the_shared_turns(
    tmp_path,
):
    """A multi-turn set with a string prompt (its first question) beside whole conversations:
    the prompt is every turn the two share, as TRL's maybe_extract_prompt reads it."""
    user, answer, again = ({"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "4"},
                           {"role": "user", "content": "x3?"})  # fmt: skip
    row = {"prompt": "Hi", "chosen": [user, answer, again, {"role": "assistant", "content": "12"}],
           "rejected": [user, answer, again, {"role": "assistant", "content": "7"}]}  # fmt: skip
    path = write_jsonl(tmp_path / "mt.jsonl", [row])
    pair = load_preferences(str(path))[0]
    assert pair["prompt"] == [user, answer, again]
    assert (pair["chosen"], pair["rejected"]) == ("12", "7")
    from distalign.data.prompts import load_prompts

    assert list(load_prompts(str(path))[0]) == [user, answer, again]


def test_alpaca_style_rows_read_their_instruction_input_system_and_history(tmp_path):
    """LLaMA-Factory's alpaca format (Stanford Alpaca's columns): the prompt is the system
    column, the history's [question, answer] pairs, then instruction and input joined by a
    newline; for rl train too. A data set whose every prompt is empty is refused."""
    from distalign.data.prompts import load_prompts

    rows = [
        {"instruction": "Translate to English.", "input": "hola", "chosen": "hello",
         "rejected": "bye"},
        {"instruction": "Add one.", "input": "", "chosen": "3", "rejected": "4",
         "system": "Be brief.", "history": [["What is 1+1?", "2"]]},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    report = LoadReport(source="alpaca")
    pairs = load_preferences(str(path), report=report)
    assert report.format == "alpaca"
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Translate to English.\nhola"}]
    assert pairs[1]["prompt"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"}, {"role": "user", "content": "Add one."},
    ]  # fmt: skip
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("3", "4")
    prompts = load_prompts(str(path))
    assert [p[-1]["content"] for p in prompts] == ["Translate to English.\nhola", "Add one."]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Name a colour.", "output": "Red"}])
    (prompt,) = load_prompts(str(sft))
    assert list(prompt) == [{"role": "user", "content": "Name a colour."}]
    assert prompt.columns["output"] == "Red"  # for reward functions, as TRL passes columns
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "history": [["only one"]]}])
    with pytest.raises(PreferenceFormatError, match=r"bad.jsonl:1: field 'history\[0\]'"):
        load_preferences(str(bad))
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"question": "Why?", "prompt": ""}] * 3)
    with pytest.raises(DataSourceError, match=r"every prompt is empty, .*'question'"):
        load_prompts(str(empty))


def test_ratings_that_are_not_numbers_read_as_missing_and_are_counted(tmp_path, caplog):
    """TRL never reads a pair's rating columns: NaN or "N/A" there does not cost the pair; the
    rating reads as missing and the load says how many."""
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": float("nan"),
             "score_rejected": 3.0},
            {"prompt": "r", "chosen": "c", "rejected": "d", "score_chosen": "N/A",
             "score_rejected": 1.0},
            {"prompt": "s", "chosen": "e", "rejected": "f", "score_chosen": 5.0,
             "score_rejected": 2.0}]  # fmt: skip
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "score_chosen": str(r["score_chosen"])}
                                         for r in rows]), path)  # fmt: skip
    report = LoadReport(source="nan")
    with caplog.at_level(logging.WARNING):
        pairs = load_preferences(str(path), report=report)
    assert pairs["chosen_score"] == [None, None, 5.0]
    assert pairs["rejected_score"] == [3.0, 1.0, 2.0]
    assert report.unread_scores == 2 and "rating columns hold no number" in caplog.text


def test_folders_laid_out_as_datasets_reads_them(tmp_path):
    """Layouts load_dataset(folder) reads by its file-name patterns: subsets' split files (an
    hh-rlhf snapshot), a split's folder of shards, numbered split files, a lone file (train);
    each row still named by its file and line."""
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: yes",
        "rejected": "\n\nHuman: hi\n\nAssistant: no",
    }
    layouts = {
        "hh": ["helpful-base/train.jsonl.gz", "harmless-base/train.jsonl.gz",
               "helpful-base/test.jsonl.gz"],
        "shards": ["train/0000.jsonl", "train/0001.jsonl"],
        "numbered": ["train_0.jsonl", "train_1.jsonl"],
        "lone": ["pairs.jsonl"],
    }  # fmt: skip
    for name, files in layouts.items():
        for file in files:
            path = tmp_path / name / file
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(row) + "\n"
            if file.endswith(".gz"):
                path.write_bytes(gzip.compress(text.encode()))
            else:
                path.write_text(text)
        trains = [f for f in files if "test" not in f]
        assert len(load_preferences(str(tmp_path / name))) == len(trains), name
    assert len(load_preferences(str(tmp_path / "hh"), "test")) == 1
    with pytest.raises(DataSourceError, match="no file for split 'valid'"):
        load_preferences(str(tmp_path / "hh"), "valid")
    bad = tmp_path / "shards" / "train" / "0001.jsonl"
    bad.write_text('{"chosen": "a"}\n')
    with pytest.raises(PreferenceFormatError, match=r"0001.jsonl:1: field 'rejected'"):
        load_preferences(str(tmp_path / "shards"))


def test_an_instruction_column_beside_conversations_is_not_alpaca(tmp_path):
    """Magpie-style sets carry an instruction column beside whole conversations: those are
    read as conversations (their system turn kept), not as Alpaca rows."""
    system, user = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}
    row = {"instruction": "2+2?", "chosen": [system, user, {"role": "assistant", "content": "4"}],
           "rejected": [system, user, {"role": "assistant", "content": "5"}]}  # fmt: skip
    pair = load_preferences(str(write_jsonl(tmp_path / "magpie.jsonl", [row])))[0]
    assert pair["prompt"] == [system, user] and (pair["chosen"], pair["rejected"]) == ("4", "5")


def test_prompt_and_instruction_columns_mixed_in_a_parquet_file(tmp_path):
    """Columnar files give every row every column: a null prompt beside an instruction is an
    Alpaca row, as the same rows in JSON lines read."""
    from distalign.data.prompts import load_prompts

    path = tmp_path / "mixed.parquet"
    rows = [{"instruction": "Say hi", "prompt": None}, {"instruction": None, "prompt": "Say bye"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [p[-1]["content"] for p in load_prompts(str(path))] == ["Say hi", "Say bye"]


def test_a_folder_with_its_own_train_file_has_no_test_split_in_stray_files(tmp_path):
    """A folder laid out as distalign reads it (train.jsonl) and no test file: no test split
    (rm train then evaluates on the training data, said), not test_prompts.jsonl read as it."""
    from distalign.data.files import MissingSplitError

    write_jsonl(tmp_path / "train.jsonl", EXPLICIT)
    write_jsonl(tmp_path / "test_prompts.jsonl", [{"prompt": "q?"}])
    assert len(load_preferences(str(tmp_path))) == len(EXPLICIT)
    with pytest.raises(MissingSplitError, match="no file for split 'test'"):
        load_preferences(str(tmp_path), "test")


def test_a_hub_folder_with_split_names_of_its_own_names_them_when_one_is_missing(tmp_path):
    """UltraFeedback-binarized's layout (data/train_prefs-00000-of-00001.parquet): the
    default split is missing, and the error lists the splits there are."""
    from distalign.data.files import MissingSplitError

    (tmp_path / "data").mkdir()
    for split in ("train_prefs", "test_prefs"):
        write_jsonl(tmp_path / "data" / f"{split}-00000-of-00001.jsonl", EXPLICIT)
    with pytest.raises(MissingSplitError, match=r"the splits \['test_prefs', 'train_prefs'\]"):
        load_preferences(str(tmp_path))
    assert len(load_preferences(str(tmp_path), "train_prefs")) == len(EXPLICIT)


def test_the_folder_fallback_reads_one_kind_of_file_as_datasets_does(tmp_path):
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    write_jsonl(tmp_path / "pairs.jsonl", [row, row])
    (tmp_path / "metadata.json").write_text('{"note": "distalign\'s side file"}')
    (tmp_path / "notes.txt").write_text("not data")
    assert len(load_preferences(str(tmp_path))) == 2


def test_a_csv_message_list_with_a_malformed_message_is_an_error(tmp_path):
    import csv

    cell = json.dumps([{"role": "user", "content": "hi"}, {"content": "x", "name": "n"}])
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["chosen", "rejected"], [cell, cell]])
    with pytest.raises(PreferenceFormatError, match=r"chosen\[1\]"):
        load_preferences(str(path))


def test_hh_pairs_after_a_plain_first_row_read_as_hh(tmp_path):
    """The format is detected from the first row; an HH pair after a plain-text first row is
    still read as its turns (not a user turn holding the transcript); text that only looks
    like a transcript ("Human: hi\nAssistant: …", one newline) is text, as before."""
    rows = [
        {"chosen": "The answer is 12", "rejected": "The answer is 15"},
        {"chosen": "\n\nHuman: a?\n\nAssistant: yes", "rejected": "\n\nHuman: a?\n\nAssistant: no"},
        {"chosen": "Human: hi\nAssistant: hello", "rejected": "Human: hi\nAssistant: go away"},
    ]  # fmt: skip
    report = LoadReport(source="mixed")
    pairs = load_preferences(str(write_jsonl(tmp_path / "mixed.jsonl", rows)), report=report)
    assert report.format == "implicit" and report.transcripts == 1
    assert pairs[0]["prompt"] == [{"role": "user", "content": "The answer is "}]
    assert pairs[1]["prompt"] == [{"role": "user", "content": "a?"}]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("yes", "no")
    assert pairs[2]["prompt"] == [{"role": "user", "content": "Human: hi\nAssistant: "}]
    # a format given is the format: an HH pair read as plain text, as asked
    forced = load_preferences(str(tmp_path / "mixed.jsonl"), format="implicit")
    assert forced[1]["prompt"][0]["content"].startswith("\n\nHuman: a?")


def test_the_folder_fallback_takes_the_file_type_datasets_takes(tmp_path, caplog):
    """``load_dataset(folder)`` reads the most common type, a draw going to Parquet, then JSON
    lines; ``.json`` and ``.jsonl`` share its builder. Files of another type are named."""
    import pandas as pd

    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "one.jsonl", [row])
    pd.DataFrame([row, row]).to_parquet(folder / "two.parquet")
    assert len(load_preferences(str(folder))) == 2  # a draw: Parquet
    pd.DataFrame([row] * 3).to_csv(folder / "three.csv", index=False)
    pd.DataFrame([row] * 3).to_csv(folder / "four.csv", index=False)
    with caplog.at_level("WARNING"):
        assert len(load_preferences(str(folder))) == 6  # two CSV files against one of each
    assert "2 other data file(s) not read" in caplog.text and "one.jsonl" in caplog.text
    (folder / "five.json").write_text(json.dumps([row] * 4))
    (folder / "six.json").write_text(json.dumps([row] * 4))
    (folder / "two.parquet").unlink()
    assert len(load_preferences(str(folder))) == 9  # .json and .jsonl: one builder, 3 files
    write_jsonl(folder / "seven.ndjson", [row])  # .ndjson too
    assert len(load_preferences(str(folder))) == 10
