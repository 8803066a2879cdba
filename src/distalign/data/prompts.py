"""Prompt sources: the one place ``rl train``, ``generate``, ``eval compare`` and the gold
benchmark read chat prompts from.

    load_prompts("gold", "test")                     # the benchmark's held-out instructions
    load_prompts("questions.txt")                    # one prompt per line
    load_prompts("prompts.jsonl")                    # prompt-only rows: {"prompt": str | messages}
    load_prompts("sharegpt.json")                    # {"conversations": [..., human(, gpt)]}
    load_prompts("pairs.jsonl.gz")                   # a preference source: its prompts, once each
    load_prompts("trl-lib/ultrafeedback-prompt", "train", name=None, revision="main")
    load_prompts(datasets.Dataset.from_list(rows))   # the same, from Python

A prompt is a list of ``{"role", "content"}`` messages ending with a user (or tool) turn, or
in TRL's ``prompt`` column with an assistant turn, which the reply follows as a turn of its own
(TRL's RLOO and GRPO render it so).
Prompt-only rows are TRL's (a ``prompt`` column of strings or messages, as RLOO and GRPO take)
or ShareGPT conversations (``conversations``/``messages``, ``from``/``value`` or
``role``/``content`` messages, an optional ``system`` column); a conversation that ends with
the assistant's reply (an SFT file) gives the turns before that reply, as LLaMA-Factory reads it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distalign.data.formats import (
    JSON_MESSAGES,
    TEMPLATE_COLUMNS,
    TOOL_ROLES,
    PreferenceFormatError,
    absent,
    alpaca_prompt,
    conversation_column,
    hh_prompt,
    ignored_columns,
    is_alpaca,
    is_conversational,
    is_transcript,
    joined_prompt,
    read_prompt,
    sharegpt_column,
    sharegpt_prompt,
    unread_prompt_column,
)
from distalign.data.load import (
    DATA_ALIASES,
    FEATURES,
    DataSourceError,
    LoadReport,
    gold_split,
    iter_source_rows,
    load_preferences,
    slicing,
    split_rows,
)
from distalign.data.mixture import part_of

Chat = list[dict[str, str]]
log = logging.getLogger(__name__)


class PromptRow(list):
    """A chat prompt (its messages) that also carries its row's other columns, so that a
    reward function can receive them (as TRL passes data-set columns to ``reward_funcs``).
    It is a list of messages everywhere else. Defined at module level: history rows holding
    it are pickled when processes gather them."""

    def __init__(self, messages, columns: dict[str, Any] | None = None, text: str | None = None):
        super().__init__(messages)
        self.columns = dict(columns or {})
        self.text = text  # the row's prompt when it was a string (TRL's "standard" format)


def _gold_prompts(split: str) -> list[Chat]:
    """The gold benchmark's prompts of ``split`` (``train``, ``test``, or a split spec of
    them: ``train[:50%]``), each once."""
    rows = [
        json.loads(line)
        for line in (DATA_ALIASES["gold"] / "prompts.jsonl").read_text().splitlines()
        if line
    ]

    def read(name: str) -> list[Chat]:
        gold_split(name)
        return [[{"role": "user", "content": r["prompt"]}] for r in rows if r["split"] == name]

    return split_rows(split, read, "gold") if slicing(split) else read(split)


def is_prompt_only(row: Any) -> bool:
    """A row with a prompt and no replies: TRL prompt-only, a ShareGPT conversation or an
    Alpaca-style instruction (a row with either reply is a pair, if a broken one)."""
    return (
        isinstance(row, dict)
        and "chosen" not in row
        and "rejected" not in row
        and ("prompt" in row or sharegpt_column(row) is not None or is_alpaca(row))
    )


def without_closing_reply(conversation: Chat) -> Chat:
    """A conversation without the assistant turns it ends with: the prompt they answered.

    ShareGPT files are mostly SFT data, each conversation closing with the reply to learn;
    LLaMA-Factory, whose format this is, reads such a row as prompt = every turn but the last
    and response = the last, and its PPO stage generates from that prompt. So does this."""
    end = len(conversation)
    while end and conversation[end - 1]["role"] == "assistant":
        end -= 1
    return conversation[:end]


def prompt_of(row: Any, where: str) -> tuple[Chat, bool]:
    """The prompt of one prompt-only row, and whether a closing reply was set aside. Raises
    PreferenceFormatError naming the field.

    TRL's ``prompt`` column ends with the user, a tool or an assistant turn (the reply is the
    next turn, as TRL's trainers render it); a string that is an Anthropic
    HH transcript ending in ``"\n\nAssistant:"`` is read as its turns. A ShareGPT conversation
    may also end with the assistant's reply, which is set aside (``without_closing_reply``)."""
    set_aside = False
    if not isinstance(row, dict):
        raise PreferenceFormatError(where, None, f"expected an object, got {type(row).__name__}")
    if sharegpt_column(row) is None and is_alpaca(row):  # a null prompt column too (parquet)
        prompt, field = alpaca_prompt(row, where), "instruction"
    elif "prompt" in row or conversation_column(row) is None:
        if row.get("prompt") is None:
            raise PreferenceFormatError(where, "prompt", absent(row, "prompt"))
        prompt = read_prompt(row["prompt"], where)
        field = "prompt"
    else:  # a conversation, said as such where it is empty or broken
        field = conversation_column(row)
        if isinstance(row[field], str):  # not a one-turn prompt: a list saved as text?
            json_text = JSON_MESSAGES.match(row[field])
            raise PreferenceFormatError(
                where,
                field,
                "expected a list of messages, got text"
                + (
                    " (JSON text of messages: load the column with json.loads)" if json_text else ""
                ),
            )
        conversation = sharegpt_prompt(row, where)
        prompt = without_closing_reply(conversation)
        set_aside = len(prompt) < len(conversation)
        if not prompt:
            raise PreferenceFormatError(where, field, "no turn before the assistant's reply")
    # TRL's prompt may end with an assistant turn: its trainers render the reply as the next
    last = ("user", *TOOL_ROLES) + (("assistant",) if field == "prompt" else ())
    if prompt[-1]["role"] not in last:
        raise PreferenceFormatError(
            where, field, "expected the last turn to be the user's (or a tool's)"
        )
    return prompt, set_aside


