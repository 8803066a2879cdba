"""Preference rows in the shapes people already have -> one normalised form.

Normalised row (what ``load_preferences`` returns, one per pair)::

    prompt          list of {"role", "content"} messages, ending with a user (or tool) turn, or
                    with an assistant turn the reply follows as a turn of its own (a
                    conversational prompt's, rendered as TRL's trainers render it)
    chosen          str, the preferred assistant reply ('' when the source's reply is empty)
    rejected        str, the other assistant reply
    chosen_turns    str | None, JSON text of the chosen reply's messages where it is more than
                    one plain assistant message (a tool call, the tool's result and the answer;
                    a message with tool calls or reasoning): rendered whole after the prompt,
                    as TRL's RewardTrainer renders them; its text is the last message's
    rejected_turns  str | None, the same of the rejected reply
    chosen_score    float | None, a rating of the chosen reply when the source has one
    rejected_score  float | None
    margin          float | None, TRL's ``margin`` column: how far the chosen reply's reward
                    should clear the rejected one's (the scalar loss −log σ(r_c − r_r − margin))
    source_row      int, index of the row in the source (0-based)
    p_chosen        float | None, the known probability that the chosen reply is preferred
                    (benchmark files made by ``distalign gold make`` carry it: the Bayes
                    ceiling of a set of pairs is the mean of max(p, 1 − p))
    p_chosen_by_group  list of {"group", "p"} | None, that probability per annotator group
                    (benchmark files carry it as {group: p}; pairs the groups' majorities
                    split on are the contested ones)

Formats (detected from the first row, or forced):

``explicit``   ``prompt`` (string or messages) + ``chosen``/``rejected`` (strings or messages).
               Message replies may repeat the prompt before the assistant turn, as the
               HelpSteer2/UltraFeedback-binarized sets do; both shapes are accepted. A string
               prompt beside replies that are whole conversations is ignored and the turns the
               two share are the prompt, as TRL's ``maybe_extract_prompt`` does. A prompt that is
               an HH transcript ending in ``"\\n\\nAssistant:"`` (Dahoas/rm-static) is split
               into turns.
               With a string prompt and string replies (TRL's standard text) the whitespace
               both replies start with goes with the prompt.
``implicit``   ``chosen``/``rejected`` are whole conversations (message lists) that share the
               prompt and differ in the final assistant turn (TRL "implicit prompt"), or
               plain strings with no prompt column (TRL's standard implicit prompt, which
               TRL scores as whole texts): their longest common beginning, cut back to a
               word's end, is the prompt's user turn (possibly empty, counted), the rest the
               two replies.
``hh``         Anthropic-HH transcripts, multi-turn:
               ``"\\n\\nHuman: … \\n\\nAssistant: …"`` strings.
``sharegpt``   LLaMA-Factory/ShareGPT: ``conversations`` (or ``messages``) holds the prompt;
               ``chosen``/``rejected`` are one message, a list of them, or a string. An
               optional ``system`` column becomes the system turn unless the conversation
               starts with one.

Messages are ``{"role", "content"}`` or ShareGPT ``{"from", "value"}`` objects in every
format; roles ``human``/``gpt``/``observation``/``function_call`` (ShareGPT, LLaMA-Factory)
become ``user``/``assistant``/``tool``/``assistant``.

Ratings: ``chosen_rating``/``rejected_rating`` (HelpSteer2-binarized),
``chosen_score``/``rejected_score`` or ``score_chosen``/``score_rejected``
(UltraFeedback-binarized) columns fill the score fields.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("explicit", "implicit", "hh", "sharegpt", "alpaca")
# "developer" is OpenAI's name for a system turn, "ipython" Llama 3.1's for a tool's result:
# each goes to the chat template under its own name, as TRL hands it the messages
ROLES = ("system", "user", "assistant", "tool", "developer", "ipython")
INSTRUCTION_ROLES = ("system", "developer")
TOOL_ROLES = ("tool", "ipython")
# ShareGPT/LLaMA-Factory role names: observation is a tool's result, function_call the
# assistant's call of it.
ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "observation": "tool",
    "function_call": "assistant",
}
PROMPT_COLUMNS = ("conversations", "messages")  # where a ShareGPT row keeps its prompt
REPLY_COLUMNS = ("reply", "response", "completion")  # a scored reply's column (rm score)
_SCORE_COLUMNS = (
    ("chosen_rating", "rejected_rating"),
    ("chosen_score", "rejected_score"),
    ("score_chosen", "score_rejected"),
)
# a turn marker: at the start, or after a blank line (Windows line ends too: a CSV saved there)
_HH_TURN = re.compile(r"(?:^|\r?\n\r?\n)(Human|Assistant):[ \t]?")
_HH_OPEN_END = re.compile(r"\r?\n\r?\nAssistant:$")  # a prompt's end: the reply comes next
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PreferenceFormatError(ValueError):
    """A row that does not have the shape its format needs. ``where`` names file and row."""

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field, self.reason = where, field, message
        at = f"{where}: field {field!r}: " if field else f"{where}: "
        super().__init__(at + message)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) for m in value)


def sharegpt_column(row: Mapping[str, Any]) -> str | None:
    """The column holding a ShareGPT row's conversation, if the row has one."""
    return next((c for c in PROMPT_COLUMNS if _is_messages(row.get(c)) and row[c]), None)


