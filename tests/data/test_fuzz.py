"""Fuzzed preference files: whatever bytes a file holds, loading ends in rows, a counted skip,
or a one-line error that names the file — never a traceback from inside a library."""

from __future__ import annotations

import gzip
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distalign.data import DataSourceError, PreferenceFormatError, load_preferences
from distalign.data.load import LoadReport

EXPECTED = (DataSourceError, PreferenceFormatError)
SUFFIXES = st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz", ".parquet"])
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def check_load(path, skip_bad_rows: bool):
    report = LoadReport(source=str(path))
    try:
        ds = load_preferences(str(path), skip_bad_rows=skip_bad_rows, report=report)
    except EXPECTED as e:
        message = str(e)
        assert path.name in message, message  # names the file
        assert "\n" not in message.strip(), message  # one line
        return
    assert len(ds) == report.kept <= report.rows
    assert report.rows == report.kept + report.identical + sum(report.skipped.values())


@FUZZ
@given(data=st.binary(max_size=400), suffix=SUFFIXES, skip=st.booleans())
def test_random_bytes(tmp_path_factory, data, suffix, skip):
    path = tmp_path_factory.mktemp("fuzz") / f"pairs{suffix}"
    path.write_bytes(data)
    check_load(path, skip)


@FUZZ
@given(cut=st.integers(0, 200), skip=st.booleans())
def test_truncated_gzip(tmp_path_factory, cut, skip):
    rows = [{"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad"} for i in range(20)]
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path = tmp_path_factory.mktemp("fuzz") / "pairs.jsonl.gz"
    path.write_bytes(blob[: max(0, len(blob) - cut - 1)])
    check_load(path, skip)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["prompt", "chosen", "rejected", "messages", "conversations", "score_chosen",
     "chosen_rating", "system", "role", "content", "from", "value", "p_chosen"]
)  # fmt: skip


@FUZZ
@given(
    rows=st.lists(st.dictionaries(KEYS, JSON_VALUES, max_size=5), min_size=1, max_size=5),
    skip=st.booleans(),
)
def test_wrong_types_and_odd_unicode(tmp_path_factory, rows, skip):
    path = tmp_path_factory.mktemp("fuzz") / "pairs.jsonl"
    with path.open("w", encoding="utf-8", errors="surrogatepass") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    check_load(path, skip)


@FUZZ
@given(
    encoding=st.sampled_from(["latin-1", "utf-16", "utf-16-le", "cp1252", "utf-32"]),
    text=st.text(min_size=1, max_size=40),
    skip=st.booleans(),
)
def test_other_encodings(tmp_path_factory, encoding, text, skip):
    row = json.dumps({"prompt": text, "chosen": text + "!", "rejected": "no"}, ensure_ascii=False)
    path = tmp_path_factory.mktemp("fuzz") / "pairs.jsonl"
    try:
        path.write_bytes((row + "\n").encode(encoding))
    except UnicodeEncodeError:
        return
    check_load(path, skip)


def test_huge_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    big = "word " * 400_000  # 2 MB reply
    path.write_text(json.dumps({"prompt": "q", "chosen": big, "rejected": "short"}) + "\n")
    ds = load_preferences(str(path))
    assert len(ds) == 1 and len(ds[0]["chosen"]) == len(big)
