"""TRL's data set mixture: ``datasets:`` in a training config, as TRL's scripts read it
(``trl.DatasetMixtureConfig``, ``trl.get_dataset``).

    datasets:
      - path: Anthropic/hh-rlhf
        data_dir: helpful-base
      - path: json
        data_files: my_pairs.jsonl
        columns: [chosen, rejected]
    test_split_size: 0.05

Each entry names one source as ``datasets.load_dataset`` takes it (``path``, ``name``,
``data_dir``, ``data_files``, ``split``), then keeps some ``columns`` and a share of the mixture
(``fraction``); the sources' rows are read one after the other as the split ``train``, and
``test_split_size`` holds out a share (or a count) of them as ``test``, drawn with the run's
``seed`` (TRL draws another split at every run). The mixture stands in for ``dataset_name``
(``Mixture``), so that every command reads its rows as any source's, each named by its own file
and row.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# datasets' packaged builders of files: load_dataset("json", data_files=...); the first three
# read by distalign's own readers (row locations, skip_bad_rows), the others by datasets
FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")
OWN_READERS = ("json", "csv", "parquet")
LONGEST_NAME = 100  # characters of a mixture's name, shown in titles and logs


@dataclasses.dataclass
class MixtureKeys:
    """TRL's ``DatasetMixtureConfig`` keys, for the commands that read a mixture in place of
    ``dataset_name`` (``resolve_mixture``)."""

    datasets: list[Any] | None = None
    """TRL's mixture (``DatasetMixtureConfig``): data sets read one after the other in place of
    ``dataset_name``, each ``{path, name, data_dir, data_files, split, columns, fraction}``
    (``distalign.data.mixture``)."""
    test_split_size: float | None = None
    """A share (or a count, when >= 1) of the ``datasets`` mixture held out as its test split,
    drawn with ``seed``."""


@dataclasses.dataclass(frozen=True)
class MixturePart:
    """One entry of ``datasets:``, with the keys of TRL's ``DatasetConfig``."""

    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: Any = None
    split: str = "train"
    columns: tuple[str, ...] | None = None
    fraction: float | None = None

    @property
    def split_name(self) -> str:
        """The split a slice of ``split`` (``train[:10%]``) is cut from."""
        return self.split.split("[")[0]

    def label(self) -> str:
        """How the part is named among the mixture's sources."""
        where = self.path
        if self.data_dir:
            where += f" ({self.data_dir})"
        if self.data_files is not None:
            where += f" ({files_text(self.data_files)})"
        if self.name:
            where += f" [{self.name}]"
        return f"{where}[{self.split}]"


def files_text(files: Any) -> str:
    """data_files in a few words: a list of more than two files by its count."""
    if isinstance(files, str):
        return files
    if isinstance(files, dict):
        return ", ".join(f"{k}: {files_text(v)}" for k, v in files.items())
    names = [str(f.get("path") if isinstance(f, dict) else f) for f in files]
    return ", ".join(names) if len(names) <= 2 else f"{len(names)} files"


def parse_parts(items: Any, where: str = "datasets") -> list[MixturePart]:
    """``datasets:`` as given (mappings, or ``MixturePart``/TRL ``DatasetConfig`` objects) ->
    its parts, or a ConfigError naming the entry and key that is wrong."""
    from distalign.config import ConfigError

    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: a list of data sets (each with path, and optionally "
                          f"name, data_dir, data_files, split, columns, fraction), got "
                          f"{type(items).__name__}")  # fmt: skip
    keys = [f.name for f in dataclasses.fields(MixturePart)]
    parts, errors = [], []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            item = {k: getattr(item, k) for k in keys if hasattr(item, k)}  # TRL's DatasetConfig
        if isinstance(item, str):  # a bare source
            item = {"path": item}
        if not isinstance(item, dict):
            errors.append(f"{at}: a mapping with path (and name, data_dir, data_files, split, "
                          f"columns, fraction), got {type(item).__name__}")  # fmt: skip
            continue
        for key in item:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                maybe = f". Did you mean '{close[0]}'?" if close else ""
                errors.append(f"{at}: Key '{key}' not in a data set's keys {keys}{maybe}")
        if any(key not in keys for key in item):
            continue
        value = dict(item)
        problems = _part_problems(value)
        errors.extend(f"{at}: {p}" for p in problems)
        if problems:
            continue
        if isinstance(value.get("columns"), str):
            value["columns"] = [value["columns"]]
        if value.get("columns") is not None:
            value["columns"] = tuple(value["columns"])
        value["split"] = value.get("split") or "train"
        parts.append(MixturePart(**value))
    if not errors and not parts:
        errors.append(f"{where}: no data set in the list")
    fractions = [p.fraction for p in parts]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            errors.append(f"{where}: fraction is set for some data sets and not others: set it "
                          "for all or none (as TRL requires)")  # fmt: skip
        elif sum(fractions) <= 0:
            errors.append(f"{where}: the fractions add up to 0; give at least one above 0")
    if errors:
        raise ConfigError("\n".join(errors))
    return parts