def conversation_column(row: Mapping[str, Any]) -> str | None:
    """The column of a row's conversation: ``sharegpt_column``'s, else the first
    conversation column the row has at all (empty, or not messages: an error to name it in);
    None where it has none."""
    return sharegpt_column(row) or next((c for c in PROMPT_COLUMNS if c in row), None)


# shapes of public preference data that are not pairs of replies, and what turns them into pairs
_SHAPE_HINTS = (
    (lambda r: "response" in r and any(c in r for c in ("helpfulness", "score", "rating")),
     "one rated response per row, as HelpSteer2's raw rows: pair each prompt's responses into "
     "chosen/rejected first, or take a binarized version such as "
     "esfrankel17/HelpSteer2_binarized"),
    (lambda r: "completions" in r and isinstance(r["completions"], list),
     "several rated completions per row, as UltraFeedback's raw rows: pair the best and a worse "
     "one into chosen/rejected first, or take a binarized version such as "
     "HuggingFaceH4/ultrafeedback_binarized"),
    (lambda r: "completion" in r and "label" in r,
     "unpaired preferences (TRL's KTO shape: one completion and a desirable label per row): "
     "pair each prompt's desirable and undesirable completions into chosen/rejected first"),
    (lambda r: "preferred_output" in r or "non_preferred_output" in r,
     "OpenAI's preference fine-tuning shape: rename input.messages to prompt, preferred_output "
     "to chosen and non_preferred_output to rejected"),
    (lambda r: "response_1" in r and "response_2" in r,
     "two responses and a preference per row, as HelpSteer2's preference file: take the "
     "preferred one as chosen (preference_strength below 0: response_1) and the other as "
     "rejected, leaving out ties (0)"),
    (lambda r: "response_j" in r and "response_k" in r,
     "stack-exchange-paired's shape: rename question to prompt, response_j (the preferred "
     "answer) to chosen and response_k to rejected"),
)  # fmt: skip


# JSON text of a message list where a turn's text belongs (a list saved as a string), keys in
# any order, ShareGPT's too
JSON_MESSAGES = re.compile(r"""^\s*\[\s*\{\s*["'](role|content|from|value)["']\s*:""")


def unread_prompt_column(row: Mapping[str, Any]) -> str | None:
    """A column that looks like a row's prompt under another name (Intel/orca_dpo_pairs'
    ``question``), where the row has no ``prompt``; None otherwise."""
    if "prompt" in row:
        return None
    names = ("question", "query", "problem", "input", "text")
    return next((c for c in names if isinstance(row.get(c), str) and row[c].strip()), None)


def shape_hint(row: Mapping[str, Any]) -> str | None:
    """What a row of a public data set that is not a pair of replies holds, and what turns it
    into one (``_SHAPE_HINTS``); None for any other row."""
    return next((h for test, h in _SHAPE_HINTS if test(row)), None)


# TRL's tokenised preference rows (``chosen_ids``/``rejected_ids``; the older names too, the
# RewardTrainer's before TRL 0.13 with its attention masks beside them, read): whole
# sequences, prompt included, in the backbone's vocabulary, which rm train reads as they are
TOKEN_COLUMNS = (("chosen_ids", "rejected_ids"), ("chosen_input_ids", "rejected_input_ids"),
                 ("input_ids_chosen", "input_ids_rejected"))  # fmt: skip


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess the format of a dataset from one of its rows."""
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing and any(chosen in row for chosen, _ in TOKEN_COLUMNS):
        raise ValueError(
            "tokenised rows (TRL's chosen_ids/rejected_ids): `rm train` reads them as they are; "
            "this command needs the text (prompt/chosen/rejected)"
        )
    if missing:
        hint = shape_hint(row)
        raise ValueError(
            f"cannot detect the preference format: columns {sorted(row)} lack "
            + " and ".join(repr(c) for c in missing)
            + (f" ({hint})" if hint else "")
        )
    if "prompt" in row and row["prompt"] is not None:
        return "explicit"
    if sharegpt_column(row):
        return "sharegpt"
    if is_alpaca(row):
        return "alpaca"
    if _is_messages(row["chosen"]):
        return "implicit"
    if isinstance(row["chosen"], str) and starts_hh(row["chosen"]):
        return "hh"
    if isinstance(row["chosen"], str):
        return "implicit"  # TRL's standard implicit prompt: two texts with a shared beginning
    raise ValueError(
        "cannot detect the preference format: no 'prompt' or 'conversations' column, and "
        f"'chosen' is neither a message list nor a string ({_describe(row['chosen'])})"
    )


def split_texts(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Prompt and replies of two texts that share their beginning (TRL's standard implicit
    prompt, which TRL's RewardTrainer scores as whole texts): the prompt is their longest
    common prefix cut back to the end of a word that both texts end there, since here the cut
    is a turn boundary ("The answer is 12." / "The answer is 15." give "The answer is " and
    "12." / "15."; TRL's ``extract_prompt`` would cut inside "12"), as one user turn, with the
    whitespace both texts have after it; the replies are the rest, so prompt + reply is the
    text again. Texts that share no whole word give an empty user turn (counted by the
    loader)."""
    cut = common_prefix_length(chosen, rejected)
    if cut == len(chosen) == len(rejected):  # the same text twice: nothing to tell apart
        cut = 0
    at_boundary = all(cut == len(text) or text[cut].isspace() for text in (chosen, rejected))
    if not at_boundary:  # inside a word: back to its start
        while cut > 0 and not chosen[cut - 1].isspace():
            cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    if cut:  # the whitespace both have after the last shared word goes with the prompt
        cut += _shared_whitespace(chosen, rejected, cut)
    prompt = [{"role": "user", "content": chosen[:cut]}]
    return prompt, chosen[cut:], rejected[cut:]


