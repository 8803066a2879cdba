"""Normalised preference rows -> token ids -> padded batches for reward models.

A pair is stored as three token lists: the prompt rendered through the chat template with
the assistant header (``prompt_ids``), and the two replies (``chosen_ids``,
``rejected_ids``) such that ``prompt_ids + chosen_ids`` is the chat-template rendering of the
whole conversation. Keeping the prompt apart lets later code share it between the two
replies (prefix sharing) instead of encoding it twice.

Truncation, when ``prompt + reply`` exceeds ``max_length``:

1. the oldest prompt turns are dropped (a leading system message is kept) while more than
   the last user turn remains;
2. then the prompt is cut from the left and the reply from the right. The prompt keeps at
   least ``min(len(prompt), max_prompt_length)`` tokens and the reply whatever is left, so
   the sequence always ends in (a prefix of) the reply. Chosen and rejected keep the same
   prompt, so the pair stays comparable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch


def render_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt through the chat template, ending with the assistant header."""
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def _ids(out: Any) -> list[int]:
    # apply_chat_template returns a list, or a BatchEncoding in newer transformers.
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def render_reply_ids(tokenizer, messages: list[dict[str, str]], reply: str) -> list[int]:
    """Token ids the chat template adds for an assistant ``reply`` after ``messages``.

    The template closes the turn (``<|im_end|>`` for SmolLM2) and may add a line break after
    it; trailing whitespace-only tokens are dropped so the reply ends at the end-of-turn token.
    """
    prompt = render_prompt_ids(tokenizer, messages)
    full = _ids(
        tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": reply}], tokenize=True
        )
    )
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template does not render the prompt as a prefix of prompt + reply; "
            "distalign needs that to score replies"
        )
    reply_ids = full[len(prompt) :]
    while len(reply_ids) > 1 and not tokenizer.decode(reply_ids[-1:]).strip():
        reply_ids.pop()
    return reply_ids