def _part_problems(item: dict) -> list[str]:
    """What is wrong with one entry's values."""
    problems = []
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        builders = ", ".join(FILE_BUILDERS)
        problems.append(f"path: a hub id, a local file or folder, or a builder ({builders}) "
                        f"with data_files; got {path!r}")  # fmt: skip
    for key in ("name", "data_dir", "split"):
        if item.get(key) is not None and not isinstance(item[key], str):
            problems.append(f"{key}: a string, got {item[key]!r}")
    files = item.get("data_files")
    if files is not None and not _files_shape(files):
        problems.append("data_files: a path or pattern, a list of them, or a mapping of split "
                        f"-> paths, got {files!r}")  # fmt: skip
    columns = item.get("columns")
    if columns is not None and not (
        isinstance(columns, str)
        or (isinstance(columns, list | tuple) and all(isinstance(c, str) for c in columns))
    ):
        problems.append(f"columns: a list of column names, got {columns!r}")
    fraction = item.get("fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float) or fraction < 0
    ):
        problems.append(f"fraction: a share >= 0 of the mixture, got {fraction!r}")
    if (
        isinstance(path, str)
        and path in FILE_BUILDERS
        and files is None
        and not item.get("data_dir")
    ):
        problems.append(f"path {path!r} is datasets' builder of {path} files: give data_files "
                        "(or data_dir), or the file's own path as path")  # fmt: skip
    return problems


def _files_shape(files: Any) -> bool:
    if isinstance(files, str):
        return True
    if isinstance(files, list | tuple):
        return all(isinstance(f, str) for f in files) or all(isinstance(f, dict) for f in files)
    if isinstance(files, dict):
        return all(isinstance(k, str) and _files_shape(v) for k, v in files.items())
    return False


class Mixture(str):
    """A mixture of sources where a config's ``dataset_name`` goes. It is a string, its
    description (``datasets: a.jsonl[train] + org/set (helpful-base)[train]``), so that every
    place that names a source names it so and a saved config holds it; its rows are read
    through ``data.load.iter_source_rows`` with the splits ``train`` and, with
    ``test_split_size``, ``test``."""

    parts: tuple[MixturePart, ...]
    test_split_size: float | int | None
    seed: int

    def __new__(cls, parts, test_split_size=None, seed=0):
        text = "datasets: " + " + ".join(p.label() for p in parts)
        if len(text) > LONGEST_NAME:  # a name, not a listing (each part is logged as read)
            first = parts[0].label()
            first = first if len(first) < LONGEST_NAME // 2 else first[: LONGEST_NAME // 2] + "…"
            text = f"datasets: {first}" + (f" + {len(parts) - 1} more" if len(parts) > 1 else "")
        self = super().__new__(cls, text)
        self.parts = tuple(parts)
        self.test_split_size = test_split_size
        self.seed = seed
        self._splits = None
        return self

    def __reduce__(self):  # copied and pickled as the parts it is made of
        return (Mixture, (self.parts, self.test_split_size, self.seed))

    def split_names(self) -> list[str]:
        return ["train"] if self.test_split_size is None else ["train", "test"]

    def hub_ids(self) -> list[str]:
        """The parts that are hub data sets (for a model card's ``datasets``)."""
        from distalign.data.load import is_hub_id

        return [p.path for p in self.parts if p.path not in FILE_BUILDERS and is_hub_id(p.path)]

    def rows(self, split: str) -> Iterator[tuple[str, Any]]:
        """(location, raw row) of a split of the mixture. The sources are read once for both
        splits, and a split's rows kept until they have been read whole."""
        from distalign.data.files import SPLIT_HINT, MissingSplitError

        if split not in self.split_names():
            why = "" if self.test_split_size is not None else ", and test with test_split_size"
            raise MissingSplitError(f"{self}: no split {split!r} (a mixture has "
                                    f"{self.split_names()}{why}); {SPLIT_HINT}")  # fmt: skip
        if self._splits is None or split not in self._splits:
            self._splits = self._read()
        yield from self._splits[split]
        # read whole: kept no longer (a look at its first rows keeps it for the reading)
        self._splits.pop(split, None)

    def _read(self) -> dict[str, list]:
        read = [_located(part, i) for i, part in enumerate(self.parts)]
        if self.parts[0].fraction is not None:  # TRL's rule: shares of the largest mixture
            read = _shares(read, [p.fraction for p in self.parts])
        for i, (part, rows) in enumerate(zip(self.parts, read, strict=True)):
            log.info("datasets[%d] %s: %d rows", i, part.label(), len(rows))
        rows = [row for part in read for row in part]
        if not rows:
            from distalign.data.files import DataSourceError

            raise DataSourceError(f"{self}: no rows")
        if self.test_split_size is None:
            return {"train": rows}
        return dict(zip(("train", "test"), _held_out(rows, self.test_split_size, self.seed),
                        strict=True))  # fmt: skip