def _parse_message(message: Any, where: str, field: str) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise PreferenceFormatError(
            where, field, f"expected a {{role, content}} object, got {_describe(message)}"
        )
    # Arrow gives every message all the keys of the column's struct, absent ones as None.
    sharegpt = message.get("from") is not None
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    role = message.get(role_key)
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        accepted = (*ROLES, *ROLE_ALIASES)
        raise PreferenceFormatError(
            where,
            f"{field}.{role_key}",
            f"expected one of {accepted}, got {_describe(message.get(role_key))}",
        )
    # Every other key (tool_calls, tool_call_id, name, reasoning_content, …) goes to the chat
    # template with the message, as TRL hands it the messages whole; Arrow's nulls are absent.
    extras = {k: v for k, v in message.items() if k not in _MESSAGE_KEYS and v is not None}
    calls = extras.pop("tool_calls", None)
    if calls is not None and not isinstance(calls, list):
        raise PreferenceFormatError(
            where, f"{field}.tool_calls", f"expected a list of calls, got {_describe(calls)}"
        )
    if calls:
        extras["tool_calls"] = calls
    content = message.get(content_key)
    if content is None and calls:  # an assistant turn that only calls tools (OpenAI: null)
        content = ""
    if isinstance(content, list):
        content = _text_parts(content, where, f"{field}.{content_key}")
    if not isinstance(content, str):
        raise PreferenceFormatError(
            where, f"{field}.{content_key}", f"expected a string, got {_describe(content)}"
        )
    return {"role": role, "content": content, **extras}


def _text_parts(parts: list, where: str, field: str) -> str:
    """The text of a message's content parts (OpenAI's ``[{"type": "text", "text": …}]``),
    joined with line breaks; a part that is not text (an image) is refused."""
    texts = []
    for part in parts:
        if (
            isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
            continue
        raise PreferenceFormatError(
            where, field, "content parts other than text (images, audio) are not supported; "
            f"got {_describe(part)}",
        )  # fmt: skip
    return "\n".join(texts)


_MESSAGE_KEYS = ("role", "content", "from", "value")
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")  # what TRL hands the chat template


def ignored_columns(row: Mapping[str, Any]) -> list[str]:
    """What of a row read as a prompt (or a prompt and one reply, ``rm score``) TRL gives the
    chat template and distalign does not: its ``tools`` and ``chat_template_kwargs`` columns
    (TRL's GRPO trainer takes its tools and template arguments from its config; preference
    pairs render them, as TRL's RewardTrainer does): counted and said by the loaders, never
    dropped silently."""
    return [c for c in TEMPLATE_COLUMNS if row.get(c)]


def template_kwargs(row: Mapping[str, Any], where: str) -> str | None:
    """What TRL's RewardTrainer passes ``apply_chat_template`` beside a row's messages: its
    ``tools`` (a list, or JSON text of one; empty is none) and its ``chat_template_kwargs``
    (an object: ``{"enable_thinking": false}``), as JSON text (one column type whatever the
    tools look like), or None when the row has neither."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as e:
            raise PreferenceFormatError(where, "tools", f"not JSON: {e}") from None
    if tools is not None and not isinstance(tools, list):
        raise PreferenceFormatError(
            where, "tools", f"expected a list of tool definitions, got {_describe(tools)}"
        )
    kwargs = row.get("chat_template_kwargs")
    if isinstance(kwargs, str) and kwargs.strip().startswith("{"):  # a CSV cell holds JSON
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise PreferenceFormatError(where, "chat_template_kwargs", f"not JSON: {e}") from None
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise PreferenceFormatError(
            where, "chat_template_kwargs", f"expected an object, got {_describe(kwargs)}"
        )
    # Arrow gives a row every key of the column's struct, its own absent ones as None
    out = {k: v for k, v in (kwargs or {}).items() if v is not None}
    for field, value in (("tools", tools), ("chat_template_kwargs", out)):
        try:
            _json(value)
        except TypeError as e:
            raise PreferenceFormatError(where, field, str(e)) from None
    if tools:  # TRL: `tools or None` (Llama's template writes tool boilerplate for [])
        out = {"tools": tools, **out}
    return _json(out) if out else None


def _json(value: Any) -> str:
    """JSON text of a row's values; a parquet file's dates and times, which JSON has no type
    for, as the text the template would print for them. Raises TypeError for other values."""

    def as_text(o: Any) -> str:
        if isinstance(o, datetime.date | datetime.time | datetime.timedelta):
            return str(o)
        raise TypeError(f"{type(o).__name__} {o!r:.60}: not a value of a data set's row")

    return json.dumps(value, default=as_text)


def split_extras(messages: list[dict[str, Any]]) -> tuple[list[dict[str, str]], str | None]:
    """Messages as ``{"role", "content"}`` and, as JSON text, each one's other keys (None when
    none has any): a data set's message column keeps one shape whatever the tool calls."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    extras = [{k: v for k, v in m.items() if k not in _MESSAGE_KEYS} for m in messages]
    return plain, (_json(extras) if any(extras) else None)