def load_prompts(
    source: Any,
    split: str | None = "train",
    *,
    name: str | None = None,
    revision: str | None = None,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    streaming: bool = False,
) -> list[Chat]:
    """Chat prompts of ``source``: ``gold``, a ``.txt`` file, a prompt-only or preference data
    set (hub id with its config ``name`` and ``revision``, local file or ``datasets.Dataset``).
    Preference sources give each prompt once, carrying the other columns of its first row
    (``chosen``, ``rejected``, …) for reward functions, as TRL passes a data set's columns.

    ``skip_bad_rows`` skips malformed rows instead of raising; ``report`` (when given) gets the
    counts, with ``format`` "prompt-only" for prompt-only rows. A source without rows raises
    DataSourceError.
    """
    report = report if report is not None else LoadReport(source=str(source))
    report.source = source if isinstance(source, str) else "the data set"  # not its repr
    if isinstance(source, str):
        path = Path(source).expanduser()
        if source == "gold" and not path.exists():
            return _gold_prompts(split or "train")
        if path.suffix == ".txt":
            if not path.is_file():
                raise DataSourceError(f"{source}: no such file")
            if name is not None or revision is not None:
                raise DataSourceError(f"{source}: a local source; a config name or revision "
                                      "applies to hub datasets only")  # fmt: skip
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            prompts = [[{"role": "user", "content": line}] for line in lines if line.strip()]
            if slicing(split):  # one set of lines: a slice of it, as of one data file
                prompts = split_rows(split, lambda _: prompts, source)
            if not prompts:
                raise DataSourceError(f"{source}: no rows")
            report.format, report.rows, report.kept = "prompt-only", len(prompts), len(prompts)
            return prompts
    rows = iter_source_rows(source, split, name=name, revision=revision, streaming=streaming)
    head = []  # up to the first readable row, which says the format (a source without rows
    for item in rows:  # raises DataSourceError here)
        head.append(item)
        if not isinstance(item[1], Exception):
            break
    first = head[-1]
    pair = isinstance(first[1], dict) and ("chosen" in first[1] or "rejected" in first[1])
    if isinstance(first[1], dict) and not is_prompt_only(first[1]) and not pair:
        question = unread_prompt_column(first[1])
        raise PreferenceFormatError(
            first[0], None, f"no prompt in columns {sorted(first[1])}: prompts are read from "
            "`prompt`, `conversations` or `messages` (ShareGPT), Alpaca's `instruction`, or "
            "preference pairs" + (f" (rename `{question}` to `prompt`?)" if question else ""),
        )  # fmt: skip
    every = [*head, *rows]
    # pairs or prompts, as the first readable row of the row's data set says (a mixture's
    # sources each say their own: a prompt set beside pairs); a row unlike it is read so, and
    # its reading says what is wrong with it
    kinds = {part_of(first[0]): not is_prompt_only(first[1])}
    for where, row in every:
        if isinstance(row, dict):
            kinds.setdefault(part_of(where), not is_prompt_only(row))
    as_pair = [kinds.get(part_of(where), kinds[part_of(first[0])]) for where, _ in every]
    at = {kind: [i for i, p in enumerate(as_pair) if p is kind] for kind in (True, False)}
    found = []
    if at[True]:
        kept = _pair_prompts(source, [every[i] for i in at[True]], report, skip_bad_rows)
        found += [(at[True][i], prompt) for i, prompt in kept]
        pair_format, pairs_kept = report.format, report.kept
    if at[False]:
        kept = _prompt_only_rows(source, [every[i] for i in at[False]], report, skip_bad_rows)
        found += [(at[False][i], prompt) for i, prompt in kept]
        if at[True]:  # both kinds: said, and counted together
            report.format = " + ".join(f for f in (pair_format, "prompt-only") if f != "unknown")
            report.kept += pairs_kept
    prompts = [prompt for _, prompt in sorted(found, key=lambda item: item[0])]
    if any(p.text is None for p in prompts):  # a data set gives reward functions one shape,
        for p in prompts:  # as TRL's (all strings or all conversations): a set mixing the
            p.text = None  # two gives each prompt as messages
    return _not_all_empty(prompts, source)


