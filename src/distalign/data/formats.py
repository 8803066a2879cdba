"""Preference rows in the shapes people already have -> one normalised form.

Normalised row (what ``load_preferences`` returns, one per pair)::

    prompt          list of {"role", "content"} messages, ending with a user turn
    chosen          str, the preferred assistant reply
    rejected        str, the other assistant reply
    chosen_score    float | None, a rating of the chosen reply when the source has one
    rejected_score  float | None
    source_row      int, index of the row in the source (0-based)
    p_chosen        float | None, the known probability that the chosen reply is preferred
                    (benchmark files made by ``distalign gold make`` carry it: the Bayes
                    ceiling of a set of pairs is the mean of max(p, 1 − p))

Formats (detected from the first row, or forced):

``explicit``   ``prompt`` (string or messages) + ``chosen``/``rejected`` (strings or messages).
               Message replies may repeat the prompt before the assistant turn, as the
               HelpSteer2/UltraFeedback-binarized sets do; both shapes are accepted.
``implicit``   ``chosen``/``rejected`` are whole conversations (message lists) that share the
               prompt and differ in the final assistant turn (TRL "implicit prompt").
``hh``         Anthropic-HH transcripts, multi-turn:
               ``"\\n\\nHuman: … \\n\\nAssistant: …"`` strings.

Ratings: ``chosen_rating``/``rejected_rating`` (HelpSteer2-binarized) or
``chosen_score``/``rejected_score`` columns fill the score fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

FORMATS = ("explicit", "implicit", "hh")
ROLES = ("system", "user", "assistant")
_SCORE_COLUMNS = (("chosen_rating", "rejected_rating"), ("chosen_score", "rejected_score"))
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


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


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess the format of a dataset from one of its rows."""
    if "chosen" not in row or "rejected" not in row:
        raise ValueError(
            f"cannot detect the preference format: columns {sorted(row)} lack 'chosen' and "
            "'rejected'"
        )
    if "prompt" in row and row["prompt"] is not None:
        return "explicit"
    if _is_messages(row["chosen"]):
        return "implicit"
    if isinstance(row["chosen"], str) and _HH_TURN.search(row["chosen"]):
        return "hh"
    raise ValueError(
        "cannot detect the preference format: no 'prompt' column, and 'chosen' is neither a "
        f"message list nor an HH transcript ({_describe(row['chosen'])})"
    )


def parse_messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """Validate a list of chat messages; a bare string becomes one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise PreferenceFormatError(where, field, "expected a non-empty string, got ''")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise PreferenceFormatError(
            where,
            field,
            f"expected a string or a non-empty list of messages, got {_describe(value)}",
        )
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise PreferenceFormatError(
                where,
                f"{field}[{i}]",
                f"expected a {{role, content}} object, got {_describe(message)}",
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise PreferenceFormatError(
                where, f"{field}[{i}].role", f"expected one of {ROLES}, got {_describe(role)}"
            )
        if not isinstance(content, str):
            raise PreferenceFormatError(
                where, f"{field}[{i}].content", f"expected a string, got {_describe(content)}"
            )
        messages.append({"role": role, "content": content})
    return messages


def parse_hh(text: Any, where: str, field: str) -> list[dict[str, str]]:
    """Split an Anthropic-HH transcript into user/assistant messages."""
    if not isinstance(text, str):
        raise PreferenceFormatError(
            where, field, f"expected an HH transcript, got {_describe(text)}"
        )
    parts = _HH_TURN.split(text)
    # parts = [preamble, role, content, role, content, ...]
    if len(parts) < 3 or parts[0].strip():
        raise PreferenceFormatError(
            where, field, "expected a transcript starting with '\\n\\nHuman: ' turns"
        )
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[parts[i]], "content": parts[i + 1].strip()}
        for i in range(1, len(parts) - 1, 2)
    ]


def _reply(messages: list[dict[str, str]], where: str, field: str) -> str:
    last = messages[-1]
    if last["role"] != "assistant":
        raise PreferenceFormatError(
            where,
            field,
            f"expected the last message to be an assistant reply, got role {last['role']!r}",
        )
    return last["content"]


def _same_turns(a: list[dict[str, str]], b: list[dict[str, str]]) -> bool:
    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"].strip() == y["content"].strip()
        for x, y in zip(a, b, strict=True)
    )


def _split_conversations(chosen, rejected, where):
    """Shared prompt and the two final replies of two conversations (implicit prompt)."""
    if len(chosen) < 2 or len(rejected) < 2:
        field = "chosen" if len(chosen) < 2 else "rejected"
        raise PreferenceFormatError(
            where, field, "expected a conversation of at least a user turn and an assistant reply"
        )
    if not _same_turns(chosen[:-1], rejected[:-1]):
        raise PreferenceFormatError(
            where,
            "rejected",
            "expected chosen and rejected to share every turn but the final assistant reply",
        )
    return chosen[:-1], _reply(chosen, where, "chosen"), _reply(rejected, where, "rejected")


def _explicit_reply(value, prompt, where, field) -> str:
    if isinstance(value, str):
        return value
    messages = parse_messages(value, where, field)
    reply = _reply(messages, where, field)
    context = messages[:-1]
    # Binarized sets repeat the prompt (or its last user turn) before the reply.
    if context and not (_same_turns(context, prompt) or _same_turns(context, prompt[-1:])):
        raise PreferenceFormatError(
            where, field, "expected the messages before the reply to repeat the prompt"
        )
    return reply


def _score(row, column, where) -> float | None:
    value = row.get(column)
    if value is None:
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


def normalise_row(row: Mapping[str, Any], fmt: str, where: str, index: int) -> dict[str, Any]:
    """One source row -> the normalised form. Raises PreferenceFormatError naming the field."""
    for field in ("chosen", "rejected"):
        if field not in row or row[field] is None:
            raise PreferenceFormatError(where, field, "missing")
    if fmt == "explicit":
        if row.get("prompt") is None:
            raise PreferenceFormatError(where, "prompt", "missing")
        prompt = parse_messages(row["prompt"], where, "prompt")
        chosen = _explicit_reply(row["chosen"], prompt, where, "chosen")
        rejected = _explicit_reply(row["rejected"], prompt, where, "rejected")
    elif fmt == "implicit":
        prompt, chosen, rejected = _split_conversations(
            parse_messages(row["chosen"], where, "chosen"),
            parse_messages(row["rejected"], where, "rejected"),
            where,
        )
    elif fmt == "hh":
        prompt, chosen, rejected = _split_conversations(
            parse_hh(row["chosen"], where, "chosen"),
            parse_hh(row["rejected"], where, "rejected"),
            where,
        )
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")

    if prompt[-1]["role"] != "user":
        raise PreferenceFormatError(where, "prompt", "expected the prompt to end with a user turn")
    for field, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise PreferenceFormatError(where, field, "expected a non-empty reply, got ''")

    scores: dict[str, float | None] = {"chosen_score": None, "rejected_score": None}
    for chosen_col, rejected_col in _SCORE_COLUMNS:
        if chosen_col in row or rejected_col in row:
            scores = {
                "chosen_score": _score(row, chosen_col, where),
                "rejected_score": _score(row, rejected_col, where),
            }
            break
    known = _score(row, "p_chosen", where)
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        **scores,
        "source_row": index,
        "p_chosen": known,
    }
