"""Rows of local data files, each with where it was read (``path:line``), so that an error
can name the line of a broken row: ``.jsonl``, ``.json`` (a list of rows, ``{"data": [...]}``,
or JSON lines), ``.ndjson``, ``.parquet``, ``.csv``, ``.tsv``, each optionally ``.gz``; a
folder holds one file per split. Text saved on Windows reads as it is: a byte-order mark
(UTF-8, or UTF-16 as PowerShell writes) and CRLF line ends. ``load.py`` turns the rows
into data sets.

    for where, row in READERS[".jsonl"](Path("pairs.jsonl.gz")): ...
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import csv
import glob
import gzip
import io
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distalign.data.formats import PreferenceFormatError

log = logging.getLogger(__name__)
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".ndjson")  # datasets' names


class DataSourceError(ValueError):
    """A source that cannot be read at all (missing file, bad gzip, unknown suffix)."""


class MissingSplitError(DataSourceError):
    """A source that has no split of the name asked for (it says which it has)."""


def strip_gz(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _encoding(head: bytes) -> str:
    # Windows tools save UTF-8 with a byte-order mark, and PowerShell 5's `>` writes UTF-16;
    # "utf-8-sig" drops the mark that would otherwise break the first row's JSON or column.
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


@contextlib.contextmanager
def _named_errors(path: Path):
    """A broken gzip stream or text that is not UTF-8 (or UTF-16) as a DataSourceError that
    names the file."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataSourceError(f"{path}: not a valid gzip file ({e})") from None
    except UnicodeError as e:
        raise DataSourceError(f"{path}: not UTF-8 text ({e})") from None


