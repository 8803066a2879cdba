"""Preference data by hub id or local file -> a normalised ``datasets.Dataset``.

    from distalign.data import load_preferences
    ds = load_preferences("pairs.jsonl.gz")                        # format detected
    ds = load_preferences("esfrankel17/HelpSteer2_binarized", split="average_rating_split")
    ds = load_preferences("hh.jsonl", format="hh", skip_bad_rows=True)
    ds = load_preferences("org/pairs", "test", name="helpful", revision="v1.0")  # config, tag

Local files: ``.jsonl``, ``.json`` (a list of rows, ``{"data": [...]}``, or JSON lines),
``.parquet``, ``.csv``, each optionally ``.gz``. A local folder is read like a hub dataset: the
file named after the split (``train.jsonl.gz``, ``test.parquet``, …). Local files are read by
our own readers (``data/files.py``) rather than ``datasets``' builders so that an error can
name the line of a broken row. A source without rows is a ``DataSourceError``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from distalign.data.files import (
    READERS,
    SPLIT_HINT,
    SUFFIXES,
    DataSourceError,
    MissingSplitError,
    config_files,
    local_files,
    strip_gz,
)
from distalign.data.formats import (
    FORMATS,
    REPLY_COLUMNS,
    PreferenceFormatError,
    absent,
    as_reply,
    conversation_column,
    detect_format,
    holds_hh_turn,
    ignored_columns,
    is_conversational,
    is_transcript,
    normalise_row,
    prompt_replaced,
    read_prompt,
    read_reply,
    reply_turns,
    row_format,
    sharegpt_prompt,
    text_replies,
    unread_prompt_column,
    unread_scores,
)
from distalign.data.mixture import Mixture, part_of
from distalign.hub import offline_if_unreachable

log = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"),
        "chosen_turns": datasets.Value("string"),  # JSON text of a reply's messages, or null
        "rejected_turns": datasets.Value("string"),
        "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"),
        "margin": datasets.Value("float64"),
        "source_row": datasets.Value("int64"),
        "p_chosen": datasets.Value("float64"),
        "p_chosen_by_group": [{"group": datasets.Value("string"), "p": datasets.Value("float64")}],
        # JSON text (one column type, whatever the tools look like): each prompt message's
        # keys beside role and content (tool calls), and the row's tools and template arguments
        "prompt_extras": datasets.Value("string"),
        "template_kwargs": datasets.Value("string"),
    }
)


# Names that resolve to data shipped with distalign (checked after local paths).
DATA_ALIASES = {"gold": Path(__file__).resolve().parents[1] / "gold" / "data"}


def is_gold(source: Any) -> bool:
    """Whether a data source is the shipped gold benchmark, whose prompts the gold judge can
    score: the alias ``gold`` where no local path of that name is there (a local path comes
    first, as ``resolve_source`` reads it)."""
    return isinstance(source, str) and resolve_source(source) == str(DATA_ALIASES["gold"])


def gold_split(name: str) -> str:
    """``name``, a split of the gold benchmark, or a MissingSplitError naming its two."""
    if name not in ("train", "test"):
        raise MissingSplitError(f"gold: no split {name!r}; the benchmark has train and test")
    return name


def resolve_source(source: str) -> str:
    """A local path stays; an alias (``gold``: the shipped benchmark) becomes its folder."""
    if not Path(source).expanduser().exists() and source in DATA_ALIASES:
        return str(DATA_ALIASES[source])
    return source


def same_source(a: Any, b: Any) -> bool:
    """Two names of one source (data set, reward model, module:function): the same object,
    the same existing folder or file however spelled, or the same hub id."""
    if a is b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False  # a Dataset or a Python callable: nothing else to compare it with
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def slicing(split: Any) -> bool:
    """Whether ``split`` is ``datasets``' split spec of slices or sums (``train[:90%]``,
    ``train[10:20]``, ``train+test``) rather than one split's name."""
    return isinstance(split, str) and any(c in split for c in "[+")


def _split_parts(split: str, where: str) -> tuple[datasets.ReadInstruction, list]:
    """``datasets``' reading of a split spec, and its parts (each with ``splitname``,
    ``from_``, ``to`` and ``unit``: ``%`` or ``abs``), in its own parse."""
    try:
        instruction = datasets.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        raise DataSourceError(
            f"{where}: split {split!r} is not datasets' split syntax (name[from:to], with % "
            f"for a share, joined by +): {e}"
        ) from None
    return instruction, list(instruction._relative_instructions)  # no public accessor