def joined_prompt(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A normalised pair's prompt with each message's other keys back (``split_extras``)."""
    text = row.get("prompt_extras")
    if not text:
        return list(row["prompt"])
    extras = json.loads(text)
    return [{**m, **e} for m, e in zip(row["prompt"], extras, strict=True)]


Reply = str | Sequence[Mapping[str, Any]]  # a reply's text, or its messages (``reply_turns``)


def reply_messages(reply: Reply) -> list[dict[str, Any]]:
    """The messages of a reply: one assistant message of a text, or the reply's own."""
    return [{"role": "assistant", "content": reply}] if isinstance(reply, str) else list(reply)


def as_reply(text: str, turns: str | None) -> Reply:
    """A reply as it is rendered, from ``reply_turns``' text and messages."""
    return json.loads(turns) if turns else text


def reply_text(reply: Reply) -> str:
    """The text of a reply: itself, or its last message's."""
    return reply if isinstance(reply, str) else reply[-1]["content"]


def row_reply(row: Mapping[str, Any], side: str) -> Reply:
    """A normalised pair's ``chosen`` or ``rejected`` reply as it is rendered: its messages
    where the source gave more than one plain assistant message (``reply_turns``), else its
    text."""
    return as_reply(row[side], row.get(f"{side}_turns"))


def row_template_kwargs(row: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised pair's chat-template arguments (``template_kwargs``), {} when none."""
    text = row.get("template_kwargs")
    return json.loads(text) if text else {}


def parse_messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """Validate chat messages; a bare string becomes one user message, a single message
    object a list of one."""
    if isinstance(value, str):  # '' too: an empty prompt, as TRL takes it (counted)
        return [{"role": "user", "content": value}]
    if isinstance(value, Mapping):
        return [_parse_message(value, where, field)]
    if not isinstance(value, list) or not value:
        raise PreferenceFormatError(
            where,
            field,
            f"expected a string or a non-empty list of messages, got {_describe(value)}",
        )
    return [_parse_message(m, where, f"{field}[{i}]") for i, m in enumerate(value)]


def _hh_turns(text: str) -> list[dict[str, str]]:
    """The turns of an HH transcript (text before the first marker is dropped)."""
    marks = list(_HH_TURN.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [
        {"role": _HH_ROLES[m.group(1)], "content": text[m.end() : end].strip()}
        for m, end in zip(marks, ends, strict=True)
    ]


def starts_hh(text: str) -> bool:
    """Whether ``text`` is an Anthropic-HH transcript: its first words are a ``Human:`` or
    ``Assistant:`` turn (a text that only mentions one later is plain text)."""
    first = _HH_TURN.search(text)
    return first is not None and not text[: first.start()].strip()


def holds_hh_turn(reply: str) -> bool:
    """Whether an HH pair's reply goes on with a ``\n\nHuman:`` turn of its own. A reply
    whose first words are "Human:" says them as its text, unless an ``Assistant:`` turn
    follows (an empty reply, stripped, and the next turns)."""
    marks = list(_HH_TURN.finditer(reply))
    return any(
        m.group(1) == "Human"
        and (m.start() > 0 or any(n.group(1) == "Assistant" for n in marks[i + 1 :]))
        for i, m in enumerate(marks)
    )


def _check_hh(text: Any, where: str, field: str) -> str:
    if not (isinstance(text, str) and starts_hh(text)):
        raise PreferenceFormatError(
            where,
            field,
            "expected a transcript starting with '\\n\\nHuman: ' turns",
        )
    return text


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest beginning two texts (or id lists) share."""
    # Whole blocks first: HH transcripts share kilobytes, a loop per character is slow.
    n, i = min(len(a), len(b)), 0
    while i < n and a[i : i + 256] == b[i : i + 256]:
        i += 256
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, n)


def split_hh(chosen: Any, rejected: Any, where: str) -> tuple[list[dict[str, str]], str, str]:
    """Prompt turns and the two replies of an Anthropic-HH pair.

    The prompt is the longest common prefix of the two transcripts cut back to its last
    ``"\\n\\nAssistant:"`` (as TRL's hh-rlhf script), not a split on every turn marker: a
    reply that itself writes ``"\\n\\nHuman: "`` (the real data has such replies) stays inside
    the reply, and an empty reply (``"…\\n\\nAssistant:"``) is an empty string.
    """
    chosen, rejected = _check_hh(chosen, where, "chosen"), _check_hh(rejected, where, "rejected")
    shared = chosen[: common_prefix_length(chosen, rejected)]
    marks = list(_HH_TURN.finditer(shared))
    cut = max((i for i, m in enumerate(marks) if m.group(1) == "Assistant"), default=-1)
    # "…Assistant: a\n\nAssistant: b" in both: the reply is all the assistant says after the
    # last human turn, so that the prompt ends with the user.
    while cut > 0 and marks[cut - 1].group(1) == "Assistant":
        cut -= 1
    if cut <= 0:
        raise PreferenceFormatError(
            where,
            "rejected",
            "expected chosen and rejected to share the transcript up to the final "
            "'\\n\\nAssistant:' after a '\\n\\nHuman:' turn",
        )
    prompt = _hh_turns(shared[: marks[cut].start()])
    start = marks[cut].end()
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def hh_prompt(text: str) -> list[dict[str, str]] | None:
    """Turns of a prompt column that is an HH transcript ending in the assistant marker."""
    first = _HH_TURN.search(text)
    if first is None or text[: first.start()].strip():
        return None
    end = _HH_OPEN_END.search(text.rstrip())
    if end is None:
        return None
    turns = _hh_turns(text[: end.start()])
    return turns if turns and turns[-1]["role"] == "user" else None


def read_prompt(value: Any, where: str, field: str = "prompt") -> list[dict[str, str]]:
    """A prompt column: messages, a string (one user turn), or an Anthropic HH transcript
    ending in ``"\n\nAssistant:"`` (read as its turns)."""
    hh = hh_prompt(value) if isinstance(value, str) else None
    return hh if hh is not None else parse_messages(value, where, field)


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """What a reader is shown of a prompt (and what the gold judge reads): the text, or a
    chat's last user message (not a tool's result or an assistant turn it ends with)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def conversation_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """A prompt as a reader should see all of it: the text, a single user message as it is,
    else every turn as ``role: content`` (a system prompt and earlier turns included)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def is_conversational(row: Mapping[str, Any]) -> bool:
    """Whether a row holds message lists (TRL's conversational data, which needs a chat
    template) rather than texts: as TRL's ``is_conversational`` reads the columns."""
    columns = ("prompt", "chosen", "rejected", *REPLY_COLUMNS, *PROMPT_COLUMNS)
    return any(_is_messages(row.get(c)) and bool(row.get(c)) for c in columns)


def is_transcript(row: Mapping[str, Any], fmt: str) -> bool:
    """Whether a row's text is an Anthropic HH transcript (parsed into turns here): an ``hh``
    row, or a prompt column that is one (Dahoas/rm-static, HH prompt-only sets)."""
    prompt = row.get("prompt")
    return fmt == "hh" or (isinstance(prompt, str) and hh_prompt(prompt) is not None)


def hh_pair(row: Mapping[str, Any]) -> bool:
    """Whether a row's chosen and rejected are both Anthropic HH transcripts."""
    return all(isinstance(row.get(c), str) and starts_hh(row[c]) for c in ("chosen", "rejected"))


def row_format(row: Mapping[str, Any], fmt: str, detected: bool) -> str:
    """The format a row is read in: its data set's, but for an HH pair in a data set whose
    format was detected as implicit (its first row plain text), read as HH where its two
    transcripts part in their last assistant turn (else as text, as before)."""
    if not (detected and fmt == "implicit" and hh_pair(row)):
        return fmt
    try:
        split_hh(row["chosen"], row["rejected"], "")
    except PreferenceFormatError:
        return fmt
    return "hh"


Turns = tuple[str | None, str | None]  # chosen's and rejected's reply messages (``reply_turns``)


def reply_turns(messages: list[dict[str, Any]], start: int, where: str, field: str):
    """(reply text, its messages as JSON text or None) of a reply column's ``messages`` from
    ``start`` on, where the prompt's repeat (if any) ends.

    The text is the last message's, which must be the assistant's. The messages are kept whole
    (JSON text: one column type whatever they hold) when they are more than one plain assistant
    message: several turns (a tool call, the tool's result, the answer) or a message with keys
    beside its text (``tool_calls``, ``reasoning_content``), which TRL's RewardTrainer renders
    with the prompt; None for a plain one, rendered from the text."""
    own = messages[start:]
    last = own[-1] if own else {"role": "nothing"}
    if last["role"] != "assistant":
        raise PreferenceFormatError(
            where, field, f"expected the last message to be an assistant reply, got role "
            f"{last['role']!r}",
        )  # fmt: skip
    for i, message in enumerate(own):
        opens_otherwise = i == 0 and message["role"] != "assistant"
        if message["role"] not in ("assistant", *TOOL_ROLES) or opens_otherwise:
            raise PreferenceFormatError(
                where, f"{field}[{start + i}]", "expected the messages before the reply to "
                "repeat the prompt; a reply's own turns are the assistant's and tools', got role "
                f"{message['role']!r}",
            )  # fmt: skip
    plain = len(own) == 1 and all(k in _MESSAGE_KEYS for k in last)
    return last["content"], (None if plain else _json(own))


def read_reply(value: Any, prompt: list[dict[str, Any]], where: str, field: str):
    """A reply column (a string, a message, or messages that may repeat the prompt or its last
    user turn before the reply, as binarized sets write them) -> ``reply_turns``."""
    if isinstance(value, str):
        return value, None
    messages = parse_messages(value, where, field)
    return reply_turns(messages, _repeat_length(messages, prompt), where, field)


def _repeat_length(messages: list[dict[str, Any]], prompt: list[dict[str, Any]]) -> int:
    """How many of a reply column's first messages repeat the prompt (or its last turn, when
    that is the user's): 0 when they do not. A reply may start with the very message a prompt
    ending with an assistant turn ends with: that is the reply's own turn, not a repeat."""
    n = len(prompt)
    if 0 < n < len(messages) and _same_turns(messages[:n], prompt):
        return n
    user_last = bool(prompt) and prompt[-1]["role"] == "user"
    return 1 if len(messages) > 1 and user_last and _same_turns(messages[:1], prompt[-1:]) else 0


def _same_turns(a: list[dict[str, str]], b: list[dict[str, str]]) -> bool:
    """Whether two lists of messages are the same turns: roles, contents (up to surrounding
    whitespace) and every other key (tool calls, call ids), which the template renders too."""

    def others(m):
        return {k: v for k, v in m.items() if k not in _MESSAGE_KEYS}

    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"].strip() == y["content"].strip()
        and others(x) == others(y)
        for x, y in zip(a, b, strict=True)
    )  # fmt: skip


def _split_conversations(chosen, rejected, where):
    """(shared prompt, chosen text, rejected text, their turns) of two conversations (TRL's
    implicit prompt): the prompt is every turn the two share, each reply the rest of its
    conversation (one assistant message, or several turns with tools)."""
    if len(chosen) < 2 or len(rejected) < 2:
        field = "chosen" if len(chosen) < 2 else "rejected"
        raise PreferenceFormatError(
            where, field, "expected a conversation of at least a user turn and an assistant reply"
        )
    k, most = 0, min(len(chosen), len(rejected)) - 1  # each reply keeps its last message
    while k < most and _same_turns(chosen[k : k + 1], rejected[k : k + 1]):
        k += 1
    # parted at a tool's result: both replies start with the assistant turn that called it
    while k > 0 and chosen[k]["role"] in TOOL_ROLES and rejected[k]["role"] in TOOL_ROLES:
        k -= 1
    if chosen[k]["role"] != "assistant" or rejected[k]["role"] != "assistant":
        raise PreferenceFormatError(
            where,
            "rejected",
            "expected chosen and rejected to share every turn before their replies (a reply is "
            "the assistant's turns at the end)",
        )
    (c, c_turns), (r, r_turns) = (
        reply_turns(chosen, k, where, "chosen"), reply_turns(rejected, k, where, "rejected")
    )  # fmt: skip
    return chosen[:k], c, r, (c_turns, r_turns)


def _with_replies(row, prompt, where, prompt_is_text: bool):
    """(prompt, chosen text, rejected text, their turns) of a row whose prompt column is
    given. A string prompt beside two conversations that do not repeat it, or that go on with
    a user turn after it (a multi-turn set whose prompt is its first question), gives way to
    the turns the two share (TRL's ``maybe_extract_prompt``: whole conversations win)."""
    values = [row["chosen"], row["rejected"]]
    if prompt_is_text and all(_is_messages(v) and v for v in values):
        conversations = [parse_messages(values[0], where, "chosen"),
                         parse_messages(values[1], where, "rejected")]  # fmt: skip

        def whole(m):  # not a reply after (a repeat of) the prompt
            n = _repeat_length(m, prompt)
            return (not n and m[0]["role"] != "assistant") or any(
                x["role"] == "user" for x in m[n:]
            )

        if any(whole(m) for m in conversations):
            return _split_conversations(*conversations, where)
    (chosen, c_turns), (rejected, r_turns) = (
        read_reply(values[0], prompt, where, "chosen"),
        read_reply(values[1], prompt, where, "rejected"),
    )
    return prompt, chosen, rejected, (c_turns, r_turns)


def prompt_replaced(raw: Mapping[str, Any], prompt: list[dict[str, Any]]) -> bool:
    """Whether a row's string ``prompt`` column gave way to the turns its conversational
    replies carry (``prompt``, as read), and says another thing than their last user turn."""
    text = raw.get("prompt")
    if not (isinstance(text, str) and _is_messages(raw.get("chosen"))):
        return False
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return hh_prompt(text) is None and (not users or users[-1].strip() != text.strip())


def absent(row: Mapping[str, Any], column: str) -> str:
    """Why ``row`` has no value in ``column``: the column is ``missing``, or it is null."""
    return "missing" if column not in row else f"null: expected the {column}"


def _explicit(row, where):
    if row.get("prompt") is None:
        raise PreferenceFormatError(where, "prompt", absent(row, "prompt"))
    value = row["prompt"]
    hh = hh_prompt(value) if isinstance(value, str) else None
    if hh is not None:
        prompt, chosen, rejected, turns = _with_replies(row, hh, where, prompt_is_text=False)
    else:
        prompt = parse_messages(value, where, "prompt")
        prompt, chosen, rejected, turns = _with_replies(row, prompt, where, isinstance(value, str))
    if isinstance(value, str) and turns == (None, None):
        move = standard_text(row)
        prompt, (chosen, rejected) = text_replies(value, prompt, [chosen, rejected], move)
    return prompt, chosen, rejected, turns


def standard_text(row: Mapping[str, Any]) -> bool:
    """Whether a pair is TRL's standard text: its prompt and both replies are strings."""
    return all(isinstance(row.get(c), str) for c in ("prompt", "chosen", "rejected"))


def text_replies(
    text: str, prompt: list[dict[str, str]], replies: list[str], move: bool = True
) -> tuple[list[dict[str, str]], list[str]]:
    """The prompt and replies of a string prompt (``text``, read as ``prompt``), as every
    command reads them. After an HH transcript's "Assistant:" the space the replies start with
    is the transcript's, and is dropped. With ``move`` (string replies: TRL's standard text,
    " Paris." after "The capital of France is") the whitespace every reply starts with joins
    them to the prompt: it goes with the prompt, so the reply turn starts at its word and
    prompt + reply stays the text."""
    if hh_prompt(text) is not None:
        return prompt, [r.lstrip(" ") for r in replies]
    k = min(_shared_whitespace(replies[0], r) for r in replies) if move else 0
    if not k:
        return prompt, replies
    moved = [*prompt[:-1], {**prompt[-1], "content": prompt[-1]["content"] + replies[0][:k]}]
    return moved, [r[k:] for r in replies]


def _shared_whitespace(a: str, b: str, start: int = 0) -> int:
    """How many whitespace characters both texts have from ``start`` on."""
    n, end = 0, min(len(a), len(b)) - start
    while n < end and a[start + n] == b[start + n] and a[start + n].isspace():
        n += 1
    return n


def sharegpt_prompt(row: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """The conversation of a ShareGPT row, with its ``system`` column as the first turn
    unless the conversation has its own (LLaMA-Factory: the system turn wins)."""
    column = conversation_column(row) or "conversations"
    if row.get(column) is None:
        raise PreferenceFormatError(where, column, absent(row, column))
    prompt = parse_messages(row[column], where, column)
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise PreferenceFormatError(where, "system", f"expected a string, got {_describe(system)}")
    if system and system.strip() and prompt[0]["role"] not in INSTRUCTION_ROLES:
        prompt = [{"role": "system", "content": system}, *prompt]
    return prompt


def _sharegpt(row, where):
    return _with_replies(row, sharegpt_prompt(row, where), where, prompt_is_text=False)


def is_alpaca(row: Mapping[str, Any]) -> bool:
    """An Alpaca-style row (LLaMA-Factory's ``alpaca`` format; Stanford Alpaca's columns): no
    ``prompt`` column, its prompt in ``instruction`` (and ``input``), its replies (if any)
    strings: beside conversations, an ``instruction`` column is another data set's (Magpie's),
    and the conversations' own turns are the prompt."""
    replies = [row[c] for c in ("chosen", "rejected") if c in row]
    return (
        row.get("prompt") is None
        and isinstance(row.get("instruction"), str)
        and all(isinstance(r, str) for r in replies)
    )


def alpaca_prompt(row: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """The prompt of an Alpaca-style row as LLaMA-Factory reads it: its ``system`` column, the
    ``history`` of [question, answer] pairs as earlier turns, then ``instruction`` and
    ``input`` (each where not empty) joined by a newline as the user's turn."""
    parts = []
    for column in ("instruction", "input"):
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            raise PreferenceFormatError(where, column, f"expected a string, got {_describe(value)}")
        if value:
            parts.append(value)
    prompt: list[dict[str, str]] = []
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise PreferenceFormatError(where, "system", f"expected a string, got {_describe(system)}")
    if system and system.strip():
        prompt.append({"role": "system", "content": system})
    for i, turn in enumerate(row.get("history") or []):
        ok = isinstance(turn, list | tuple) and len(turn) == 2
        if not ok or not all(isinstance(t, str) for t in turn):
            raise PreferenceFormatError(where, f"history[{i}]", "expected a [question, answer] "
                                        f"pair of strings, got {_describe(turn)}")  # fmt: skip
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return [*prompt, {"role": "user", "content": "\n".join(parts)}]


def read_number(row, column, where) -> float | None:
    """A number column's value; None where it is missing, null, or an empty cell (a CSV's
    missing value, which ``datasets`` reads as None too)."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise PreferenceFormatError(
                where, column, f"expected a number, got {_describe(value)}"
            ) from None
    if not math.isfinite(value):
        raise PreferenceFormatError(where, column, f"expected a finite number, got {value}")
    return float(value)


def _score(row, column, where) -> float | None:
    """A rating column's value, or None where it is not a finite number (NaN, "N/A": TRL
    never reads these columns, so a row is not refused for one; the loader counts them,
    ``unread_scores``)."""
    try:
        return read_number(row, column, where)
    except PreferenceFormatError:
        return None


def unread_scores(raw: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a row's rating columns hold a value that was read as missing (``_score``)."""
    for chosen_col, rejected_col in _SCORE_COLUMNS:
        if chosen_col in raw or rejected_col in raw:
            return any(
                row[side] is None and raw.get(col) is not None
                and not (isinstance(raw[col], str) and not raw[col].strip())
                for side, col in (("chosen_score", chosen_col), ("rejected_score", rejected_col))
            )  # fmt: skip
    return False


def _p_by_group(row, where) -> list[dict[str, Any]] | None:
    """``p_chosen_by_group`` as [{"group", "p"}] (a list keeps group names that vary by file
    in one column type); accepts {group: p} (benchmark files) or the list form itself."""
    value = row.get("p_chosen_by_group")
    if value is None:
        return None
    if isinstance(value, str) and value.lstrip().startswith("{"):  # a CSV cell holds JSON
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    if isinstance(value, list) and all(isinstance(d, Mapping) and "group" in d for d in value):
        value = {d["group"]: d.get("p") for d in value}
    if not isinstance(value, Mapping):
        raise PreferenceFormatError(
            where, "p_chosen_by_group", f"expected {{group: probability}}, got {_describe(value)}"
        )
    out = []
    for group, p in value.items():
        ok = isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0
        if not ok:  # NaN fails the range check too
            raise PreferenceFormatError(
                where,
                "p_chosen_by_group",
                f"group {group!r}: expected a probability, got {_describe(p)}",
            )
        out.append({"group": str(group), "p": float(p)})
    return out


def normalise_row(
    row: Mapping[str, Any], fmt: str, where: str, index: int, detected: bool = False
) -> dict[str, Any]:
    """One source row -> the normalised form. Raises PreferenceFormatError naming the field.

    Empty replies are kept ('' is a reply: HH has chosen replies that say nothing); the loader
    counts them."""
    for field in ("chosen", "rejected"):
        if field not in row:
            raise PreferenceFormatError(where, field, "missing")
        if row[field] is None:
            raise PreferenceFormatError(where, field, "null: expected a reply ('' is an empty one)")
    if detected and fmt != "explicit" and row.get("prompt") is not None:  # a mixed file
        raise PreferenceFormatError(
            where, "prompt", f"a prompt in a data set read as {fmt} (its first row has none, "
            "so its replies carry the prompt): give every row a prompt, or none",
        )  # fmt: skip
    turns: Turns = (None, None)
    if fmt == "explicit":
        prompt, chosen, rejected, turns = _explicit(row, where)
    elif fmt == "sharegpt":
        prompt, chosen, rejected, turns = _sharegpt(row, where)
    elif fmt == "alpaca":
        prompt = alpaca_prompt(row, where)
        prompt, chosen, rejected, turns = _with_replies(row, prompt, where, prompt_is_text=False)
    elif fmt == "hh":
        prompt, chosen, rejected = split_hh(row["chosen"], row["rejected"], where)
    elif fmt == "implicit" and isinstance(row["chosen"], str):
        if not isinstance(row["rejected"], str):
            raise PreferenceFormatError(
                where,
                "rejected",
                f"expected a string like 'chosen', got {_describe(row['rejected'])}",
            )
        prompt, chosen, rejected = split_texts(row["chosen"], row["rejected"])
    elif fmt == "implicit":
        prompt, chosen, rejected, turns = _split_conversations(
            parse_messages(row["chosen"], where, "chosen"),
            parse_messages(row["rejected"], where, "rejected"),
            where,
        )
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")

    # TRL renders prompt + reply as one conversation, so a prompt may end with an assistant
    # turn (the reply is the next one); a ShareGPT prompt ends where LLaMA-Factory's does
    last = ("user", *TOOL_ROLES) + (("assistant",) if fmt in ("explicit", "implicit") else ())
    if not prompt or prompt[-1]["role"] not in last:
        got = prompt[-1]["role"] if prompt else "nothing"
        raise PreferenceFormatError(
            where, "prompt", f"expected the prompt to end with a user turn, got {got!r}"
        )

    scores: dict[str, float | None] = {"chosen_score": None, "rejected_score": None}
    for chosen_col, rejected_col in _SCORE_COLUMNS:
        if chosen_col in row or rejected_col in row:
            scores = {
                "chosen_score": _score(row, chosen_col, where),
                "rejected_score": _score(row, rejected_col, where),
            }
            break
    known = read_number(row, "p_chosen", where)
    try:
        prompt, extras = split_extras(prompt)
    except TypeError as e:
        raise PreferenceFormatError(where, "prompt", str(e)) from None
    return {
        "prompt": prompt,
        "prompt_extras": extras,
        "template_kwargs": template_kwargs(row, where),
        "chosen": chosen,
        "rejected": rejected,
        "chosen_turns": turns[0],
        "rejected_turns": turns[1],
        **scores,
        "margin": read_number(row, "margin", where),
        "source_row": index,
        "p_chosen": known,
        "p_chosen_by_group": _p_by_group(row, where),
    }