class PartLocation(str):
    """A row's location (its file and row) that knows which entry of the mixture gave it, so
    that each source is read in its own format (``part_of``)."""

    part: int

    def __new__(cls, where: str, part: int):
        self = super().__new__(cls, where)
        self.part = part
        return self

    def __reduce__(self):
        return (PartLocation, (str(self), self.part))


def part_of(where: Any) -> int | None:
    """The mixture entry a row's location names (``PartLocation``); None for any other
    source's rows, all of one data set."""
    return where.part if isinstance(where, PartLocation) else None


def _shares(read: list[list], fractions: list[float]) -> list[list]:
    """TRL's ``fraction``: normalised weights, and the largest mixture no source must be
    repeated for; each source gives its first ``round(weight * total)`` rows."""
    weights = [f / sum(fractions) for f in fractions]
    total = min(len(rows) / w for rows, w in zip(read, weights, strict=True) if w > 0)
    return [rows[: round(w * total)] for rows, w in zip(read, weights, strict=True)]


def _held_out(rows: list, size: float | int, seed: int) -> tuple[list, list]:
    """``datasets``' ``train_test_split(test_size=size, seed=seed)`` of ``rows``: the same
    rows for the same seed, its own checks of ``size``."""
    import datasets

    from distalign.data.files import DataSourceError

    if isinstance(size, float) and size >= 1 and size.is_integer():
        size = int(size)  # a count (the config reads every number as a float)
    index = datasets.Dataset.from_dict({"i": list(range(len(rows)))})
    try:
        split = index.train_test_split(test_size=size, seed=seed)
    except ValueError as e:
        raise DataSourceError(f"test_split_size {size!r} of {len(rows)} rows: {e}") from None
    return tuple([rows[i] for i in split[name]["i"]] for name in ("train", "test"))


def _located(part: MixturePart, index: int) -> list:
    """A part's rows, each location knowing its part (``PartLocation``), with only its
    ``columns``; a column no row has is an error, as ``select_columns`` has it (a row without
    one that others have gets null, as datasets' table gives it)."""
    rows = list(part_rows(part))
    keep = part.columns
    if keep is not None:
        from distalign.data.files import DataSourceError

        seen = {key for _, row in rows if isinstance(row, dict) for key in row}
        if missing := [c for c in keep if c not in seen]:
            raise DataSourceError(f"datasets[{index}] {part.label()}: no column {missing} (its "
                                  f"rows have {sorted(seen)})")  # fmt: skip
    return [
        (PartLocation(where, index),
         {c: row.get(c) for c in keep} if keep is not None and isinstance(row, dict) else row)
        for where, row in rows
    ]  # fmt: skip