def _open_bytes(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_text(path: Path) -> io.TextIOBase:
    """Text of a (gzipped) file; universal newlines turn CRLF into LF."""
    with _open_bytes(path) as f:
        head = f.read(2)
    return io.TextIOWrapper(_open_bytes(path), encoding=_encoding(head))


def _read_bytes(path: Path) -> bytes:
    with _named_errors(path), _open_bytes(path) as f:
        return f.read()


def _read_text(path: Path) -> str:
    data = _read_bytes(path)
    with _named_errors(path):
        return data.decode(_encoding(data[:2]))


def _json_lines(lines: Iterable[str], path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line.rstrip("\r\n"))  # a column within the line
        except json.JSONDecodeError as e:
            message = f"broken JSON line ({e.msg}, column {e.colno})"
            yield where, PreferenceFormatError(where, None, message)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with _named_errors(path), _open_text(path) as f:
        head = f.read(4096).lstrip("\ufeff \t\r\n")
    if head.startswith("["):  # one JSON array named .jsonl, which `datasets` reads too
        yield from _iter_json(path)
        return
    with _named_errors(path), _open_text(path) as f:
        yield from _json_lines(f, path)


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    text = _read_text(path)
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # JSON lines saved as .json, which `datasets` reads too.
            # Not splitlines(): JSON strings may hold a raw U+2028, which it splits on.
            yield from _json_lines(text.replace("\r\n", "\n").split("\n"), path)
            return
        raise DataSourceError(f"{path}: broken JSON at line {e.lineno} ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
    for i, row in enumerate(data):
        yield f"{path} row {i}", row


def _decode_cell(column: str, value: Any) -> Any:
    """CSV cells hold strings: a JSON list of messages (objects, one at least with a ``role``
    or ``from``) is chat messages, a JSON list of objects with a ``group`` per-group
    probabilities, a JSON list in a ``*_ids`` column token ids; so is the Python form of a
    list of messages that pandas' ``to_csv`` writes (``[{'role': 'user', ...}]``, or
    ShareGPT's ``[{'from': 'human', 'value': ...}]``; read as a literal, never run), and one
    message in either form in a reply column with an assistant's role (ShareGPT's ``chosen``:
    ``{'from': 'gpt', 'value': ...}``) or in a prompt column with a user's. Any other cell, a
    reply such as ``[1, 2, 3]``, ``[{"id": 1}]``, ``{"a": 1}`` or a printed user message
    included, stays text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{") and text.endswith("}") and column in _ONE_MESSAGE_COLUMNS:
        message = _one_message(text)
        role = None if message is None else message.get("role", message.get("from"))
        return message if role in _ONE_MESSAGE_COLUMNS[column] else value
    if text.startswith("[") and text.endswith("]"):
        try:
            decoded = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return _python_messages(value)
        # objects of which one at least is a message (or a group's probability): a malformed
        # message among them is then an error naming it, not text
        keys = ("role", "from", "group")
        objects = (
            bool(decoded)
            and all(isinstance(x, dict) for x in decoded)
            and any(k in x for x in decoded for k in keys)
        )
        return decoded if objects or column.endswith("_ids") else value
    return value


# columns that may hold one message, and the roles of the message each may hold: a reply an
# assistant's (ShareGPT's chosen: {'from': 'gpt', ...}), a prompt a user's; any other object
# (a reply whose text prints a user message) stays text
_REPLY_ROLES = ("assistant", "gpt", "function_call")
_ONE_MESSAGE_COLUMNS = {
    **dict.fromkeys(("chosen", "rejected", "completion", "response", "reply"), _REPLY_ROLES),
    "prompt": ("user", "human", "system"),
}


def _is_message(x: Any) -> bool:
    """A ``{role, content}`` or ShareGPT ``{from, value}`` object."""
    return isinstance(x, dict) and ({"role", "content"} <= set(x) or {"from", "value"} <= set(x))


def _one_message(text: str) -> dict | None:
    """One message object printed as JSON or as a Python literal (never run); else None."""
    for read in (json.loads, ast.literal_eval):
        try:
            decoded = read(text)
        except Exception:
            continue
        return decoded if _is_message(decoded) else None
    return None


def _python_messages(value: str) -> Any:
    """A cell holding a list of ``{role, content}`` (or ShareGPT's ``{from, value}``) dicts in
    Python's printed form, as that list: a list's (pandas' ``to_csv`` of lists) or a numpy
    array's, whose items have no comma between them (``Dataset.to_csv``,
    ``to_pandas().to_csv``). Read as a literal, never run.
    Any other text stays text (Python code in a reply too); a numpy-printed message list that
    does not read back is an error, as its messages would otherwise be trained on as one text."""
    text = value.strip()
    between = r"\}\s+(?=\{\s*['\"](?:role|content|from|value)['\"]\s*:)"  # numpy's: next message
    numpy_form, gaps = re.subn(between, "}, ", text)
    for form, joins in ((text, None), (numpy_form, gaps)):
        try:
            decoded = ast.literal_eval(form)
        except Exception:
            continue
        messages = isinstance(decoded, list) and decoded and all(map(_is_message, decoded))
        # numpy's form: a comma put inside a message's text would add a gap, so the gaps
        # must be exactly those between the messages
        if messages and (joins is None or joins == len(decoded) - 1):
            return decoded
    if gaps and text.startswith("[{"):
        raise ValueError("a list of messages as numpy prints it that does not read back as "
                         "one; save the data as JSONL or Parquet (Dataset.to_json)")  # fmt: skip
    return value


def _iter_csv(path: Path, delimiter: str = ",") -> Iterator[tuple[str, Any]]:
    with _named_errors(path), _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:  # located by the file's line, as a JSONL row is (the row's last)
            where, cells = f"{path}:{reader.line_num}", {}
            try:
                for column, value in row.items():
                    cells[column] = _decode_cell(column, value)
            except ValueError as e:
                cells = PreferenceFormatError(where, column, str(e))
            yield where, cells


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    data = _read_bytes(path)
    if not data:
        return
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:
        if isinstance(e, DataSourceError):
            raise
        raise DataSourceError(f"{path}: not a readable parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


READERS = {
    ".jsonl": _iter_jsonl,
    ".ndjson": _iter_jsonl,
    ".json": _iter_json,
    ".csv": _iter_csv,
    ".tsv": lambda path: _iter_csv(path, "\t"),  # as datasets reads it
    ".parquet": _iter_parquet,
}


def local_files(path: Path, split: str | None) -> list[Path]:
    """The file(s) of ``split`` (default train): ``path`` itself, or in a folder the file named
    after the split (``test.jsonl``), else its shards in the hub's layout
    (``data/test-00000-of-00002.parquet``, as a downloaded data set repository has them), else
    the files ``datasets.load_dataset(folder)`` takes for the split (``train/0000.jsonl``,
    ``train_0.jsonl``, a subset's ``helpful-base/train.jsonl.gz``, or every file of a folder
    without split names as ``train``)."""
    if not path.is_dir():
        return [path]
    wanted = split or "train"
    if found := _own_layout(path, wanted):
        return found
    configs = [c["config_name"] for c in card_configs(path)]  # they say how to read it
    # a folder in none of the layouts above (not even for train: a folder that has its own
    # train file and no test one has no test split, and a stray test_notes.csv is none)
    datasets_layout = not configs and not _own_layout(path, "train")
    if datasets_layout:
        patterns = _datasets_patterns(path)  # the splits datasets infers from the file names
        if found := _one_kind(_datasets_split_files(path, wanted, patterns)):
            return found
        if splits := sorted(str(s) for s in patterns if s != wanted):
            raise MissingSplitError(f"{path}: no file for split {wanted!r} (its files give the "
                                    f"splits {splits}); {SPLIT_HINT}")  # fmt: skip
    names = sorted(p.name for p in path.iterdir())
    hint = f"; its card lists configs {configs}: give dataset_config" if configs else ""
    raise MissingSplitError(f"{path}: no file for split {wanted!r} (have {names}){hint}")


def _own_layout(path: Path, split: str) -> list[Path]:
    """The files of ``split`` in a folder laid out as distalign reads it first: the file named
    after it (``test.jsonl``), or its shards in the hub's layout (``data/test-*.parquet``)."""
    candidates = [path / f"{split}{s}{gz}" for s in SUFFIXES for gz in ("", ".gz")]
    found = [c for c in candidates if c.is_file()]
    if found:
        return found[:1]
    for folder in (path / "data", path):
        shards = sorted(
            f for f in folder.glob(f"{split}-*")
            if f.is_file() and Path(strip_gz(f)).suffix in SUFFIXES
        ) if folder.is_dir() else []  # fmt: skip
        if shards:
            return shards
    return []


def _datasets_patterns(folder: Path) -> dict:
    """split -> the file patterns ``datasets`` infers for a folder by its file names (its
    ``get_data_patterns``; ``data/train_prefs-00000-of-00001.parquet``: train_prefs); {} when
    it finds none."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    try:
        return get_data_patterns(str(folder))
    except (EmptyDatasetError, FileNotFoundError):
        return {}


def _datasets_split_files(folder: Path, split: str, patterns: dict) -> list[Path]:
    """The files of ``split`` that ``patterns`` (``_datasets_patterns``) match in ``folder``,
    sorted; [] when none do."""
    from datasets.data_files import DataFilesDict

    try:
        files = DataFilesDict.from_patterns(patterns, base_path=str(folder))
    except FileNotFoundError:
        return []
    return sorted(Path(f) for f in files.get(split, []))


def _one_kind(files: list[Path]) -> list[Path]:
    """Of the files ``datasets`` matched, those it reads: of a type read here (distalign's own
    ``metadata.json`` apart), and of one builder only, as ``load_dataset(folder)`` takes one
    builder for a folder: the most common type's, a draw going to Parquet, then JSON lines,
    JSON and CSV, in ``datasets``' order (its JSON builder reads ``.json``, ``.jsonl`` and
    ``.ndjson`` together, its CSV builder ``.csv`` and ``.tsv``); [] where none is."""
    kinds = [
        Path(strip_gz(f)).suffix.lower() if f.name != "metadata.json" else None for f in files
    ]  # fmt: skip
    counts = Counter(k for k in kinds if k in SUFFIXES)
    if not counts:
        return []
    order = (".parquet", ".jsonl", ".json", ".csv")
    kind = max(counts, key=lambda k: (counts[k], *(k == o for o in order), k))
    same = _BUILDER.get(kind, {kind})
    left = [f.name for f, k in zip(files, kinds, strict=True) if k in SUFFIXES and k not in same]
    if left:
        log.warning("%s: reading its %s files, as datasets would; %d other data file(s) not "
                    "read: %s", files[0].parent, kind, len(left), left)  # fmt: skip
    return [f for f, k in zip(files, kinds, strict=True) if k in same]


# the types one datasets builder reads together (its _EXTENSION_TO_MODULE)
_JSON, _CSV = frozenset({".json", ".jsonl", ".ndjson"}), frozenset({".csv", ".tsv"})
_BUILDER = dict.fromkeys(_JSON, _JSON) | dict.fromkeys(_CSV, _CSV)


# every command names its split its own way (dataset_test_split, dataset_split, …)
SPLIT_HINT = "name one of them as the split"


def card_configs(folder: Path) -> list[dict[str, Any]]:
    """The configs a data set card (``README.md``'s YAML header) lists, as a hub repository's
    card does (``configs: [{config_name: a, data_files: ...}]``); [] if none."""
    import yaml

    card = folder / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    if not text.startswith("---"):
        return []
    try:
        header = yaml.safe_load(text[3:].split("\n---", 1)[0])
    except yaml.YAMLError:
        return []
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list):
        return []
    return [c for c in configs if isinstance(c, dict) and isinstance(c.get("config_name"), str)]


def config_files(folder: Path, name: str | None, split: str | None) -> list[Path] | None:
    """The files of ``split`` (default train) in config ``name`` of a folder whose card lists
    configs (a downloaded hub repository), found as ``load_dataset(folder, name)`` finds them
    and read by distalign's own readers (row locations, ``skip_bad_rows``, no cache). Without
    ``name``: the card's default config (``default: true``, or its only one). None when the
    card names no config to use: the folder is read by its file names."""
    configs = card_configs(folder)
    listed = [c["config_name"] for c in configs]
    if name is None:  # as datasets picks one: marked default, named "default", or the only one
        defaults = [c for c in configs if c.get("default")]
        if len(defaults) > 1:
            raise DataSourceError(f"{folder}: its card marks several configs default: give "
                                  "dataset_config")  # fmt: skip
        defaults = defaults or [c for c in configs if c["config_name"] == "default"]
        if not defaults and len(configs) == 1:
            defaults = configs
        if not defaults:
            return None
        config = defaults[0]
    else:
        config = next((c for c in configs if c["config_name"] == name), None)
        if config is None and not configs and name == "default":
            return None  # datasets' name for a folder without configs: read by file names
        if config is None and not configs:
            raise DataSourceError(f"{folder}: no config {name!r}: the folder has no data set "
                                  "card (README.md) listing configs")  # fmt: skip
        if config is None:
            raise DataSourceError(f"{folder}: no config {name!r} in its card (it lists {listed})")
    wanted = split or "train"
    if config.get("data_files") is None:
        sub = folder / config.get("data_dir", "")
        _inside(folder, sub, f"data_dir {config.get('data_dir')!r}")
        if not sub.is_dir():
            raise DataSourceError(f"{folder}: config {config['config_name']!r}'s data_dir "
                                  f"{sub.name!r} is not a folder here")  # fmt: skip
        return local_files(sub, wanted)
    named = config["config_name"]
    return data_files_of(folder, config["data_files"], wanted, f"config {named!r}", inside=True)


def data_files_of(
    base: Path, files: Any, split: str, what: str, inside: bool = False
) -> list[Path]:
    """The files ``data_files`` (a pattern, a list of them, a mapping split -> patterns, or a
    card's list of ``{split, path}``) gives ``split``, as ``load_dataset`` reads it: relative
    patterns under ``base``, a pattern or list of them all the train split. ``inside``: a
    card's patterns, which name files of its own repository only. ``what`` names the
    ``data_files`` in errors."""
    if isinstance(files, dict):
        by_split = files
    elif isinstance(files, list) and files and all(isinstance(f, dict) for f in files):
        by_split = {f.get("split", "train"): f.get("path") for f in files}
    else:  # a pattern, or a list of them: the train split
        by_split = {"train": files}
    if split not in by_split:
        raise MissingSplitError(f"{base}: no split {split!r} in {what} (it has "
                              f"{list(by_split)}); {SPLIT_HINT}")  # fmt: skip
    patterns = by_split[split]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
    from datasets.data_files import resolve_pattern

    found = []  # as datasets resolves them: in the patterns' order, a file named twice twice
    for pattern in patterns:
        try:  # datasets' own resolver: its globs, hidden and __special__ paths, README.md
            # the folder's own name is no pattern ("my[1]set"): escaped
            matched = resolve_pattern(os.path.expanduser(pattern), base_path=glob.escape(str(base)))
        except FileNotFoundError:
            matched = []
        found += [Path(f) for f in matched if "://" not in f]
    for f in found if inside else ():
        _inside(base, f, f"pattern {patterns} (matching {f})")
    if not found:
        relative = any(not os.path.isabs(os.path.expanduser(p)) for p in patterns)
        where = f"{base}: " if relative else ""
        raise DataSourceError(f"{where}no file matches {patterns} ({what}, split {split!r})")
    return found


def _inside(folder: Path, path: Path, what: str) -> None:
    """A card names files of its own repository only: refuse a ``data_dir`` or pattern that
    leads outside ``folder`` (``..``, an absolute path). Read as written, without following
    links: a hub cache's snapshot links each file to a blob outside it."""
    root = os.path.normpath(os.path.abspath(folder))
    if os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) != root:
        raise DataSourceError(f"{folder}: its card's {what} is not inside it")