def split_rows(split: str, read: Any, where: str) -> list:
    """The rows a split spec (``slicing``) gives, as ``load_dataset(split=...)`` cuts them:
    ``read(name)`` gives each named split whole, then each part is cut with ``datasets``'
    rounding of shares and the parts joined."""
    instruction, parts = _split_parts(split, where)
    whole = {name: read(name) for name in dict.fromkeys(p.splitname for p in parts)}
    sizes = {n: len(rows) for n, rows in whole.items()}
    return [
        row for a in instruction.to_absolute(sizes) for row in whole[a.splitname][a.from_ : a.to]
    ]


def _sliced_rows(source: Any, split: str, name: str | None, revision: str | None):
    """The rows of a split spec (``slicing``) of a local or in-memory source, as the hub's
    ``datasets`` gives them. A source of one set of rows is that set under any name, so a
    spec joining two names would read it twice: refused, as a streamed source is (``datasets``
    slices no stream)."""
    where = source if isinstance(source, str) else "the data set"
    if isinstance(source, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise DataSourceError(
            f"split {split!r}: a streamed data set is not sliced (as datasets slices no "
            "stream); take its rows with .take() / .skip()"
        )
    names = {p.splitname for p in _split_parts(split, where)[1]}
    if len(names) > 1 and one_set_of_rows(source):
        raise DataSourceError(
            f"{where}: one set of rows, read whole for any split name; split {split!r} joins "
            f"{sorted(names)}, which would read it twice"
        )

    def read(part: str) -> list:
        return list(iter_source_rows(source, part, name=name, revision=revision))

    cut = split_rows(split, read, where)
    if not cut:
        raise DataSourceError(f"{where}: split {split!r} holds no rows")
    yield from cut


def _rows_shared(a: str, b: str, one_set: bool) -> bool:
    """Whether splits ``a`` and ``b`` (names, or ``slicing`` specs) take rows in common (a
    source of one set of rows: every name is that set). Ranges of one kind (shares, or
    positions from the start) are compared exactly; where they mix, or count from the end,
    the sizes decide, which are not known here: shared, to be safe."""
    ranges = []
    for spec in (a, b):
        if not slicing(spec):  # a split's name, whole (held-out is no spec datasets parses)
            ranges.append([("" if one_set else spec, "abs", 0, None)])
            continue
        ranges.append([("" if one_set else p.splitname, p.unit, p.from_ or 0, p.to)
                       for p in _split_parts(spec, "split")[1]])  # fmt: skip
    cut = [r for rs in ranges for r in rs if r[2] != 0 or r[3] is not None]
    if len({r[1] for r in cut}) > 1 or any(r[2] < 0 or (r[3] or 0) < 0 for r in cut):
        return any(x[0] == y[0] for x in ranges[0] for y in ranges[1])
    end = float("inf")
    return any(
        x[0] == y[0] and max(x[2], y[2]) < min(end if x[3] is None else x[3],
                                              end if y[3] is None else y[3])
        for x in ranges[0]
        for y in ranges[1]
    )  # fmt: skip


def is_hub_id(source: Any) -> bool:
    """Whether ``source`` names a hub data set: a string that is no local path (nor alias),
    and does not look like one (``./x``, ``/x``, ``~/x``, a data file's suffix)."""
    if not isinstance(source, str) or isinstance(source, Mixture):
        return False
    path = Path(resolve_source(source)).expanduser()
    local = source.startswith((".", "/", "~")) or Path(strip_gz(path)).suffix in SUFFIXES
    return not path.exists() and not local


def has_no_splits(source: str) -> bool:
    """Whether a local source is one set of rows, every split the same: one file, or one
    ``Dataset`` written by ``save_to_disk``."""
    path = Path(resolve_source(source)).expanduser()
    return path.is_file() or (path / "state.json").is_file()


def split_to_name(source: Any, split: str) -> str | None:
    """The split to name beside a data source: none for a local one of one set of rows (one
    file) read whole, but a slice of it (``train[90%:]``)."""
    whole = isinstance(source, str) and has_no_splits(source) and not slicing(split)
    return None if whole else split


def one_set_of_rows(source: Any) -> bool:
    """Whether ``source`` has no splits to pick from: one local file or saved ``Dataset``
    (``has_no_splits``), or a ``datasets.Dataset`` or rows handed over in Python (a
    ``DatasetDict`` and a hub id have splits)."""
    if isinstance(source, str):
        return has_no_splits(source)
    return not isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict)