def _pair_prompts(source: Any, items: list, report: LoadReport, skip_bad_rows: bool) -> list:
    """(index in ``items``, PromptRow) of the preference rows' prompts, each prompt once, with
    the columns of its first row (chosen, rejected, margin, …)."""
    written: list[Any] = []  # each row's string prompt as written, else None
    raw: list[dict] = []  # each row's other columns, for reward functions (as TRL's)

    def read_once():
        for where, row in items:
            text = isinstance(row, dict) and isinstance(row.get("prompt"), str)
            written.append(row["prompt"] if text else None)
            row_ = row if isinstance(row, dict) else {}
            # a row of load_preferences' own Dataset: its pair, not distalign's readings
            own = set(row_) == set(FEATURES)
            raw.append(
                {
                    k: v
                    for k, v in row_.items()
                    if k != "prompt" and (not own or k in ("chosen", "rejected"))
                }
            )
            yield where, row

    pairs = load_preferences(  # a pair whose replies are equal still has its prompt
        source, skip_bad_rows=skip_bad_rows, report=report, drop_identical=False,
        source_rows=read_once(),
    )  # fmt: skip
    texts = [written[i] for i in pairs["source_row"]]
    columns = [raw[i] for i in pairs["source_row"]]
    # rl train renders prompts with the config's chat_template_kwargs, as TRL's GRPO
    unused = [c for cols in columns for c in TEMPLATE_COLUMNS if cols.get(c)]
    report.ignored.update(unused)
    if unused:
        log.warning(report.ignored_note(unused))
    single = all(len(p) == 1 and p[0]["role"] == "user" for p in pairs["prompt"])
    as_read = all(  # not a prompt the conversations' own turns replaced (rm train's too)
        isinstance(t, str) and t.strip() == p[0]["content"].strip()
        for t, p in zip(texts, pairs["prompt"], strict=True)
    )
    if single and as_read and all(hh_prompt(t) is None for t in texts):
        # TRL's standard format: each prompt as written (a pair's reading gave it the space
        # its replies start with), and reward functions get it as its string (all of
        # them, or none: a data set gives one shape)
        chats = [[{"role": "user", "content": t}] for t in texts]
    else:
        chats, texts = [joined_prompt(r) for r in pairs], [None] * len(texts)
    found, seen = [], set()  # each prompt once, where it first comes
    for i, chat, cols, text in zip(pairs["source_row"], chats, columns, texts, strict=True):
        key = json.dumps(chat, sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append((i, PromptRow(chat, cols, text)))
    return found


def _prompt_only_rows(source: Any, items: list, report: LoadReport, skip_bad_rows: bool) -> list:
    """(index in ``items``, PromptRow) of prompt-only rows (TRL's, ShareGPT, Alpaca)."""
    report.format = "prompt-only"
    prompts = []
    for i, (where, row) in enumerate(items):
        report.rows += 1
        try:
            if isinstance(row, Exception):
                raise row
            report.ignored.update(ignored_columns(row))
            prompt, set_aside = prompt_of(row, where)
            report.replies_set_aside += set_aside
            report.transcripts += is_transcript(row, "prompt-only")
            report.conversations += is_conversational(row)
            field = "prompt" if "prompt" in row else sharegpt_column(row)
            text = row[field] if isinstance(row.get(field), str) else None
            cols = {k: v for k, v in row.items() if k != field}
            prompts.append((i, PromptRow(prompt, cols, text)))
        except PreferenceFormatError as e:
            if not skip_bad_rows:
                raise
            report.skip(e)
    report.kept = len(prompts)
    if note := report.skipped_note():
        log.warning(note)
    if note := report.ignored_note():
        log.warning(note)
    if report.replies_set_aside:
        log.info(
            "%s: %d conversations end with the assistant's reply; each prompt is the turns "
            "before it",
            source,
            report.replies_set_aside,
        )
    return prompts


def _not_all_empty(prompts: list[Chat], source: Any) -> list[Chat]:
    """``prompts``, unless every one of them says nothing (a data set whose prompt is in a
    column no reading here takes): refused, naming the columns the rows have."""
    if prompts and not any(m["content"].strip() for p in prompts for m in p):
        columns = sorted(getattr(prompts[0], "columns", {}) or {})
        beside = f"; the rows' other columns: {columns}" if columns else ""
        raise DataSourceError(
            f"{source if isinstance(source, str) else 'the data set'}: every prompt is empty, "
            f"nothing to sample replies to{beside}. Prompts are read from `prompt`, "
            "`conversations`, `messages`, an Anthropic HH transcript, the text a pair's chosen "
            "and rejected share (none here, if they share no beginning), or Alpaca's "
            "`instruction` and `input`"
        )
    return prompts