def truncate_pair(
    prompt: Sequence[int],
    replies: Sequence[Sequence[int]],
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[int], list[list[int]]]:
    """Cut the prompt from the left and each reply from the right to fit ``max_length``.

    All replies share the returned prompt. Pure function on token lists (property-tested).
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})"
        )
    longest = max(len(r) for r in replies)
    if len(prompt) + longest <= max_length:
        return list(prompt), [list(r) for r in replies]
    keep_prompt = max(max_length - longest, min(len(prompt), max_prompt_length))
    keep_reply = max_length - keep_prompt
    new_prompt = list(prompt[len(prompt) - keep_prompt :]) if keep_prompt else []
    return new_prompt, [list(r[:keep_reply]) for r in replies]


def _drop_oldest_turn(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The messages without their oldest non-system exchange (None: one user turn left)."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and i >= start]
    if len(users) <= 1:
        return None
    return messages[:start] + messages[users[1] :]


def tokenize_pair(
    tokenizer,
    prompt: list[dict[str, str]],
    chosen: str,
    rejected: str,
    max_length: int,
    max_prompt_length: int | None = None,
) -> dict[str, list[int]]:
    """One normalised pair -> ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (truncated)."""
    max_prompt_length = max_prompt_length or max_length // 2
    messages = prompt
    while True:
        p = render_prompt_ids(tokenizer, messages)
        c = render_reply_ids(tokenizer, messages, chosen)
        r = render_reply_ids(tokenizer, messages, rejected)
        if len(p) + max(len(c), len(r)) <= max_length:
            break
        shorter = _drop_oldest_turn(messages)
        if shorter is None:
            break
        messages = shorter
    p, (c, r) = truncate_pair(p, (c, r), max_length, max_prompt_length)
    return {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}


def tokenize_pairs(
    dataset, tokenizer, max_length: int, max_prompt_length: int | None = None, num_proc=None
):
    """``datasets.Dataset`` of normalised pairs -> same rows plus token ids and ``length``."""

    def fn(row):
        out = tokenize_pair(
            tokenizer, row["prompt"], row["chosen"], row["rejected"], max_length, max_prompt_length
        )
        out["length"] = len(out["prompt_ids"]) + max(
            len(out["chosen_ids"]), len(out["rejected_ids"])
        )
        return out

    return dataset.map(fn, num_proc=num_proc, desc="tokenising pairs")


class PairCollator:
    """Pad a list of tokenised pairs into one batch: the B chosen rows, then the B rejected.

    Returns ``input_ids`` and ``attention_mask`` of shape (2B, T), right-padded to the longest
    row in the batch (dynamic padding). The pad id is irrelevant to every computation: real
    tokens are those with ``attention_mask == 1``.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [f["prompt_ids"] + f["chosen_ids"] for f in features]
        seqs += [f["prompt_ids"] + f["rejected_ids"] for f in features]
        return pad_sequences(seqs, self.pad_token_id, self.pad_to_multiple_of)


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad token lists -> ``input_ids`` and ``attention_mask``, both (N, T) int64."""
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)  # (N, T)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch_factor: int = 32
) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are close, to waste less compute on padding.

    Indices are shuffled, cut into mega-batches of ``mega_batch_factor * batch_size``, sorted
    by length inside each, then cut into batches; the batch order is shuffled again so long
    and short batches alternate. Every index appears exactly once.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows whose lengths sum ≤ capacity.

    An item longer than ``capacity`` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


class SharedPrefixCollator:
    """Pairs as single sequences ``prompt + chosen + rejected`` that share the prompt.

    Position ids restart after the prompt for the rejected reply, and a block attention mask
    keeps the rejected reply from seeing the chosen one, so every token sees exactly what it
    would see in its own ``prompt + reply`` sequence: rewards are those of the unshared
    computation, while the prompt is encoded once. With ``packing``, several pairs share a
    row (first-fit, rows no longer than the longest pair), each pair a block of its own, so
    short pairs fill the room that padding would take.

    Returns ``input_ids`` and ``position_ids`` (R, T), ``attention_mask`` (R, 1, T, T) bool
    (True: may attend), ``token_mask`` (R, T) of real tokens, and ``chosen_index`` /
    ``rejected_index`` (N,): flat indices (row·T + column) of each reply's last token.
    """

    def __init__(
        self, pad_token_id: int, packing: bool = False, pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [
            len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features
        ]
        if self.packing:
            rows = pack_rows(lengths, max(lengths))
        else:
            rows = [[i] for i in range(len(features))]
        width = max(sum(lengths[i] for i in row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_rows = len(rows)
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((n_rows, width), dtype=torch.long)
        # segment of each token: which pair (block) and which part (0 prompt, 1 chosen, 2 rejected)
        block = torch.full((n_rows, width), -1, dtype=torch.long)
        part = torch.zeros((n_rows, width), dtype=torch.long)
        chosen_index = torch.zeros(len(features), dtype=torch.long)
        rejected_index = torch.zeros(len(features), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                f = features[i]
                p, c, j = len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])
                ids = f["prompt_ids"] + f["chosen_ids"] + f["rejected_ids"]
                sl = slice(start, start + p + c + j)
                input_ids[r, sl] = torch.as_tensor(ids, dtype=torch.long)
                position_ids[r, sl] = torch.cat(
                    [torch.arange(p + c), torch.arange(p, p + j)]
                )  # rejected restarts where the prompt ends
                block[r, sl] = i
                part[r, start + p : start + p + c] = 1
                part[r, start + p + c : start + p + c + j] = 2
                chosen_index[i] = r * width + start + p + c - 1
                rejected_index[i] = r * width + start + p + c + j - 1
                start += p + c + j
        real = block >= 0  # (R, T)
        causal = torch.ones((width, width), dtype=torch.bool).tril()  # (T, T)
        same_block = block[:, :, None] == block[:, None, :]  # (R, T, T)
        rejected_sees_chosen = (part[:, :, None] == 2) & (part[:, None, :] == 1)
        mask = causal & same_block & ~rejected_sees_chosen & real[:, :, None] & real[:, None, :]
        # padding queries attend to themselves only, so no softmax row is empty (NaN)
        mask |= torch.eye(width, dtype=torch.bool) & ~real[:, :, None]
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": mask[:, None],  # (R, 1, T, T)
            "token_mask": real.long(),
            "chosen_index": chosen_index,
            "rejected_index": rejected_index,
        }