def part_rows(part: MixturePart) -> Iterator[tuple[str, Any]]:
    """(location, raw row) of one entry: a source as ``dataset_name`` reads it, or files
    named by ``data_dir`` / ``data_files`` (a local folder's, a builder's or the hub's)."""
    from distalign.data.load import (
        iter_source_rows,
        read_files,
        read_hub,
        resolve_source,
        slicing,
        split_rows,
    )

    if part.data_files is None and part.data_dir is None:
        yield from iter_source_rows(part.path, part.split, name=part.name)
        return
    from distalign.data.files import DataSourceError, data_files_of, local_files

    source = part.path
    folder = Path(resolve_source(source)).expanduser()
    builder = source in FILE_BUILDERS  # as datasets reads it, over a folder of that name
    remote = any("://" in f for f in patterns_of(part.data_files))
    if (not builder and not folder.is_dir()) or remote:
        if folder.is_file() and not builder:
            raise DataSourceError(f"{source}: a file; data_dir and data_files name files "
                                  "inside a folder, a builder (json, csv, …) or a hub data "
                                  "set")  # fmt: skip
        options = {"data_dir": part.data_dir, "data_files": part.data_files, "name": part.name}
        yield from read_hub(source, part.split, **{k: v for k, v in options.items() if v})
        return
    base = Path.cwd() if builder else folder
    if part.data_dir:
        base = base / Path(part.data_dir).expanduser()
        if not base.is_dir():
            raise DataSourceError(f"{source}: data_dir {part.data_dir!r} is not a folder "
                                  f"({base})")  # fmt: skip
    what = "data_files"
    if builder and source not in OWN_READERS:  # text, arrow, pandas: datasets reads the files
        split = part.split_name
        files = [str(f) for f in data_files_of(base, part.data_files or "**", split, what)]
        yield from read_hub(source, part.split, data_files={split: files})
        return

    def read(split: str) -> list:
        files = (
            data_files_of(base, part.data_files, split, what)
            if part.data_files is not None
            else local_files(base, split)
        )
        return list(read_files(files))

    if slicing(part.split):
        yield from split_rows(part.split, read, str(base))
    else:
        yield from read(part.split)


def patterns_of(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [p for v in files.values() for p in patterns_of(v)]
    return [p for f in files for p in (patterns_of(f.get("path")) if isinstance(f, dict) else [f])]


def mixture_sources(items: Any) -> list[tuple[str, str]]:
    """(source, split) of each entry of a ``datasets`` (or a mixture's parts), as
    ``dataset_name`` would name it: a local folder with its ``data_dir``, each file a builder
    reads (for a run's held-out data, or a comparison, to tell a run's training rows; an entry
    of a mixture gives some of that source's rows)."""
    found = []
    for part in parse_parts(items):
        source = part.path
        if part.data_dir and Path(source).expanduser().is_dir():
            source = str(Path(source) / part.data_dir)
        files = part.data_files
        if isinstance(files, dict):  # the split's files, each read whole
            files = files.get(part.split_name, [])
        if source in FILE_BUILDERS and files:
            files = [files] if isinstance(files, str) else files
            found += [(str(Path(part.data_dir or "", f)), "train") for f in files
                      if isinstance(f, str)]  # fmt: skip
            continue
        found.append((source, part.split))
    return found


def resolve_mixture(cfg: Any, default_name: Any) -> None:
    """A training config's ``datasets`` (TRL's mixture) read in place of ``dataset_name``, as
    TRL's scripts read it, with a warning where a ``dataset_name`` of its own is set too
    (``default_name``: the field's default). ``test_split_size`` alone, as in TRL, splits
    nothing: said."""
    from distalign.config import config_warning

    if not cfg.datasets:
        if isinstance(cfg.dataset_name, Mixture):  # dataclasses.replace(cfg, datasets=None)
            from distalign.config import ConfigError

            raise ConfigError(f"dataset_name is the mixture of an earlier datasets "
                              f"({cfg.dataset_name}), and datasets is not set now: give "
                              "dataset_name, or datasets")  # fmt: skip
        if cfg.test_split_size is not None:
            config_warning(log, "test_split_size=%r acts on a `datasets` mixture only, as in "
                           "TRL; for dataset_name, give dataset_test_split (or slices: "
                           "dataset_train_split=train[:90%%] dataset_test_split=train[90%%:])",
                           cfg.test_split_size)  # fmt: skip
        return
    mixture = Mixture(parse_parts(cfg.datasets), cfg.test_split_size, cfg.seed)
    own = cfg.dataset_name
    # a saved config holds the mixture's name as its dataset_name: no other source
    if own not in (None, default_name, mixture) and not isinstance(own, Mixture):
        config_warning(log, "both datasets and dataset_name (%s) are given: the mixture is "
                       "read and dataset_name is not, as in TRL's scripts",
                       own if isinstance(own, str) else "a Dataset")  # fmt: skip
    if getattr(cfg, "dataset_streaming", False):
        config_warning(
            log,
            "dataset_streaming does nothing beside datasets: a mixture reads "
            "every row of its sources (its fractions and held-out draw need them)",
        )
    for key in ("dataset_config", "dataset_revision"):
        if getattr(cfg, key, None) is not None:
            config_warning(log, "%s=%r does nothing beside datasets (each data set takes its "
                           "own name)", key, getattr(cfg, key))  # fmt: skip
    cfg.dataset_name = mixture