def evaluates_on_training_data(
    source: Any,
    eval_source: Any = None,
    train_split: str | None = None,
    test_split: str | None = None,
) -> bool:
    """Whether the held-out set is the training set itself: the same source (no
    ``eval_dataset_name``, or one naming the same data) and either no splits to pick from (one
    local file, or a ``datasets.Dataset``) or the same split named for both. Of a mixture
    (TRL's ``datasets``), held-out data that one of its sources gave training rows."""
    if isinstance(source, Mixture) and eval_source is not None and eval_source is not source:
        from distalign.data.mixture import mixture_sources

        return any(evaluates_on_training_data(part, eval_source, part_split, test_split)
                   for part, part_split in mixture_sources(source.parts))  # fmt: skip
    if eval_source is not None and not same_source(source, eval_source):
        return False
    if train_split is not None and train_split == test_split:
        return True
    one_set = one_set_of_rows(source)
    if (
        train_split is not None
        and test_split is not None
        and (slicing(train_split) or slicing(test_split))
    ):  # train[:90%] and train[90%:] of one file are apart; train and train[:10%] are not
        return _rows_shared(train_split, test_split, one_set)
    return one_set


def warn_if_evaluating_on_training_data(cfg: Any) -> None:
    """Log a warning when a training config's held-out set ``evaluates_on_training_data``:
    nothing else would tell a user that figures called held-out are measured on the pairs
    (or prompts) the model was trained on."""
    if evaluates_on_training_data(*held_out_of(cfg)):
        name = cfg.dataset_name if isinstance(cfg.dataset_name, str) else "the Dataset given"
        one_file = isinstance(cfg.dataset_name, str) and has_no_splits(cfg.dataset_name)
        log.warning(
            "the held-out figures are measured on the training data (%s): set "
            "eval_dataset_name%s to held-out data",
            name,  # a single file has no splits, but slices: train[:90%] and train[90%:]
            " (or slice the file: dataset_train_split=train[:90%] dataset_test_split=train[90%:])"
            if one_file
            else ", or dataset_test_split,",
        )


def held_out_or_training(cfg: Any, default_split: str, load: Any, training: Any = None) -> Any:
    """``load(split)`` of a training config's held-out split. A data set without the default
    ``test`` split (none named on purpose: ``dataset_test_split`` at ``default_split`` and no
    ``eval_dataset_name``) evaluates on its training split (``training`` where given, else
    loaded), as one file does, with a warning. ``cfg.held_out_split`` (not a key: the saved
    config keeps the user's) then names that split, so every table says where it measured.
    A split or held-out source named on purpose must be there: a typo stops."""
    from distalign.config import config_warning

    cfg.__dict__.pop("held_out_split", None)  # an earlier run's on the same config object
    try:
        return load(cfg.dataset_test_split)
    except MissingSplitError as e:
        if cfg.eval_dataset_name is not None or cfg.dataset_test_split != default_split:
            raise
        config_warning(log, "%s; the run evaluates on its training data (give "
                       "dataset_test_split or eval_dataset_name for held-out data)", e)  # fmt: skip
        cfg.held_out_split = cfg.dataset_train_split
        return load(cfg.dataset_train_split) if training is None else training


def _reason_key(reason: str) -> str:
    """A malformed row's reason as it is counted: without the value the row held (``, got int
    3``) and without a closing parenthesis that explains or hints (nested ones too), but with
    one that lists the values taken (``one of ('system', …)``)."""
    reason = re.sub(r"[,;] got .*$", "", reason, flags=re.S).rstrip()
    if reason.endswith(")"):
        depth = 0
        for i in range(len(reason) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(reason[i], 0)
            if depth == 0:
                if reason[i + 1 : i + 2] not in ("'", '"') and reason[i - 1 : i] == " ":
                    reason = reason[: i - 1]
                break
    return reason.strip()


def keep_held_out_split(given: Any, resolved: Any) -> None:
    """The split ``held_out_or_training`` settled on for a run's copy of its config, on the
    config its caller holds as well, so that the tables printed after the run name it."""
    if "held_out_split" in vars(resolved):
        given.held_out_split = resolved.held_out_split
    else:  # an earlier run's, on the same config object
        vars(given).pop("held_out_split", None)


def held_out_split(cfg: Any) -> str:
    """The split a training config's held-out figures come from (``held_out_or_training``)."""
    return getattr(cfg, "held_out_split", None) or cfg.dataset_test_split


def held_out_of(cfg: Any) -> tuple[Any, Any, str, str]:
    """(training source, held-out source, training split, held-out split) of a config."""
    return (
        cfg.dataset_name,
        cfg.eval_dataset_name,
        cfg.dataset_train_split,
        held_out_split(cfg),
    )


@dataclass
class LoadReport:
    """What happened to each source row."""

    source: str
    format: str = ""
    rows: int = 0
    kept: int = 0
    identical: int = 0
    empty_replies: int = 0  # '' (or blank) chosen/rejected replies among the pairs kept
    empty_prompts: int = 0  # pairs kept whose prompt is one empty user turn (two texts that
    # share no beginning, TRL's standard implicit prompt)
    replies_set_aside: int = 0  # prompt-only: conversations whose closing reply was not kept
    transcripts: int = 0  # rows whose text is an Anthropic HH transcript, parsed into turns
    conversations: int = 0  # rows of message lists (TRL's conversational data)
    later_turns: int = 0  # HH pairs whose reply goes on with a "\n\nHuman:" turn
    prompts_replaced: int = 0  # string prompts another than the conversations' last user turn
    unread_scores: int = 0  # pairs kept whose rating columns hold no number (NaN, "N/A")
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # first few full error messages
    ignored: Counter = field(default_factory=Counter)  # column the template is not given -> rows
    prompt_column: str | None = None  # a first row's prompt-like column under another name

    def ignored_note(self, keys: Iterable[str] | None = None) -> str | None:
        """What TRL gives the chat template and distalign does not (of ``keys``, default
        all), with its rows: the ``tools`` and ``chat_template_kwargs`` columns of rows read as
        prompts."""
        keys = set(self.ignored if keys is None else keys)
        items = [f"{k!r} in {n} rows" for k, n in self.ignored.items() if k in keys and n]
        if not items:
            return None
        why = (
            "prompts are rendered without a row's own; rl train, generate and eval compare take "
            "chat_template_kwargs as a key, as TRL's GRPO and RLOO do"
        )
        return f"{self.source}: {', '.join(items)}: not given to the chat template ({why})"

    def skipped_note(self) -> str | None:
        """One line on the rows skipped as malformed, by reason; None when none were."""
        if not self.skipped:
            return None
        reasons = "; ".join(f"{n} × {reason}" for reason, n in self.skipped.most_common())
        where = self.source if isinstance(self.source, str) else "the data set"
        return (
            f"{where}: {sum(self.skipped.values())} of {self.rows} rows skipped as malformed: "
            f"{reasons}"
        )

    def skip(self, error: PreferenceFormatError) -> None:
        """Count a malformed row under its reason: without the value it got (``got int 3``)
        or a parenthesis that explains, so that rows broken alike count together (the first
        few keep their whole message in ``examples``)."""
        field = re.sub(r"\[\d+\]", "[i]", error.field) if error.field else None  # chosen[3].role
        self.skipped[
            _reason_key(f"field {field!r}: {error.reason}" if field else error.reason)
        ] += 1
        self.examples.append(str(error))

    def summary(self) -> str:
        lines = [
            f"{self.source}: format {self.format}, {self.rows} rows, {self.kept} pairs kept",
            f"  identical chosen/rejected: {self.identical} (dropped)",
            f"  empty replies: {self.empty_replies} (kept)",
            f"  empty prompts: {self.empty_prompts} (kept)",
            f"  skipped as malformed: {sum(self.skipped.values())}",
        ]
        lines += [f"    {n} × {reason}" for reason, n in self.skipped.most_common()]
        if self.later_turns:
            lines.append(
                f"  HH pairs whose reply goes on with a '\\n\\nHuman:' turn: {self.later_turns} "
                "(kept: the two transcripts part before their last turn, or a reply writes the "
                "marker; a reply is all after the shared turns, as TRL's hh-rlhf script reads it)"
            )
        if self.unread_scores:
            lines.append(
                f"  pairs whose rating columns hold no number (NaN, text): {self.unread_scores} "
                "(kept, their ratings read as missing; only margin_scale and rating_weight "
                "read them)"
            )
        if self.empty_prompts and self.prompt_column:
            lines.append(f"  the rows' `{self.prompt_column}` column is not read as the prompt "
                         f"(rename it to `prompt`?)")  # fmt: skip
        if self.prompts_replaced:
            lines.append(
                f"  prompts read from the conversations, not the prompt column: "
                f"{self.prompts_replaced} (kept: its text is not the conversations' last user "
                "turn; whole conversations win, as in TRL's maybe_extract_prompt)"
            )
        lines += [f"    e.g. {e}" for e in self.examples[:3]]
        lines += [f"  {note}"] if (note := self.ignored_note()) else []
        return "\n".join(lines)


def _some_rows(
    rows: Iterable[tuple[str, Any]], label: str, note: str = ""
) -> Iterator[tuple[str, Any]]:
    """``rows``, or a DataSourceError naming the source when there are none."""
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataSourceError(f"{label}: no rows{note}")


def hub_options(cfg: Any, own: bool = True) -> dict[str, Any]:
    """What a config's data keys give ``load_dataset``: its config name and revision (``own``:
    for ``dataset_name`` itself, not another source), and streaming where it asks for it."""
    stream = {"streaming": True} if getattr(cfg, "dataset_streaming", False) else {}
    return (
        {"name": cfg.dataset_config, "revision": cfg.dataset_revision, **stream} if own else stream
    )


def _first_line(e: BaseException) -> str:
    """An error's message as one line (its type where it has none)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_hub(source: str, split: str, **options: Any) -> Iterator[tuple[str, Any]]:
    """(location, row) of a hub data set's split, ``options`` as ``load_dataset`` takes them
    (``name``, ``revision``, ``data_dir``, ``data_files``): only those given, so that
    ``load_dataset`` sees the call it would from the user."""
    why = offline_if_unreachable()
    try:
        ds = datasets.load_dataset(source, split=split, **options)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        # Offline, unknown id, unknown config name or split: one line, not a traceback.
        first = _first_line(e)
        # loaded (from the hub or its cache); the split is not there (a stream's wording 2nd)
        known = re.search(r"Unknown split \"[^\"]*\"\. Should be one of (\[.*\])", first)
        known = known or re.search(r"Bad split: .*\. Available splits: (\[.*\])", first)
        if known:
            raise MissingSplitError(f"{source}: no split {split!r} (it has {known.group(1)}); "
                                  f"{SPLIT_HINT}") from None  # fmt: skip
        reached = f"; the hub cannot be reached: {why}" if why else ""
        # offline, a relative path mistyped reads as a hub id: say where it was looked for
        looks_local = source.count("/") > 1 or Path(source.split("/")[0]).is_dir()
        local = f" (nor is it a local path from {Path.cwd()})" if why and looks_local else ""
        raise DataSourceError(
            f"{source}: cannot load from the hub ({first}){reached}{local}"
        ) from None
    i = 0
    try:  # a stream downloads as it is read: a connection lost then is said as one line too
        for i, row in enumerate(ds):
            yield f"{source}[{split}] row {i}", row
    except (ConnectionError, OSError) as e:
        raise DataSourceError(f"{source}[{split}]: reading stopped after row {i} "
                              f"({_first_line(e)})") from None  # fmt: skip


def iter_source_rows(
    source: str | datasets.Dataset,
    split: str | None = None,
    *,
    name: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw row) for a local file/folder (a folder written by ``save_to_disk``
    too), a data alias, a hub dataset (with
    its config ``name`` and ``revision``) or a ``datasets.Dataset`` given from Python. A source
    without rows raises DataSourceError. ``streaming``: a hub data set's rows as they come,
    nothing downloaded beyond those read (local files are read so anyway)."""
    if streaming and "[" in (split or "") and is_hub_id(source):  # train+test streams
        raise DataSourceError(f"{source}: split {split!r}: a streamed data set is not sliced "
                              "(as datasets slices no stream); give max_train_samples / "
                              "max_eval_samples for its first rows")  # fmt: skip
    if slicing(split) and not is_hub_id(source):  # the hub's datasets slices itself
        yield from _sliced_rows(source, split, name, revision)
        return
    if isinstance(source, Mixture):  # TRL's ``datasets``: each part names its own config
        yield from source.rows(split or "train")
        return
    # datasets' name of a data set's only config, "default", asks nothing of a local one
    hub_only = name not in (None, "default") or revision is not None
    # what load_dataset returns without a split (streaming=True: the iterable kinds)
    part = ""  # a DatasetDict's split, named in each row's location
    if isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split is None and "train" in source:  # as a file source's default split
            split = "train"
        if split not in source:
            kind = type(source).__name__
            raise MissingSplitError(
                f"the {kind} has no split {split!r} (it has {list(source)}); {SPLIT_HINT}"
            )
        source, part = source[split], f"[{split}]"
    if isinstance(source, datasets.IterableDataset):  # streamed: read as it comes
        if hub_only:
            raise DataSourceError("a config name or revision applies to hub datasets only")
        rows = ((f"streamed dataset{part} row {i}", r) for i, r in enumerate(source))
        yield from _some_rows(rows, "streamed dataset")
        return
    if isinstance(source, datasets.Dataset):
        if hub_only:
            raise DataSourceError("a config name or revision applies to hub datasets only")
        rows = ((f"dataset{part} row {i}", r) for i, r in enumerate(source))
        yield from _some_rows(rows, "dataset")
        return
    if is_gold(source):
        gold_split(split or "train")
    source = resolve_source(source)
    path = Path(source).expanduser()
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        if hub_only:  # a folder of ``save_to_disk``: read as ``load_from_disk`` gives it
            raise DataSourceError(f"{source}: a local data set; a config name or revision "
                                  "applies to hub datasets only")  # fmt: skip
        saved = datasets.load_from_disk(str(path))
        if not isinstance(saved, datasets.DatasetDict):
            _say_split_unused(source, split)
        where = (
            f"{source}[{split or 'train'}]" if isinstance(saved, datasets.DatasetDict) else source
        )
        if isinstance(saved, datasets.DatasetDict) and (split or "train") not in saved:
            raise MissingSplitError(f"{source}: no split {split or 'train'!r} (it has "
                                  f"{list(saved)}); {SPLIT_HINT}")  # fmt: skip
        rows = iter_source_rows(saved, split or "train")
        yield from ((f"{where} {loc.removeprefix('dataset ')}", row) for loc, row in rows)
        return
    if path.exists():
        # a copy of a hub repository whose card lists configs: its config's files, as
        # load_dataset(folder, name=dataset_config) finds them (TRL's scripts pass that)
        files = config_files(path, name, split) if path.is_dir() and revision is None else None
        if files is None and hub_only:
            raise DataSourceError(
                f"{source}: a local source; a config name or revision applies to hub datasets only"
            )
        if path.is_file():
            _say_split_unused(source, split)
        yield from read_files(files or local_files(path, split))  # a file, or a split's shards
        return
    if not is_hub_id(source):  # a path, by its look, that is not there
        raise DataSourceError(f"{source}: no such file")
    # A hub id. Unreachable offline, but this is the path users with internet take.
    split = split or "train"
    options = {k: v for k, v in (("name", name), ("revision", revision)) if v is not None}
    options.update({"streaming": True} if streaming else {})
    yield from _some_rows(read_hub(source, split, **options), f"{source}[{split}]")


def read_files(files: Iterable[Path]) -> Iterator[tuple[str, Any]]:
    """(location, row) of local files, each by the reader of its suffix; a file without rows
    is a DataSourceError."""
    for file in files:
        suffix = Path(strip_gz(file)).suffix
        if suffix not in READERS:
            raise DataSourceError(
                f"{file}: unknown file type {suffix!r}; expected one of {SUFFIXES} (optionally .gz)"
            )
        note = " (empty file)" if file.stat().st_size == 0 else ""
        yield from _some_rows(READERS[suffix](file), str(file), note)


_SAID_UNUSED: set[tuple[str, str]] = set()


def _say_split_unused(source: str, split: str | None) -> None:
    """A source of one set of rows (one file, a saved ``Dataset``) has no splits: each is read
    whole. Say so, once per source and split, when a split other than the commands' defaults
    (``train``, and ``test`` for held-out data, which the training commands already say) was
    named for it: ``datasets`` would refuse it, and reading the whole file instead must not
    pass unsaid. The held-out case (``test``) is said where the training commands load it."""
    if split in (None, "train", "test") or (source, split) in _SAID_UNUSED:
        return
    _SAID_UNUSED.add((source, split))
    log.warning("%s is one set of rows without splits: read whole for split %r", source, split)


def load_preferences(
    source: str | datasets.Dataset,
    split: str | None = None,
    *,
    name: str | None = None,
    revision: str | None = None,
    format: str | None = None,
    skip_bad_rows: bool = False,
    drop_identical: bool = True,
    limit: int | None = None,
    report: LoadReport | None = None,
    source_rows: Iterable[tuple[str, Any]] | None = None,
    streaming: bool = False,
) -> datasets.Dataset:
    """Read preference pairs into the normalised form (see ``distalign.data.formats``).

    Args:
        source: hub id, local file, local folder (file named after the split), ``gold``
            (the shipped gold-judge benchmark; splits ``train`` and ``test``), or a
            ``datasets.Dataset`` with the columns of one of the formats.
        split: dataset split; for hub ids defaults to ``train``.
        name: config (subset) of a hub dataset, ``datasets.load_dataset``'s ``name``.
        revision: branch, tag or commit of a hub dataset.
        format: ``explicit`` | ``implicit`` | ``hh`` | ``sharegpt``; detected from the first
            row when None.
        skip_bad_rows: skip malformed rows (their count and reasons are logged) instead of
            raising on the first one.
        drop_identical: drop pairs whose chosen and rejected replies are equal (they carry no
            preference) and count them in the report; off (prompts read from pairs), they are
            kept and not counted.
        limit: stop after this many kept pairs.
        report: filled with counts when given (rows, pairs kept, identical, empty replies,
            skipped rows and why).
        source_rows: ``source``'s (where, row) pairs when the caller has begun reading them
            (``iter_source_rows``), so that the source is read once.
        streaming: read a hub data set as it comes, so that ``limit`` downloads no more.

    Raises DataSourceError for a source that cannot be read or has no rows, and
    PreferenceFormatError (naming file, row and field) for a malformed row.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    label = source if isinstance(source, str) else "dataset"
    report = report if report is not None else LoadReport(source=label)
    report.source = label
    rows: list[dict[str, Any]] = []
    fmt = format
    # a mixture's sources may each have their own shape (HH beside prompt/chosen/rejected):
    # each source's first row says its format, as one data set's first row says its own
    by_part = format is None and isinstance(source, Mixture)
    part_formats: dict[Any, str] = {}  # each source's detected format (one data set: None's)
    if source_rows is None:
        source_rows = iter_source_rows(
            source, split, name=name, revision=revision, streaming=streaming
        )
    for index, (where, raw) in enumerate(source_rows):
        report.rows += 1
        try:
            if isinstance(raw, Exception):
                raise raw
            if not isinstance(raw, dict):
                raise PreferenceFormatError(
                    where, None, f"expected an object, got {type(raw).__name__}"
                )
            if by_part:  # the format of the row's source, said by its first readable row
                fmt = part_formats.get(part_of(where))
            if fmt is None:
                try:
                    fmt = detect_format(raw)
                except ValueError as e:
                    raise PreferenceFormatError(where, None, str(e)) from None
                part_formats[part_of(where)] = fmt
            if fmt == "implicit" and report.rows == 1:  # a prompt under another name (its
                report.prompt_column = unread_prompt_column(raw)  # column unread, said)
            # an HH pair in a data set detected as text is read as HH (``row_format``)
            read_as = row_format(raw, fmt, detected=format is None)
            row = normalise_row(raw, read_as, where, index, detected=format is None)
        except PreferenceFormatError as e:
            if not skip_bad_rows:
                raise
            report.skip(e)
            continue
        if drop_identical and all(row[f"chosen{k}"] == row[f"rejected{k}"] for k in ("", "_turns")):
            report.identical += 1  # no tie: whitespace apart, the tokens differ (read as
            continue  # prompts, a pair's replies alike are nothing to say)
        report.empty_replies += (not row["chosen"].strip()) + (not row["rejected"].strip())
        report.empty_prompts += all(not m["content"].strip() for m in row["prompt"])
        report.transcripts += is_transcript(raw, read_as)
        report.conversations += is_conversational(raw)
        report.later_turns += read_as == "hh" and any(map(holds_hh_turn, (row["chosen"],
                                                                     row["rejected"])))  # fmt: skip
        report.prompts_replaced += prompt_replaced(raw, row["prompt"])
        report.unread_scores += unread_scores(raw, row)
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    report.format = " + ".join(dict.fromkeys(part_formats.values())) or fmt or "unknown"
    report.kept = len(rows)
    if (report.skipped or report.identical or report.empty_prompts or report.ignored
            or report.later_turns or report.prompts_replaced
            or report.unread_scores):  # fmt: skip
        log.warning(report.summary())
    if not rows:  # from_list([]) cannot match the features' keys
        return datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)
    return datasets.Dataset.from_list(rows, features=FEATURES)


def require_pairs(pairs, report: LoadReport):
    """``pairs``, or a DataSourceError with the load's counts when none are left (every row
    dropped or skipped): said before any model work, not as a crash or a table of NaN."""
    if not len(pairs):
        raise DataSourceError(f"no preference pairs left\n{report.summary()}")
    return pairs


def read_prompt_replies(
    path: str,
    report: LoadReport | None = None,
    as_trained: bool = True,
    skip_bad_rows: bool = False,
) -> tuple[list[dict], list[list[dict]], list[str]]:
    """Rows, chat prompts and replies (texts, or a reply's messages where it has several or
    keys beside its text: ``formats.reply_turns``) of a file with ``prompt`` and a reply
    column, or with a conversation ending with the assistant's turn (the reply): TRL's
    ``messages``, or a ShareGPT row's ``conversations``. ``report`` (when given) counts HH
    transcripts, conversational rows and, with ``skip_bad_rows``, the malformed rows skipped
    (said in a warning) instead of stopping at the first. ``as_trained``: a string prompt and
    reply are split as ``rm train`` splits a pair of them (``formats.text_replies``), so a
    reward model scores a reply as it read it in training; else the texts stay as written."""
    rows, prompts, replies = [], [], []
    report = report if report is not None else LoadReport(source=str(path))
    for where, row in iter_source_rows(path):
        report.rows += 1
        try:
            if isinstance(row, Exception):
                raise row
            prompt, reply = _prompt_reply(row, where, report, as_trained)
        except PreferenceFormatError as e:
            if not skip_bad_rows:
                raise
            report.skip(e)
            continue
        prompts.append(prompt)
        replies.append(reply)
        rows.append(row)
    report.kept = len(rows)
    if note := report.skipped_note():
        log.warning(note)
    if not rows:
        raise DataSourceError(f"{path}: every row was skipped as malformed")
    return rows, prompts, replies


def _prompt_reply(row: dict, where: str, report: LoadReport, as_trained: bool):
    """A row's chat prompt and reply, as ``read_prompt_replies`` reads them."""
    if not isinstance(row, dict):
        raise PreferenceFormatError(where, None, f"expected an object, got {type(row).__name__}")
    if "chosen" in row or "rejected" in row:  # H4's pairs carry the chosen conversation too
        raise PreferenceFormatError(
            where,
            None,
            "a preference pair (chosen/rejected), not a reply to score: rm eval "
            "measures a model on pairs",
        )
    key = next((k for k in REPLY_COLUMNS if k in row), None)
    # without a reply column, a conversation if it has one (beside a string prompt too: H4's
    # SFT rows repeat the first user turn as `prompt`, and rm train reads their messages)
    column = conversation_column(row) if key is None else None
    if column is not None:
        # TRL's conversational language-modelling rows, or ShareGPT's (its system column
        # first, as rm train and rl train read it): the last turn is the reply
        messages = sharegpt_prompt(row, where)
        if len(messages) < 2:
            raise PreferenceFormatError(where, column, "no turns before the reply")
        report.conversations += 1
        reply = as_reply(*reply_turns(messages, len(messages) - 1, where, column))
        return messages[:-1], reply
    if key is None:
        raise PreferenceFormatError(where, "reply", "missing: give one of "
                                    f"{', '.join(REPLY_COLUMNS)} or a conversation")  # fmt: skip
    if row.get("prompt") is None:
        raise PreferenceFormatError(where, "prompt", absent(row, "prompt"))
    if row[key] is None:
        raise PreferenceFormatError(where, key, absent(row, key))
    prompt = read_prompt(row["prompt"], where)
    report.transcripts += is_transcript(row, "prompt-only")
    report.conversations += is_conversational(row)
    report.ignored.update(ignored_columns(row))
    # a text, or messages ending with the assistant's (TRL's conversational completion)
    reply, turns = read_reply(row[key], prompt, where, key)
    if as_trained and isinstance(row["prompt"], str) and turns is None:
        prompt, (reply,) = text_replies(row["prompt"], prompt, [reply], isinstance(row[key], str))
    return prompt, as_reply(reply, turns)


def known_p_chosen(ds: datasets.Dataset) -> np.ndarray | None:
    """(N,) the true probability that each pair's chosen reply is preferred, when every row
    carries it as ``p_chosen`` (the gold benchmark's files do); None otherwise."""
    known = ds["p_chosen"] if "p_chosen" in ds.column_names and len(ds) else []
    if not known or any(p is None for p in known):
        return None
    return np.asarray(known, dtype=np.float64)


def bayes_ceiling(ds: datasets.Dataset) -> float | None:
    """The best pairwise accuracy possible on these pairs, when every row carries the known
    ``p_chosen``; None otherwise."""
    from distalign.metrics import bayes_accuracy

    known = known_p_chosen(ds)
    return None if known is None else bayes_accuracy(known)


def p_chosen_by_group(ds: datasets.Dataset) -> np.ndarray | None:
    """(N, G) probability that each pair's chosen reply is preferred, per annotator group
    (columns in sorted group order), when every row carries ``p_chosen_by_group`` with the
    same groups (the gold benchmark's files do); None otherwise."""
    rows = ds["p_chosen_by_group"] if "p_chosen_by_group" in ds.column_names and len(ds) else []
    if not rows or any(not r for r in rows):
        return None
    groups = sorted(d["group"] for d in rows[0])
    table = [{d["group"]: d["p"] for d in r} for r in rows]
    if any(sorted(t) != groups for t in table):
        return None
    return np.array([[t[g] for g in groups] for t in table], dtype=np.float64)
